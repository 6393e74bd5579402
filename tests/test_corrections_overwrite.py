"""Corrections are user data: ``segment --overwrite`` carries them onto the new result of
the same slide and grid, refuses to drop them otherwise, and drops them only when told."""

from __future__ import annotations

import numpy as np
from test_cli import assert_one_line_error, segment

from wsi_seg.result.corrections import corrections_history, save_corrections
from wsi_seg.result.reader import Result


def _corrected_result(tmp_path, capsys, slide, model):
    out = tmp_path / "o.zarr"
    assert segment(capsys, slide, out, model)[0] == 0
    mask = Result.open(out).mask(0)[:]
    before = mask[10:40, 20:60].copy()
    after = np.where(before == 1, 2, 1).astype(np.uint8)  # the user repaints a 30×40 px square
    save_corrections(out, (10, 20), before, after, author="pathologist")
    return out, after


def test_overwrite_carries_the_corrections_onto_the_new_result(tmp_path, capsys, blob_slide, checkpoints):
    out, painted = _corrected_result(tmp_path, capsys, blob_slide, checkpoints[1])
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")  # another model
    assert code == 0, err
    result = Result.open(out)
    assert result.provenance.model.path == str(checkpoints[2]) and result.current_labels == "corrected"
    corrected, mask = result.mask(0, "corrected")[:], result.mask(0)[:]
    assert np.array_equal(corrected[10:40, 20:60], painted)  # the user's pixels
    outside = np.ones(mask.shape, bool)
    outside[10:40, 20:60] = False
    assert np.array_equal(corrected[outside], mask[outside])  # the new model's everywhere else
    history = corrections_history(result)
    assert [s["author"] for s in history] == ["pathologist"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_overwrite_that_cannot_carry_them_is_refused_unless_discarded(tmp_path, capsys, blob_slide, checkpoints):
    import torch

    from wsi_seg.model import PsclNet, load_checkpoint, save_checkpoint

    out, _ = _corrected_result(tmp_path, capsys, blob_slide, checkpoints[1])
    cfg = load_checkpoint(checkpoints[2]).config
    torch.manual_seed(0)
    coarser = save_checkpoint(PsclNet(cfg.replace(mpp=cfg.mpp * 2)), tmp_path / "coarser", config=cfg.replace(mpp=cfg.mpp * 2))
    code, _, err = segment(capsys, blob_slide, out, coarser, "--overwrite")  # a model at another µm/px
    assert_one_line_error(code, err, "holds corrections saved in napari", "pixel grid differs", "--discard-corrections")
    assert Result.open(out).current_labels == "corrected"  # untouched
    code, _, err = segment(capsys, blob_slide, out, coarser, "--overwrite", "--discard-corrections")
    assert code == 0, err
    assert Result.open(out).current_labels == "mask"

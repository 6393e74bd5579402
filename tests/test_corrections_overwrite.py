"""Corrections are user data: ``segment --overwrite`` carries them onto the new result of
the same slide and grid, refuses to drop them otherwise, and drops them only when told."""

from __future__ import annotations

import numpy as np
from test_cli import assert_one_line_error, segment

from wsi_seg.result.corrections import corrections_history, save_corrections
from wsi_seg.result.reader import Result


def _corrected_result(tmp_path, capsys, slide, model, *flags, at=(10, 20)):
    out = tmp_path / "o.zarr"
    assert segment(capsys, slide, out, model, *flags)[0] == 0
    mask = Result.open(out).mask(0)[:]
    y, x = at
    before = mask[y : y + 30, x : x + 40].copy()
    after = np.where(before == 1, 2, 1).astype(np.uint8)  # the user repaints a 30×40 px square
    save_corrections(out, at, before, after, author="pathologist")
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


def test_corrections_move_onto_a_result_chunked_otherwise(tmp_path, capsys, blob_slide, checkpoints):
    """A result made with other chunks (an older version's 576-px blocks, or --chunk-px) is
    the same pixel grid: its corrections are carried pixel for pixel."""
    out, painted = _corrected_result(tmp_path, capsys, blob_slide, checkpoints[1], "--chunk-px", "200", at=(180, 170))
    old = Result.open(out)
    assert old.mask(0).chunks == (192, 192)  # the square spans four of its chunks
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    assert code == 0, err
    result = Result.open(out)
    assert result.mask(0).chunks[0] > 192 and result.current_labels == "corrected"
    corrected, mask = result.mask(0, "corrected")[:], result.mask(0)[:]
    assert np.array_equal(corrected[180:210, 170:210], painted)
    outside = np.ones(mask.shape, bool)
    outside[180:210, 170:210] = False
    assert np.array_equal(corrected[outside], mask[outside])
    for level in result.levels[1:]:  # the coarser levels show them too
        f = 2**level
        assert np.array_equal(result.mask(level, "corrected")[:], corrected[::f, ::f][: result.mask(level).shape[0],
                                                                                      : result.mask(level).shape[1]])

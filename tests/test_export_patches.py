"""`wsi-seg export --patches`: patch + index-mask pairs at the model's µm/px, the CSV dataset
layout, the slide's fingerprint; and the correction loop: correct → export → fine-tune → better."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from wsi_seg.cli.main import main
from wsi_seg.errors import ConfigError, OutputError, SlideError
from wsi_seg.exports.patches import export_patches, to_dataset_mask
from wsi_seg.result.corrections import save_corrections
from wsi_seg.result.reader import Result

PATCH = 224


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, checkpoints):
    """A 672² demo slide at the tiny model's 0.5 µm/px (3 × 3 patches), segmented by it."""
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.synthetic import write_demo_slide

    root = tmp_path_factory.mktemp("patches")
    demo = write_demo_slide(root / "slide.tif", size_px=(672, 672), mpp=0.5, seed=2, tissue_fraction=0.9)
    out = segment_slide(demo.path, root / "r.zarr", load_checkpoint(checkpoints[2]),
                        SegmentOptions(device="cpu", workers=0, progress=False, overlap_px=0)).out
    return demo, out


@pytest.fixture
def result(segmented, tmp_path):
    """A private copy of the segmented result (tests add corrections to it)."""
    demo, out = segmented
    return demo, shutil.copytree(out, tmp_path / "r.zarr")


def test_export_writes_the_csv_dataset_layout(result, tmp_path):
    from wsi_seg_training.datasets import open_dataset
    from wsi_seg_training.datasets.io import read_mask

    demo, res = result
    done = export_patches(res, tmp_path / "ds", min_tissue=0.0)
    assert done.patches == 9 and done.labels == "mask" and done.patch_px == PATCH and done.mpp == 0.5
    index = open_dataset(tmp_path / "ds")  # training reads it as it is
    assert index.info.name == "csv" and index.class_names == ("TE", "NEC", "LYM", "TAS")
    records = index.split("train", need_masks=True, need_labels=True)
    assert len(records) == 9 and index.patch_hw["train"] == (PATCH, PATCH)
    rec = next(r for r in records if r.image.name == "r_y224_x448.png")
    labels = read_mask(rec.mask, 4)  # back to the internal convention
    assert np.array_equal(labels, Result.open(res).mask(0)[224:448, 448:672])
    assert rec.labels == tuple(int(c in labels) for c in (1, 2, 3, 4))
    # the image is the slide at the model's µm/px (here the slide's own): level-0 pixels
    with Image.open(rec.image) as im:
        img = np.asarray(im)
    from wsi_seg.slide.slide import Slide

    with Slide(demo.path) as slide:
        assert np.array_equal(img, slide.read_rgb((448, 224), 0, (PATCH, PATCH)))
    header = next(csv.reader(open(tmp_path / "ds" / "labels.csv", encoding="utf-8")))
    assert header == ["filename", "TE", "NEC", "LYM", "TAS", "split", "mask"]


def test_to_dataset_mask_puts_background_last():
    assert to_dataset_mask(np.array([[0, 1, 4]], np.uint8), 4).tolist() == [[4, 0, 3]]


def test_only_corrected_exports_the_patches_the_corrections_changed(result, tmp_path, capsys):
    _, res = result
    with pytest.raises(ConfigError, match="has no corrections"):
        export_patches(res, tmp_path / "none", only_corrected=True)
    m = Result.open(res).mask(0)[300:310, 10:20]
    save_corrections(res, (300, 10), m, np.where(m == 1, 2, 1).astype(np.uint8))
    argv = ["export", str(res), "--patches", str(tmp_path / "fix"), "--only-corrected"]
    assert main(argv) == 0
    assert "1 patches of 224 px at 0.5 µm/px from labels/corrected" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "fix" / "labels.csv", encoding="utf-8")))
    assert [r["filename"] for r in rows] == ["img/r_y224_x0.png"]
    assert main(argv) == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_moved_or_other_slide_is_refused_and_slide_flag_accepted(result, tmp_path, capsys):
    from wsi_seg.synthetic import write_demo_slide

    demo, res = result
    moved = tmp_path / "elsewhere.tif"
    shutil.move(demo.path, moved)
    try:
        assert main(["export", str(res), "--patches", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "moved or deleted" in err and "--slide NEWPATH" in err
        assert not (tmp_path / "a").exists()
        other = write_demo_slide(tmp_path / "other.tif", size_px=(672, 672), mpp=0.5, seed=9).path
        with pytest.raises(SlideError, match="not the slide r.zarr was computed from"):
            export_patches(res, tmp_path / "b", slide=other)
        assert main(["export", str(res), "--patches", str(tmp_path / "c"), "--slide", str(moved)]) == 0
        assert (tmp_path / "c" / "labels.csv").is_file()
    finally:
        shutil.move(moved, demo.path)


def test_export_refuses_to_replace_a_folder_it_did_not_write(result, tmp_path, capsys):
    _, res = result
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not a patch export of wsi-seg"):
        export_patches(res, mine, overwrite=True)
    assert (mine / "keep.txt").exists()
    assert main(["export", str(res), "--geojson", str(tmp_path / "g.json"), "--only-corrected"]) == 2
    assert "go with --patches" in capsys.readouterr().err


@pytest.mark.slow
def test_correct_export_fine_tune_raises_the_corrected_regions_iou(result, tmp_path, capsys):
    """The loop of the issue on a generated slide with the tiny model."""
    from wsi_seg_training import cli as train_cli

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.reports.evaluate_slide import ground_truth_at, region_miou

    demo, res = result
    before = Result.open(res)
    gt = ground_truth_at(demo.mask_path, before.mpp, before.level_shape(0))
    y, x, side = 0, 0, 2 * PATCH  # four patches, corrected to the truth
    pred = before.mask(0)[:]
    crop, truth = pred[y : y + side, x : x + side], gt[y : y + side, x : x + side]
    iou_before = region_miou(crop, truth, before.class_names)
    save_corrections(res, (y, x), crop, np.where(truth > 0, truth, crop).astype(np.uint8))
    assert main(["export", str(res), "--patches", str(tmp_path / "fix"), "--only-corrected"]) == 0
    ckpt = before.provenance.model.path
    assert train_cli.main(["train", "--stage", "2", "--init", ckpt, "--data", str(tmp_path / "fix"),
                           "--out", str(tmp_path / "ft"), "--epochs", "6", "--batch-size", "2", "--lr", "2e-3",
                           "--workers", "0", "--device", "cpu", "--val-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    tuned = load_checkpoint(tmp_path / "ft" / "checkpoint")
    prov = tuned.config.provenance["training"]
    assert prov["method"].startswith("fine-tuning of a stage-2 model on full masks") and prov["init"]["stage"] == 2
    after = segment_slide(demo.path, tmp_path / "after.zarr", tuned,
                          SegmentOptions(device="cpu", workers=0, progress=False, overlap_px=0)).out
    iou_after = region_miou(Result.open(after).mask(0)[y : y + side, x : x + side], truth, before.class_names)
    print(f"corrected region mIoU {iou_before:.3f} → {iou_after:.3f}")
    assert iou_after > iou_before + 0.1


def test_a_second_export_into_the_same_output_stops_at_once(result, tmp_path, capsys):
    from wsi_seg.lock import LOCK_NAME, RunLock

    _, res = result
    for flag, out in (("--patches", tmp_path / "ds"), ("--geojson", tmp_path / "r.geojson")):
        with RunLock(tmp_path / f".{out.name}{LOCK_NAME}", what=out):  # another export writing it
            assert main(["export", str(res), flag, str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{out}: in use by pid" in err
        assert not out.exists()
        assert main(["export", str(res), flag, str(out), "--no-progress"]) == 0  # once it is free
        assert out.exists() and not (tmp_path / f".{out.name}{LOCK_NAME}").exists()

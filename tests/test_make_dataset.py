"""``wsi-seg make-dataset``: weak labels, glass seeding, splits by image, masks, errors.

Tiny generated images (64×96 px, 32-px patches): a column of class A, a column of class
B (or unlabelled tissue), a column of glass that the mask paints as class A (the glass
seed must make it background). Offline, seeded, a few seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wsi_seg_training.datasets import check_dataset, open_dataset, read_mask
from wsi_seg_training.datasets.make import MakeDatasetConfig, make_dataset

from wsi_seg.cli.main import main
from wsi_seg.errors import ConfigError

TISSUE_A, TISSUE_B, GLASS = (190, 90, 150), (120, 60, 160), (245, 245, 245)


def _write_pair(images: Path, masks: Path, stem: str, b_labelled: bool = True, sliver: int = 0) -> None:
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :32], rgb[:, 32:64], rgb[:, 64:] = TISSUE_A, TISSUE_B, GLASS
    mask = np.zeros((64, 96), np.uint8)
    mask[:, :32] = 1
    mask[:, 64:] = 1  # an annotation painted over glass
    if b_labelled:
        mask[:, 32:64] = 2
    if sliver:  # a few px of B inside the first A patch
        mask[:sliver, :1] = 2
    Image.fromarray(rgb).save(images / f"{stem}.png")
    Image.fromarray(mask, mode="L").save(masks / f"{stem}.png")


@pytest.fixture
def source(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(10):
        _write_pair(images, masks, f"slide{i}", b_labelled=i % 2 == 0)
    return images, masks


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _args(images: Path, masks: Path, out: Path, *more: str) -> list[str]:
    return ["make-dataset", "--images", str(images), "--masks", str(masks), "--classes", "A,B", "--out", str(out),
            "--patch", "32", "--no-progress", *more]


def test_cuts_weak_labels_splits_by_image_and_writes_eval_masks(source, tmp_path, capsys):
    images, masks = source
    out = tmp_path / "ds"
    assert main(_args(images, masks, out, "--other-class", "other", "--seed", "3")) == 0
    printed = capsys.readouterr().out
    assert "train label co-occurrence" in printed and "no problems found" in printed
    rows = _rows(out)
    # 2 × 3 patches per image; the glass column (2 patches) holds no class and is skipped
    assert len(rows) == 10 * 4
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["filename"].split("/")[1].split("_y")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()), "an image is in two splits"
    counts = {s: sum(1 for v in split_of.values() if v == {s}) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 1, "test": 3}  # 0.6 / 0.1 / 0.3 of 10 images
    for r in rows:
        x = int(r["filename"].rsplit("_x", 1)[1].split(".")[0])
        assert (r["A"], r["B"], r["other"]) == (("1", "0", "0") if x == 0 else
                                                 ("0", "1", "0") if r["filename"].split("slide")[1][0] in "02468"
                                                 else ("0", "0", "1"))
        assert (r["mask"] == "") == (r["split"] == "train")  # weak train patches, masks for val/test
    # a val/test mask: classes in dataset order, glass background (3) even where the mask said A
    index = open_dataset(out)
    for rec in index.splits["test"]:
        gt = read_mask(rec.mask, 3)  # internal: 0 = background
        assert set(np.unique(gt)) <= {1, 2, 3}
    report = check_dataset(out)
    assert report.ok and report.cooccurrence.shape == (3, 3)
    made = json.loads((out / "make.json").read_text())
    assert made["splits"]["train"]["images"] == 6 and made["class_names"] == ["A", "B", "other"]
    # A is in half the train patches, B and other in a quarter each: no class is flagged
    assert made["uninformative_classes"] == [] and "WARNING" not in printed


def test_a_class_in_almost_every_train_label_is_flagged(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        _write_pair(images, masks, f"s{i}")
    # 64-px patches hold the A and B columns both (the glass column's patch still holds B)
    assert main(["make-dataset", "--images", str(images), "--masks", str(masks), "--classes", "A,B", "--out",
                 str(tmp_path / "ds"), "--patch", "64", "--fractions", "1,0,0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: B is in the label of 6 of 6 train patches" in printed
    assert json.loads((tmp_path / "ds" / "make.json").read_text())["uninformative_classes"] == ["B"]


def test_glass_the_mask_labels_is_background_and_unlabelled_tissue_too(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _write_pair(images, masks, "one", b_labelled=False)
    # a 64-px patch over the B column and the glass: B unlabelled, glass painted A
    cfg = MakeDatasetConfig(images=str(images), masks=str(masks), classes="A,B", out=str(tmp_path / "ds"),
                            patch=32, fractions="1,0,1")
    made = make_dataset(cfg)
    assert made.counts()["test"]["images"] == 0  # one image: the first goes to train
    cfg.out, cfg.fractions = str(tmp_path / "ds2"), "1,0,0"
    rows = _rows(Path(make_dataset(cfg).out))
    assert {r["filename"].rsplit("_x", 1)[1] for r in rows} == {"0.png"}  # only the A column keeps a class


def test_min_fraction_decides_the_weak_label(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _write_pair(images, masks, "one", sliver=20)  # 20 px of B in a 1024-px patch: 2 %
    base = {"images": str(images), "masks": str(masks), "classes": "A,B", "patch": 32, "fractions": "1,0,0"}
    low = _rows(make_dataset(MakeDatasetConfig(out=str(tmp_path / "low"), min_fraction=0.01, **base)).out)
    high = _rows(make_dataset(MakeDatasetConfig(out=str(tmp_path / "high"), **base)).out)  # default 0.03
    first = "img/one_y0_x0.png"
    assert next(r for r in low if r["filename"] == first)["B"] == "1"
    assert next(r for r in high if r["filename"] == first)["B"] == "0"


def test_split_is_seeded(source, tmp_path):
    images, masks = source
    made = [_rows(make_dataset(MakeDatasetConfig(images=str(images), masks=str(masks), classes="A,B",
                                                 out=str(tmp_path / f"s{i}"), patch=32, seed=seed)).out)
            for i, seed in enumerate((5, 5))]
    assert made[0] == made[1]


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("wsi-seg: error:") and "Traceback" not in err
    return err


def test_bad_inputs_stop_with_one_line_naming_the_file(source, tmp_path, capsys):
    images, masks = source
    out = tmp_path / "ds"
    (masks / "slide3.png").unlink()
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert "slide3.png" in err and "no mask" in err and not out.exists()
    _write_pair(images, masks, "slide3")

    Image.fromarray(np.zeros((64, 90), np.uint8), mode="L").save(masks / "slide4.png")
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert str(masks / "slide4.png") in err and "90×64" in err and "96×64" in err
    _write_pair(images, masks, "slide4")

    Image.fromarray(np.full((64, 96), 3, np.uint8), mode="L").save(masks / "slide5.png")
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert str(masks / "slide5.png") in err and "class index 3" in err and "2 class(es)" in err
    _write_pair(images, masks, "slide5")

    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(masks / "slide6.png")
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert str(masks / "slide6.png") in err and "single-channel" in err
    _write_pair(images, masks, "slide6")

    (images / "slide7.png").write_bytes(b"not a png")
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert str(images / "slide7.png") in err and "cannot read image" in err
    _write_pair(images, masks, "slide7")

    err = _one_line_error(capsys, main([*_args(images, masks, out), "--patch", "128"]))
    assert str(images) in err and "nothing written" in err and not out.exists()

    err = _one_line_error(capsys, main([*_args(images, masks, out), "--fractions", "0,1,1"]))
    assert "--fractions" in err


def test_an_existing_folder_is_kept_unless_overwritten(source, tmp_path, capsys):
    images, masks = source
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    err = _one_line_error(capsys, main(_args(images, masks, out)))
    assert "not empty" in err
    err = _one_line_error(capsys, main([*_args(images, masks, out), "--overwrite"]))
    assert "not a make-dataset folder" in err and (out / "mine.txt").is_file()
    (out / "mine.txt").unlink()
    assert main(_args(images, masks, out)) == 0
    assert main([*_args(images, masks, out), "--overwrite", "--min-fraction", "0.5"]) == 0


def test_config_checks():
    with pytest.raises(ConfigError, match="--patch-mpp needs --mpp"):
        MakeDatasetConfig(images="i", masks="m", classes="A", out="o", patch_mpp=1.0).check()
    with pytest.raises(ConfigError, match="distinct"):
        MakeDatasetConfig(images="i", masks="m", classes="A,A", out="o").check()

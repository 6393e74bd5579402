"""Dataset layouts (LUAD-HistoSeg, BCSS-WSSS, labels.csv), label parsing and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_seg.errors import DatasetError

from wsi_seg_training.augment import flips
from wsi_seg_training.datasets import (
    PatchDataset,
    BackgroundSeedParams,
    detect_format,
    open_dataset,
    parse_label,
    read_mask,
    to_internal,
)
from wsi_seg_training.synthetic_dataset import shapes_patch, write_dataset

SIZE = 64


def _write(root: Path, fmt: str, **kw) -> Path:
    return write_dataset(root, n_train=4, n_val=2, n_test=2, size_px=SIZE, format=fmt, seed=1,
                         patch_fn=shapes_patch, **kw)


@pytest.mark.parametrize("fmt", ["luad", "bcss", "csv"])
def test_layouts_are_detected_and_indexed(tmp_path, fmt):
    root = _write(tmp_path / fmt, fmt)
    assert detect_format(root) == fmt
    index = open_dataset(root)
    assert index.info.name == fmt
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert index.patch_hw["train"] == (SIZE, SIZE)
    expected = {"luad": ("TE", "NEC", "LYM", "TAS"), "bcss": ("TUM", "STR", "LYM", "NEC"),
                "csv": ("TE", "NEC", "LYM", "TAS")}[fmt]
    assert index.class_names == expected
    assert all(r.labels is not None and sum(r.labels) >= 1 for r in index.splits["train"])
    assert index.has_masks("val") and index.has_masks("test")


def test_valid_folder_name_and_train_img_subfolder(tmp_path):
    root = _write(tmp_path / "d", "luad", val_dir_name="valid")
    index = open_dataset(root, "luad")
    assert len(index.split("val", need_masks=True)) == 2
    # some copies keep train patches in train/img/
    (root / "train" / "img").mkdir()
    for p in list((root / "train").glob("*.png")):
        p.rename(root / "train" / "img" / p.name)
    assert len(open_dataset(root).splits["train"]) == 4


def test_train_labels_match_the_patches(tmp_path):
    root = _write(tmp_path / "d", "luad")
    index = open_dataset(root)
    ds = PatchDataset(index.splits["val"], 4, with_masks=True)
    for i in range(len(ds)):
        s = ds[i]
        present = torch.zeros(4)
        vals = s["mask"].unique()
        present[vals[vals > 0].long() - 1] = 1
        assert torch.equal(s["labels"], present)  # val labels derive from the ground truth


@pytest.mark.parametrize(
    "name, expected",
    [
        ("1031280-2300-27920-[1 0 0 1].png", (1, 0, 0, 1)),
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", (1, 1, 0, 1)),
        ("a-[0 1 1 0] .png", (0, 1, 1, 0)),
    ],
)
def test_parse_label(name, expected):
    assert parse_label(Path(name), 4, ("a", "b", "c", "d")) == expected


@pytest.mark.parametrize("name", ["a-[1 0 2 1].png", "a.png", "a-[1 0 1].png", "a-[1 0 0 1 1].png", "[x]b.png"])
def test_bad_label_names_the_file(name):
    with pytest.raises(DatasetError, match=r"\[?" + name.split("[")[0]):
        parse_label(Path("train") / name, 4, ("a", "b", "c", "d"))


def test_bad_label_in_a_dataset_names_the_file(tmp_path):
    root = _write(tmp_path / "d", "luad")
    Image.new("RGB", (SIZE, SIZE)).save(root / "train" / "x-[1 0 3 1].png")
    with pytest.raises(DatasetError, match=r"x-\[1 0 3 1\]\.png"):
        open_dataset(root, "luad")


def test_folder_matching_no_layout(tmp_path):
    (tmp_path / "d").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "plain.png")
    with pytest.raises(DatasetError, match=str(tmp_path / "d")):
        open_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="labels.csv"):
        open_dataset(tmp_path / "d", "csv")


def test_unreadable_image_names_the_file(tmp_path):
    root = _write(tmp_path / "d", "luad")
    bad = root / "train" / "broken-[1 0 0 0].png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken-\[1 0 0 0\]\.png: cannot read image"):
        open_dataset(root)


def test_mask_of_wrong_size_names_the_mask(tmp_path):
    root = _write(tmp_path / "d", "luad")
    mask = root / "test" / "mask" / "0000.png"
    Image.new("L", (SIZE + 1, SIZE)).save(mask)
    with pytest.raises(DatasetError, match=f"{mask}: mask is"):
        open_dataset(root)


def test_rgb_mask_and_missing_mask(tmp_path):
    root = _write(tmp_path / "d", "luad")
    mask = root / "val" / "mask" / "0001.png"
    Image.new("RGB", (SIZE, SIZE)).save(mask)
    with pytest.raises(DatasetError, match=f"{mask}: mask has mode RGB"):
        open_dataset(root)
    mask.unlink()
    with pytest.raises(DatasetError, match="no ground-truth mask"):
        open_dataset(root)


def test_mask_with_unknown_indices_names_the_file(tmp_path):
    root = _write(tmp_path / "d", "luad")
    mask = root / "val" / "mask" / "0000.png"
    arr = np.full((SIZE, SIZE), 4, np.uint8)
    arr[0, 0] = 7
    Image.fromarray(arr, mode="L").save(mask)
    index = open_dataset(root)  # headers are fine; pixel values are read with the patch
    with pytest.raises(DatasetError, match=f"{mask}: mask holds unknown class indices 7"):
        PatchDataset(index.splits["val"], 4, with_masks=True)[0]


def test_mixed_patch_sizes_are_rejected(tmp_path):
    root = _write(tmp_path / "d", "bcss")
    odd = root / "train" / "odd+0[1000].png"
    Image.new("RGB", (SIZE, SIZE + 32)).save(odd)
    with pytest.raises(DatasetError, match=r"odd\+0\[1000\]\.png: train patch is"):
        open_dataset(root)


def test_csv_errors_name_the_file_and_line(tmp_path):
    root = _write(tmp_path / "d", "csv")
    text = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([text[0], text[1].rsplit(",", 1)[0] + ",2"]) + "\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:2: labels"):
        open_dataset(root)
    (root / "labels.csv").write_text(text[0] + "\nmissing.png,train,,1,0,0,0\n")
    with pytest.raises(DatasetError, match="missing.png: listed in"):
        open_dataset(root)


def test_mask_conversion_to_internal_convention(tmp_path):
    disk = np.array([[0, 1], [3, 4]], np.uint8)  # dataset: 0..3 classes, 4 = background
    assert to_internal(disk, 4).tolist() == [[1, 2], [4, 0]]
    path = tmp_path / "m.png"
    Image.fromarray(disk, mode="L").save(path)
    assert read_mask(path, 4).tolist() == [[1, 2], [4, 0]]
    # palette PNGs (as LUAD-HistoSeg ships them) read as indices too
    pal = Image.fromarray(disk, mode="P")
    pal.putpalette([0] * 768)
    pal.save(path)
    assert read_mask(path, 4, (2, 2)).tolist() == [[1, 2], [4, 0]]


def test_flips_act_jointly_and_background_follows(tmp_path):
    root = _write(tmp_path / "d", "luad")
    index = open_dataset(root)
    plain = PatchDataset(index.splits["val"], 4, background_seed=BackgroundSeedParams(True, 200, 20), with_masks=True)
    flipped = PatchDataset(index.splits["val"], 4, background_seed=BackgroundSeedParams(True, 200, 20), transform=flips(p=1.0),
                           with_masks=True)
    a, b = plain[0], flipped[0]
    assert torch.equal(b["image"], a["image"].flip(-1).flip(-2))
    assert torch.equal(b["mask"], a["mask"].flip(-1).flip(-2))
    assert torch.equal(b["background"], a["background"].flip(-1).flip(-2))
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, SIZE, SIZE)
    assert a["background"].dtype == torch.bool and a["labels"].dtype == torch.float32

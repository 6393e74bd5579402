"""``wsi-seg check-dataset`` on fixtures laid out like the published LUAD-HistoSeg and
BCSS-WSSS trees (Han et al. 2021): labels in the train names, ``val/img`` + ``val/mask``
with palette index PNGs (0–3 tissue classes, 4 = background)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsi_seg_training import cli
from wsi_seg_training.datasets import check_dataset

SIZE = 32
PALETTE = [205, 51, 51, 0, 255, 0, 65, 105, 225, 255, 165, 0, 255, 255, 255]  # TE NEC LYM TAS, bkg white


def _rgb(path, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).convert(mode).save(path)


def _mask(path, values, palette=PALETTE, size=SIZE):
    arr = np.full((size, size), 4, np.uint8)
    for i, v in enumerate(values):
        arr[i * 4:(i + 1) * 4] = v
    im = Image.fromarray(arr, mode="P")
    im.putpalette(palette)
    im.save(path)


def _assert_problems(problems: list[str], expect: list[str]) -> None:
    """Each expected problem found once, and nothing else."""
    for e in expect:
        assert sum(e in p for p in problems) == 1, (e, problems)
    assert len(problems) == len(expect)


def _tree(root, train_names, eval_stems=("0001", "0002")):
    (root / "train").mkdir(parents=True)
    for i, name in enumerate(train_names):
        _rgb(root / "train" / name, i)
    for split in ("val", "test"):
        (root / split / "img").mkdir(parents=True)
        (root / split / "mask").mkdir()
        for j, stem in enumerate(eval_stems):
            _rgb(root / split / "img" / f"{stem}.png", 10 + j)
            _mask(root / split / "mask" / f"{stem}.png", [j % 4, 3])
    return root


LUAD_NAMES = ["1031280-2300-27920-[1 0 0 1].png", "1031280-2300-28144-[0 1 0 0].png",
              "1031280-2524-27920-[1 0 1 1].png"]
BCSS_NAMES = ["TCGA-A2-A0CM-DX1_xmin18562_ymin56852_MPP-0.2500+[1101].png",
              "TCGA-A2-A0CM-DX1_xmin18786_ymin56852_MPP-0.2500+[1000].png"]


def test_clean_luad_tree_counts_classes_and_cooccurrence(tmp_path):
    root = _tree(tmp_path / "LUAD-HistoSeg", LUAD_NAMES)
    _rgb(root / "train" / "1031280-2748-27920-[0 0 1 0].png", 9, mode="RGBA")
    report = check_dataset(root)
    assert report.ok and report.index.info.name == "luad"
    assert report.class_patches["train"] == [2, 1, 2, 2]  # TE NEC LYM TAS
    assert report.cooccurrence.tolist() == [[2, 0, 1, 2], [0, 1, 0, 0], [1, 0, 2, 1], [2, 0, 1, 2]]
    assert report.classes_per_patch == {1: 2, 2: 1, 3: 1}
    assert report.index.modes["train"] == {"RGB": 3, "RGBA": 1}
    assert report.index.sizes["val"] == {f"{SIZE}×{SIZE}": 2}
    assert report.class_patches["val"] == [1, 1, 0, 2]  # from the masks
    share = report.pixel_share["val"]
    assert abs(sum(share) - 1) < 1e-9 and share[4] == pytest.approx((SIZE - 8) / SIZE)
    text = report.format_text()
    assert "co-occurrence" in text and "no problems found" in text and "RGBA (1)" in text


def test_bcss_tree_is_recognised(tmp_path):
    report = check_dataset(_tree(tmp_path / "BCSS-WSSS", BCSS_NAMES))
    assert report.ok and report.index.info.name == "bcss"
    assert report.class_patches["train"] == [2, 1, 0, 1]  # TUM STR LYM NEC


def _broken_luad(root):
    root = _tree(root, LUAD_NAMES, eval_stems=("0001", "0002", "0003", "0004", "0005"))
    (root / "train" / "1031280-9-9-[1 0 3 1].png").write_bytes(b"")  # label digit 3
    _rgb(root / "train" / "no-label.png")
    (root / "train" / "1031280-0-0-[1 0 0 0].png").write_bytes(b"not a png")  # unreadable
    _mask(root / "val" / "mask" / "0001.png", [0], size=SIZE + 8)  # wrong size
    Image.new("RGB", (SIZE, SIZE)).save(root / "val" / "mask" / "0002.png")  # RGB, not an index PNG
    _mask(root / "val" / "mask" / "0003.png", [7])  # unknown class index
    _mask(root / "val" / "mask" / "0004.png", [1], palette=PALETTE[3:] + PALETTE[:3])  # another palette
    (root / "test" / "mask" / "0005.png").unlink()  # image without mask
    _mask(root / "test" / "mask" / "orphan.png", [1])  # mask without image
    return root


def test_every_problem_is_found_and_named(tmp_path):
    root = _broken_luad(tmp_path / "LUAD-HistoSeg")
    problems = check_dataset(root).problems
    expect = [
        r"1031280-9-9-[1 0 3 1].png: cannot parse the image label",
        "no-label.png: cannot parse the image label (no '[…]' label)",
        "1031280-0-0-[1 0 0 0].png: cannot read image",
        "val/mask/0001.png: mask is 40×40 px but its image is 32×32 px",
        "val/mask/0002.png: mask has mode RGB",
        "val/mask/0003.png: mask holds unknown class indices 7",
        "val/mask/0004.png: mask palette differs",
        "test/img/0005.png: no ground-truth mask",
        "test/mask/orphan.png: mask without an image",
    ]
    _assert_problems(problems, expect)


def test_cli_reports_and_training_refuses_with_the_same_findings(tmp_path, capsys):
    root = _broken_luad(tmp_path / "LUAD-HistoSeg")
    out = tmp_path / "report.json"
    assert cli.main(["check-dataset", str(root), "--json", str(out), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "9 problem(s):" in printed and "mask holds unknown class indices 7" in printed
    data = json.loads(out.read_text())
    assert len(data["problems"]) == 9 and data["splits"]["train"]["patches"] == 4
    assert cli.main(["train", "--stage", "1", "--data", str(root), "--out", str(tmp_path / "run"), "--preset",
                     "tiny", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    first = data["problems"][0]
    assert len(err.splitlines()) == 1 and first in err and "(and 8 more problems)" in err
    assert f"wsi-seg check-dataset {root}" in err
    assert not (tmp_path / "run").exists()
    clean = _tree(tmp_path / "clean", LUAD_NAMES)
    assert cli.main(["check-dataset", str(clean), "--no-progress"]) == 0


def test_a_16_bit_image_and_a_patch_listed_twice_are_problems(tmp_path):
    from wsi_seg.errors import DatasetError
    from wsi_seg_training.datasets.io import read_rgb

    root = tmp_path / "csv"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        _rgb(root / "img" / f"p{i}.png", i)
    grey16 = root / "img" / "grey16.png"
    Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(grey16)  # would read as all white
    (root / "labels.csv").write_text(
        "filename,TE,NEC\n"
        "img/p0.png,1,0\n"
        "img/p1.png,0,1\n"
        "img/p0.png,0,1\n"  # the same patch again, with the opposite label
        "img/p2.png,1,1\n"
        "img/p2.png,1,1\n"  # an exact repeat: trained twice
        "img/grey16.png,1,0\n"
    )
    problems = check_dataset(root).problems
    expect = [
        "labels.csv:4: img/p0.png is listed again (first on line 2) with other labels or split",
        "labels.csv:6: img/p2.png is listed again (first on line 5)",
        "image (16-bit or floating point); patches must be 8-bit RGB or grey",  # I;16 (Pillow ≥ 10.3) or I
    ]
    _assert_problems(problems, expect)
    with pytest.raises(DatasetError, match=r"grey16.png: I(;16)? image"):
        read_rgb(grey16)

"""`wsi-seg review`: uncertainty from the stored activations, regions ranked by uncertain tissue
area, corrected regions left out, CSV and HTML written; old results read as they are."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, write_slide

from wsi_seg.cli.main import main
from wsi_seg.reports.review import rank_regions, read_csv, write_review
from wsi_seg.reports.review_options import ReviewOptions
from wsi_seg.result.corrections import save_corrections
from wsi_seg.result.reader import Result
from wsi_seg.result.uncertainty import uncertainty_at, uncertainty_of, uncertainty_pyramid

SLIDE_MPP, MPP = 0.5, 1.0
# regions of 2 model patches of 32 px: 64 px squares, a 4 × 4 grid over 256 px
UNSURE = (slice(64, 128), slice(128, 192))  # region (1, 2): every pixel torn between TE and NEC
HALF_SURE = (slice(192, 224), slice(0, 64))  # region (3, 0): half of it


def write_activation_result(root: Path, slide: Path | None = None) -> Path:
    """A 256² result at 1 µm/px (TE everywhere but a glass border), sure of TE except in
    ``UNSURE`` and ``HALF_SURE``, its activations as stage 2 stores them (probabilities × 255)."""
    from wsi_seg.result.store import ResultStore
    from wsi_seg.slide.slide import Slide

    names, colors = ("TE", "NEC", "LYM"), ((205, 51, 51), (0, 128, 0), (0, 0, 255))
    mask = np.zeros((256, 256), np.uint8)
    mask[8:248, 8:248] = 1
    acts = np.zeros((3, 256, 256), np.uint8)
    acts[0][mask == 1] = 250
    for window in (UNSURE, HALF_SURE):
        acts[0][window], acts[1][window] = 125, 120
    slide_path = slide or Path("/slides/s.svs")
    fingerprint = None
    if slide_path.is_file():
        with Slide(slide_path, mpp=SLIDE_MPP) as opened:
            fingerprint = opened.fingerprint()
    prov = {
        "slide": {"path": str(slide_path), "mpp": SLIDE_MPP, "dimensions_px": [512, 512],
                  "fingerprint": fingerprint},
        "model": {"path": "/models/m", "sha256": "ab" * 32, "config": {"stage": 2, "patch_size_px": 32}},
        "patch_size_px": 32, "mpp": MPP, "class_names": list(names), "class_colors": [list(c) for c in colors],
    }
    store = ResultStore.create(root.with_name(root.name + ".partial"), (256, 256), 3, 64, prov)
    store.open_for_writing()
    for i in range(4):
        for j in range(4):
            y, x = i * 64, j * 64
            store.write_block((i, j), y, x, acts[:, y : y + 64, x : x + 64], mask[y : y + 64, x : x + 64])
    store.finish(root, progress=False)
    return root


@pytest.fixture
def result(tmp_path) -> Path:
    slide = write_slide(tmp_path / "slide.tif", blob_image(512), mpp=SLIDE_MPP, tile_px=128)
    return write_activation_result(tmp_path / "r.zarr", slide)


def test_uncertainty_is_one_minus_the_top_two_margin_background_included():
    acts = np.array([[[200]], [[40]], [[0]]], np.uint8)  # background gets 255 - 240 = 15
    assert uncertainty_of(acts)[0, 0] == pytest.approx(1 - 160 / 255)
    tie = np.array([[[100]], [[100]], [[55]]], np.uint8)
    assert uncertainty_of(tie)[0, 0] == pytest.approx(1.0)
    glass = np.zeros((3, 1, 1), np.uint8)  # all background: sure
    assert uncertainty_of(glass)[0, 0] == pytest.approx(0.0)
    assert uncertainty_of(np.array([[[100]], [[90]]], np.uint8), with_background=False)[0, 0] == pytest.approx(1 - 10 / 255)


def test_regions_ranked_by_uncertain_tissue_area(result):
    r = Result.open(result)
    unc = uncertainty_at(r, 0)
    assert unc[UNSURE].min() > 0.9 and unc[100, 20] < 0.1 and unc[0, 0] == 0.0  # glass: 0
    pyramid = uncertainty_pyramid(r)  # lazy, per level, as napari shows it
    assert len(pyramid) == len(r.levels) and np.asarray(pyramid[0][UNSURE]).min() > 230
    regions = rank_regions(r, ReviewOptions(top=5))
    assert [(g.y0, g.x0) for g in regions] == [(64, 128), (192, 0)]  # the sure regions are not listed
    assert regions[0].uncertain_um2 == pytest.approx(64 * 64) and regions[0].main_class == "TE"
    assert regions[1].uncertain_um2 < regions[0].uncertain_um2 and regions[0].rank == 1


def test_a_corrected_region_drops_out(result):
    crop = Result.open(result).mask(0)[70:80, 130:140]
    save_corrections(result, (70, 130), crop, np.full_like(crop, 2))
    assert [(g.y0, g.x0) for g in rank_regions(Result.open(result))] == [(192, 0)]


def test_review_command_writes_csv_and_html(result, tmp_path, capsys):
    assert main(["review", str(result), "--out", str(tmp_path / "rev"), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "1. x      128 µm  y       64 µm" in out and "review:" in out
    rows = list(csv.DictReader(open(tmp_path / "rev" / "review.csv", encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["y0_px"] == "64" and rows[0]["x0_px"] == "128"
    assert read_csv(tmp_path / "rev" / "review.csv")[0].side == 64
    page = (tmp_path / "rev" / "review.html").read_text(encoding="utf-8")
    assert page.count("<img ") == 3 and "slide" in page and "uncertainty" in page  # slide | labels | uncertainty


def test_review_without_its_slide_still_writes_the_page(tmp_path, capsys):
    res = write_activation_result(tmp_path / "r.zarr")  # its slide is nowhere
    review = write_review(res, tmp_path / "rev")
    page = review.html.read_text(encoding="utf-8")
    assert "no slide thumbnails" in page and page.count("<img ") == 2 * len(review.regions)


def test_bad_input_is_one_line(tmp_path, result, capsys):
    assert main(["review", str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a wsi-seg result" in err
    assert main(["review", str(result), "--margin", "0"]) == 2
    assert "--margin must be in (0, 1]" in capsys.readouterr().err

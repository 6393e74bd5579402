"""Cohort summary with per-class areas, report.html, and `wsi-seg summarize` (nothing re-run)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import blob_image, write_result, write_slide

from wsi_seg.cli.main import main
from wsi_seg.cohort.report import summarize
from wsi_seg.cohort.run import SlideOutcome, write_summary
from wsi_seg.errors import ResultError

NAMES = ("TE", "NEC", "LYM")


def mask_with(te_px: int, nec_px: int) -> np.ndarray:
    m = np.zeros((64, 64), np.uint8)
    m.flat[:te_px] = 1
    m.flat[te_px : te_px + nec_px] = 2
    return m


@pytest.fixture
def cohort(tmp_path):
    """Two finished results and a summary that also lists a failed slide."""
    out = tmp_path / "results"
    slides = []
    for i, (te, nec) in enumerate([(100, 300), (1000, 0)]):
        slide = write_slide(tmp_path / f"s{i}.tif", blob_image(128, seed=i), mpp=0.5, tile_px=64, downsamples=())
        write_result(out / f"s{i}.zarr", mask_with(te, nec), slide, 0.5, 1.0)
        slides.append(slide)
    rows = [SlideOutcome(str(slides[0]), str(out / "s0.zarr"), "done", 4, 1.5),
            SlideOutcome(str(tmp_path / "bad.svs"), str(out / "bad.zarr"), "failed", error="bad.svs: broken"),
            SlideOutcome(str(slides[1]), str(out / "s1.zarr"), "skipped")]
    write_summary(out, rows)
    return out


def test_summarize_adds_areas_and_keeps_the_summary_rows(cohort):
    csv_path, json_path, html_path, rows = summarize(cohort)
    assert [r.status for r in rows] == ["done", "failed", "skipped"]
    assert rows[0].seconds == 1.5 and rows[1].error == "bad.svs: broken"
    assert rows[0].area_mm2 == {"TE": 100e-6, "NEC": 300e-6, "LYM": 0.0} and rows[0].tissue_mm2 == 400e-6
    assert rows[0].percent_of_tissue == {"TE": 25.0, "NEC": 75.0, "LYM": 0.0} and rows[0].labels == "mask"
    assert rows[1].area_mm2 == {} and rows[1].tissue_mm2 is None
    table = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert table[2]["TE mm2"] == "0.001" and table[2]["TE % of tissue"] == "100.0" and table[1]["TE mm2"] == ""
    assert json.loads(json_path.read_text())[0]["area_mm2"]["NEC"] == 0.0003
    page = html_path.read_text(encoding="utf-8")
    assert page.count("<tr>") == 4 and page.count("data:image/png;base64,") == 2
    assert "bad.svs: broken" in page and "3 slides: 1 done, 1 skipped, 1 failed" in page


def test_summarize_without_a_summary_finds_results_and_partials(cohort, tmp_path):
    (cohort / "wsi_seg_summary.json").unlink()
    (cohort / "wsi_seg_summary.csv").unlink()
    slide = tmp_path / "s0.tif"
    write_result(cohort / "p.zarr", mask_with(10, 10), slide, 0.5, 1.0, complete=False)
    (cohort / "not_ours.zarr").mkdir()
    with pytest.raises(ResultError, match=r"1 result\(s\) not finished \(p.zarr.partial\).*--partial"):
        summarize(cohort)
    _, _, _, rows = summarize(cohort, partial=True)
    assert [(r.out.split("/")[-1], r.status) for r in rows] == [
        ("p.zarr.partial", "incomplete"), ("s0.zarr", "done"), ("s1.zarr", "done")]
    assert rows[0].tissue_mm2 == 20e-6


def test_summarize_lists_a_result_with_malformed_attributes_as_failed(cohort):
    meta = cohort / "s1.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["wsi_seg"]["class_colors"] = "red"
    meta.write_text(json.dumps(doc))
    (cohort / "wsi_seg_summary.json").unlink()
    _, _, html_path, rows = summarize(cohort)
    assert [(r.out.split("/")[-1], r.status) for r in rows] == [("s0.zarr", "done"), ("s1.zarr", "failed")]
    assert "s1.zarr: wsi_seg attributes are incomplete or malformed" in rows[1].error
    assert "malformed" in html_path.read_text(encoding="utf-8")


def test_summarize_shows_the_mask_alone_when_a_slide_moved(cohort, tmp_path):
    shutil.move(tmp_path / "s1.tif", tmp_path / "elsewhere.tif")
    _, _, html_path, rows = summarize(cohort)
    page = html_path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 and "slide not found: mask only" in page
    assert rows[2].tissue_mm2 == 1000e-6  # areas need only the result


def test_summarize_cli(cohort, tmp_path, capsys):
    assert main(["summarize", str(cohort)]) == 0
    out = capsys.readouterr().out
    assert "s0.zarr: done, tissue 0.0004 mm²" in out and "3 slides →" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["summarize", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no wsi-seg results" in err
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    write_result(cohort / "p.zarr", mask_with(10, 10), tmp_path / "s0.tif", 0.5, 1.0, complete=False)
    assert main(["summarize", str(cohort)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not finished (p.zarr.partial)" in err
    assert main(["summarize", str(cohort), "--partial"]) == 0
    assert "p.zarr.partial: incomplete" in capsys.readouterr().out
    (cohort / "wsi_seg_summary.json").write_text("{not json")
    assert main(["summarize", str(cohort)]) == 2
    assert "cannot read the cohort summary" in capsys.readouterr().err

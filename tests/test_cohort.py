"""Cohorts: globs and manifests, skipping finished slides, continuing past failures."""

import csv
import json

import pytest
from conftest import blob_image, write_slide

from wsi_seg.cli.main import main
from wsi_seg.cohort.run import expand_inputs


def test_expand_inputs(tmp_path):
    for name in ("a.tif", "b.tif", "c.svs"):
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,label\nc.svs,x\n")
    got = expand_inputs([str(tmp_path / "*.tif"), str(manifest), str(tmp_path / "a.tif")])
    assert got == [tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.svs"]


def test_cohort_run_summary_skip_and_failure(tmp_path, capsys, checkpoints):
    (tmp_path / "in").mkdir()
    write_slide(tmp_path / "in" / "good one.tif", blob_image(1024), mpp=0.5)
    bad = tmp_path / "in" / "broken.svs"
    bad.write_text("not a slide")
    out_dir = tmp_path / "results"
    argv = ["segment", str(tmp_path / "in" / "*"), "--out-dir", str(out_dir), "--model", str(checkpoints[1]),
            "--device", "cpu", "--workers", "0", "--no-progress"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "broken.svs" in err and "1 of 2 slides failed" in err and "Traceback" not in err
    rows = list(csv.DictReader(open(out_dir / "wsi_seg_summary.csv", encoding="utf-8")))
    status = {r["slide"].split("/")[-1]: r for r in rows}
    assert status["good one.tif"]["status"] == "done" and int(status["good one.tif"]["patches"]) > 0
    assert status["broken.svs"]["status"] == "failed" and "broken.svs" in status["broken.svs"]["error"]
    # finished slides carry their per-class areas; the cohort report lists every slide
    assert float(status["good one.tif"]["tissue_mm2"]) > 0 and status["broken.svs"]["tissue_mm2"] == ""
    areas = [float(status["good one.tif"][f"{c} mm2"]) for c in ("TE", "NEC", "LYM", "TAS")]
    assert sum(areas) == pytest.approx(float(status["good one.tif"]["tissue_mm2"]), rel=1e-4)
    assert (out_dir / "report.html").read_text(encoding="utf-8").count("<tr>") == 3
    assert json.loads((out_dir / "wsi_seg_summary.json").read_text())[0]["status"] in ("done", "failed")

    bad.unlink()
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert "skipped" in out
    rows = list(csv.DictReader(open(out_dir / "wsi_seg_summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["skipped"]

"""Real vendor slides through the CLI: ``info``, ``segment`` (the bundled demo model),
``report`` and the GeoJSON export.

- ``tests/data/CMU-1-Small-Region.svs``: OpenSlide's CC0 test slide (Aperio, JPEG tiles,
  0.499 µm/px, one level of 2220 × 2967 px; provenance in ``tests/data/SOURCES.md``).
- The TCGA frozen section with JPEG 2000 tiles and no µm/px, read from the shared real
  data beside the checkout when it is there (never copied into the project).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from PIL import Image
from test_cli import assert_one_line_error as one_line_error
from test_cli import run_cli

from wsi_seg.result.format import is_complete, read_provenance

CMU = Path(__file__).parent / "data" / "CMU-1-Small-Region.svs"
SHARED = Path(os.environ.get("WSI_SEG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
TCGA = SHARED / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
needs_tcga = pytest.mark.skipif(not TCGA.is_file(), reason=f"the J2K TCGA slide is not at {TCGA} (shared real data, "
                                                           "not part of the project; set WSI_SEG_REALDATA)")

# Tissue of CMU-1-Small-Region, verified by eye: its thumbnail at 4 µm/px with a 10 × 10 grid
# over it, tissue counted cell by cell row by row, gave ≈ 35 % (a skin biopsy strip down the
# middle, a white cleft inside it, a thin strand to the left); the detector fills the cleft's
# small holes and gives 39.9 %. Anything outside 33–45 % is not what the picture shows.
CMU_TISSUE_PERCENT = (33.0, 45.0)


def demo_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "demonstration model trained on synthetic tissue" in r.getMessage()]


def test_cmu_info(capsys):
    code, out, err = run_cli(capsys, "info", CMU)
    assert code == 0, err
    assert re.search(r"^vendor:\s+aperio$", out, re.MULTILINE) and re.search(r"^reader:\s+openslide$", out, re.MULTILINE)
    assert "2220 × 2967 px" in out and "0.4990 (metadata)" in out and "objective:   20x" in out
    tissue = re.search(r"^tissue:\s+([\d.]+)% of the slide", out, re.MULTILINE)
    assert tissue is not None, out
    assert CMU_TISSUE_PERCENT[0] <= float(tissue.group(1)) <= CMU_TISSUE_PERCENT[1], out


def test_cmu_segment_report_and_geojson(tmp_path, capsys, caplog):
    out = tmp_path / "cmu.zarr"
    with caplog.at_level(logging.WARNING):
        code, stdout, err = run_cli(capsys, "segment", CMU, "--out", out, "--workers", "0", "--no-progress")
    assert code == 0, err
    assert is_complete(out) and "patches run" in stdout
    warnings = demo_warnings(caplog)  # the bundled demo model on real tissue: said once
    assert len(warnings) == 1 and "README" in warnings[0] and "--model" in warnings[0] and str(CMU) in warnings[0]
    prov = read_provenance(out)
    assert prov["slide"]["vendor"] == "aperio" and prov["slide"]["reader"] == "openslide"
    assert prov["slide"]["mpp"] == pytest.approx(0.499) and prov["slide"]["mpp_source"] == "metadata"
    assert prov["inference"]["reader"]["used"] in ("jpeg-cpu", "openslide")

    png = tmp_path / "cmu_report.png"
    code, stdout, err = run_cli(capsys, "report", out, "--out", png)
    assert code == 0, err
    with Image.open(png) as im:
        assert im.width > 400 and im.height > 300
    class_mm2 = [float(a) for a in re.findall(r"^\s*\S+:\s+([\d.]+) mm²", stdout, re.MULTILINE)]
    slide_mm2 = 2220 * 2967 * 0.499**2 / 1e6  # 1.64 mm²
    assert len(class_mm2) == len(prov["class_names"]), stdout
    # the segmented tissue (every class), against the eye-verified tissue fraction; a little
    # lower, as patches at the edge of the strip count as background
    assert 0.28 <= sum(class_mm2) / slide_mm2 <= CMU_TISSUE_PERCENT[1] / 100, stdout

    geojson = tmp_path / "cmu.geojson"
    code, stdout, err = run_cli(capsys, "export", out, "--geojson", geojson)
    assert code == 0, err
    features = json.loads(geojson.read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert features and names <= set(prov["class_names"])
    xs = [x for f in features for ring in f["geometry"]["coordinates"] for x, _ in ring]
    ys = [y for f in features for ring in f["geometry"]["coordinates"] for _, y in ring]
    assert 0 <= min(xs) and max(xs) <= 2220 + 1 and 0 <= min(ys) and max(ys) <= 2967 + 1  # level-0 px of the slide


@needs_tcga
def test_tcga_without_mpp_says_so_in_one_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, "info", TCGA)
    assert code == 0, err
    assert "unknown (pass --mpp)" in out and "tissue:" not in out
    line = one_line_error(*run_cli(capsys, "segment", TCGA, "--out", tmp_path / "t.zarr", "--no-progress")[::2])
    assert str(TCGA) in line and "µm/px" in line and "--mpp" in line
    assert not (tmp_path / "t.zarr").exists()


@needs_tcga
def test_tcga_with_mpp_reads_jpeg2000_and_records_the_reader(tmp_path, capsys, caplog):
    out = tmp_path / "t.zarr"
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(capsys, "segment", TCGA, "--out", out, "--mpp", "0.5", "--reader", "auto",
                               "--workers", "0", "--no-progress")
    assert code == 0, err
    assert is_complete(out) and len(demo_warnings(caplog)) == 1
    prov = read_provenance(out)
    assert prov["slide"]["mpp"] == 0.5 and prov["slide"]["mpp_source"] == "user"
    reader = prov["inference"]["reader"]
    assert reader["requested"] == "auto" and reader["used"] == "openslide"  # OpenSlide decodes the J2K tiles
    assert "JPEG 2000" in reader["reason"]
    assert prov["stats"]["patches_run"] > 0


@needs_tcga
@pytest.mark.parametrize("reader", ["jpeg-cpu", "jpeg-device"])
def test_tcga_jpeg_readers_refuse_jpeg2000_in_one_line(tmp_path, capsys, reader):
    code, _, err = run_cli(capsys, "segment", TCGA, "--out", tmp_path / "t.zarr", "--mpp", "0.5",
                           "--reader", reader, "--device", "cpu", "--no-progress")
    line = one_line_error(code, err)
    assert str(TCGA) in line and f"--reader {reader}" in line and "JPEG 2000" in line and "--reader auto" in line
    assert not (tmp_path / "t.zarr").exists()


def test_demo_warning_only_for_the_demo_model_on_real_slides(tmp_path):
    from wsi_seg.model.default import default_model_path, demo_on_real_warning
    from wsi_seg.model.pretrained import file_sha256
    from wsi_seg.synthetic.slide import mask_paths

    demo = file_sha256(default_model_path() / "model.safetensors")
    assert "synthetic tissue" in demo_on_real_warning(demo, CMU)
    assert demo_on_real_warning("0" * 64, CMU) is None  # a model of your own
    synthetic = tmp_path / "demo_slide.tif"  # the generator's slide: its ground truth lies beside it
    synthetic.write_bytes(b"")
    mask_paths(synthetic)[1].write_text("{}")
    assert demo_on_real_warning(demo, synthetic) is None

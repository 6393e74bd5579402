"""The slide report: panels, legend, per-class areas from the label pyramid, provenance, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import blob_image, boxes_mask, write_result, write_slide
from PIL import Image

from wsi_seg.cli.main import main
from wsi_seg.errors import ConfigError, SlideError
from wsi_seg.reports.slide_report import build_report, render_html, write_report

SLIDE_MPP, MPP = 0.5, 1.0  # the mask is half the slide's size


def known_mask() -> np.ndarray:
    """128 × 128 px at 1 µm/px: TE 40 × 50, NEC 20 × 20, the rest glass."""
    return boxes_mask((128, 128), {1: (10, 50, 20, 70), 2: (80, 100, 80, 100)})


@pytest.fixture
def slide(tmp_path):
    return write_slide(tmp_path / "slide.tif", blob_image(256), mpp=SLIDE_MPP, tile_px=64)


@pytest.fixture
def result(tmp_path, slide):
    return write_result(tmp_path / "r.zarr", known_mask(), slide, SLIDE_MPP, MPP)


def test_report_areas_come_from_the_mask_and_its_mpp(result):
    report = build_report(result)
    areas = {a.name: a for a in report.areas}
    assert areas["TE"].area_um2 == 40 * 50 * MPP**2 and areas["NEC"].area_um2 == 400 * MPP**2
    assert areas["LYM"].area_um2 == 0
    assert areas["TE"].tissue_fraction == pytest.approx(2000 / 2400)
    assert report.tissue_um2 == 2400
    assert [c for c, _ in report.panels] == ["slide", "segmentation"]  # no ground truth known
    assert "model m (sha256 abababababab…), stage 2" in report.provenance and "1 µm/px" in report.provenance
    assert "slide slide.tif" in report.provenance and report.notes == []


def test_report_png_and_html(result, tmp_path):
    png = tmp_path / "out" / "report.png"
    write_report(result, png)
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.width > 2 * 256 and im.height > 256
        pixels = np.asarray(im)
    # the TE legend swatch is drawn in its class colour
    assert (np.all(pixels == (205, 51, 51), axis=-1)).sum() > 100
    html_path = tmp_path / "report.html"
    write_report(result, html_path)
    text = html_path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 2 and "background:#cd3333" in text
    assert "<td class='n'>0.002</td>" in text  # TE: 2000 µm² = 0.002 mm²
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_shows_the_ground_truth_and_its_miou(tmp_path):
    from wsi_seg.synthetic import mask_paths, write_demo_slide

    demo = write_demo_slide(tmp_path / "demo.tif", size_px=(512, 512), mpp=1.0, seed=1)
    gt = np.asarray(Image.open(demo.mask_path))  # 4 µm/px
    # a result that is the ground truth itself, at 4 µm/px: mIoU 100 %
    res = write_result(tmp_path / "d.zarr", gt, demo.path, 1.0, demo.mask_mpp,
                       class_names=demo.class_names, class_colors=demo.class_colors)
    report = build_report(res)
    assert [c for c, _ in report.panels] == ["slide", "segmentation", "ground truth (mIoU 100.0%)"]
    assert mask_paths(demo.path)[0] == demo.mask_path


def test_a_mask_goes_onto_another_grid_cropped_or_padded_in_micrometres():
    from wsi_seg.reports.evaluate_slide import mask_on_grid

    mask = np.arange(1, 13, dtype=np.uint8).reshape(3, 4)  # 3×4 px at 2 µm/px: 6×8 µm
    on_1um = mask_on_grid(mask, 2.0, 1.0, (8, 6))  # 8×6 µm at 1 µm/px: two rows of padding, cropped in x
    assert on_1um.shape == (8, 6) and (on_1um[:6:2, :6:2] == mask[:, :3]).all() and (on_1um[6:] == 0).all()
    assert mask_on_grid(mask, 2.0, 4.0, (1, 2)).tolist() == [[6, 8]]  # coarser: the pixel under each centre


def test_incomplete_result_is_refused_unless_partial_and_then_says_so(tmp_path, slide, capsys):
    from test_cli import assert_one_line_error, run_cli

    partial = write_result(tmp_path / "p.zarr", known_mask(), slide, SLIDE_MPP, MPP, complete=False)
    code, out, err = run_cli(capsys, "report", partial, "--out", tmp_path / "r.png")
    assert_one_line_error(code, err, "result is incomplete (segmentation was interrupted)")
    assert not (tmp_path / "r.png").exists() and "mm²" not in out
    report = build_report(partial, partial=True)
    assert report.notes and "incomplete" in report.notes[0]
    assert sum(a.area_um2 for a in report.areas) == 2400
    code, out, err = run_cli(capsys, "report", partial, "--out", tmp_path / "r.png", "--partial")
    assert code == 0 and (tmp_path / "r.png").is_file(), err


def test_moved_slide_needs_slide_flag(tmp_path, result, slide, capsys):
    moved = tmp_path / "moved" / "slide.tif"
    moved.parent.mkdir()
    shutil.move(slide, moved)
    with pytest.raises(SlideError, match="moved or deleted.*--slide NEWPATH"):
        build_report(result)
    out = tmp_path / "r.png"
    assert main(["report", str(result), "--out", str(out)]) == 2
    assert "--slide NEWPATH" in capsys.readouterr().err and not out.exists()
    assert main(["report", str(result), "--out", str(out), "--slide", str(moved)]) == 0
    assert out.is_file() and "TE" in capsys.readouterr().out


def test_report_cli_default_path_and_bad_suffix(result, capsys):
    assert main(["report", str(result)]) == 0
    assert (result.parent / "r_report.png").is_file()
    assert main(["report", str(result), "--out", str(result.parent / "r.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r.jpg: a report is written as .png or .html" in err
    assert not (result.parent / "r.jpg").exists()


def test_report_of_a_result_without_class_colours(tmp_path, slide, capsys):
    res = write_result(tmp_path / "nc.zarr", known_mask(), slide, SLIDE_MPP, MPP)
    meta = res / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["wsi_seg"]["class_colors"] = []
    meta.write_text(json.dumps(doc))
    out = tmp_path / "nc.png"
    assert main(["report", str(res), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nc.zarr" in err and "colour" in err and not out.exists()


def test_segment_preview_writes_the_report(tmp_path, blob_slide, checkpoints, capsys):
    out, png = tmp_path / "s.zarr", tmp_path / "s.png"
    code = main(["segment", str(blob_slide), "--out", str(out), "--model", str(checkpoints[2]),
                 "--device", "cpu", "--no-progress", "--preview", str(png)])
    assert code == 0 and png.is_file() and f"report: {png}" in capsys.readouterr().out
    code = main(["segment", str(blob_slide), "--out-dir", str(tmp_path / "c"), "--model", str(checkpoints[2]),
                 "--preview", str(png)])
    assert code == 2 and "--preview goes with --out" in capsys.readouterr().err


def test_render_html_escapes_names(result):
    report = build_report(result)
    report.title = "<b>x</b>"
    assert "&lt;b&gt;x&lt;/b&gt;" in render_html(report)


def test_check_report_path_rejects_other_formats():
    from wsi_seg.reports.slide_report import check_report_path

    with pytest.raises(ConfigError):
        check_report_path("x.pdf")

"""The plugin's readers, job and summary as plain Python: no napari, no Qt, no display.

These run in every test environment (the logic is kept out of the widgets for that);
the GUI tests are in ``test_napari_gui.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blob_image, write_slide
from wsi_seg_napari._jobs import (
    STAGE_SEGMENT,
    JobFailed,
    SegmentRequest,
    guarded_segment_job,
    gui_options,
    run_to_end,
    segment_job,
)
from wsi_seg_napari._result_reader import (
    get_result_reader,
    open_result,
    read_results,
    result_layer_data,
)
from wsi_seg_napari._slide_reader import get_slide_reader, read_slides, slide_layer_data

from wsi_seg.errors import CheckpointError, ResultError, SlideError
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.model import load_checkpoint
from wsi_seg.reports.areas import class_areas


@pytest.fixture(scope="session")
def result(tmp_path_factory, blob_slide, checkpoints) -> Path:
    """A complete wsi-seg result of the blob slide, from the tiny stage-2 model."""
    out = tmp_path_factory.mktemp("results") / "blob.zarr"
    opts = SegmentOptions(device="cpu", workers=0, progress=False, batch_size=8)
    return segment_slide(blob_slide, out, load_checkpoint(checkpoints[2]), opts).out


# -- slides -------------------------------------------------------------------------
def test_slide_reader_builds_a_lazy_pyramid_in_micrometres(blob_slide):
    reader = get_slide_reader(str(blob_slide))
    assert reader is read_slides
    [(levels, kwargs, kind)] = reader(str(blob_slide))
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"]
    assert [lv.shape for lv in levels] == [(1024, 1024, 3), (256, 256, 3)]
    assert levels[0].chunksize == (128, 128, 3)  # the slide's native tile (conftest: 128 px)
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["translate"] == (0.25, 0.25)
    assert kwargs["metadata"]["wsi_seg_slide"]["path"] == str(blob_slide.resolve())
    region = np.asarray(levels[0][500:520, 510:530])
    assert np.array_equal(region, blob_image(1024)[500:520, 510:530])  # lossless zlib slide


def test_slide_without_mpp_opens_in_pixels(tmp_path, caplog):
    path = write_slide(tmp_path / "nompp.tif", blob_image(512), mpp=None)
    [(_levels, kwargs, _)] = read_slides(path)
    assert kwargs["scale"] == (1.0, 1.0)
    assert kwargs["metadata"]["wsi_seg_slide"]["mpp"] is None
    assert "no µm/px" in caplog.text
    [(_levels, kwargs, _)] = [slide_layer_data(path, mpp=0.25)]
    assert kwargs["scale"] == (0.25, 0.25)


@pytest.mark.parametrize("content", [b"", b"not a slide at all" * 100, b"II*\x00garbage"])
def test_bad_slide_files_are_declined_not_raised(tmp_path, content):
    for name in ("bad.svs", "bad.tif", "bad.ndpi"):
        (tmp_path / name).write_bytes(content)
        assert get_slide_reader(str(tmp_path / name)) is None
    assert get_slide_reader(str(tmp_path / "missing.svs")) is None
    assert get_slide_reader(str(tmp_path)) is None
    assert get_slide_reader([]) is None


def test_plain_untiled_tiff_is_left_to_other_readers(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((64, 64, 3), np.uint8))
    assert get_slide_reader(str(tmp_path / "plain.tif")) is None


def test_slide_that_vanishes_gives_a_clear_error(tmp_path):
    with pytest.raises(SlideError, match="gone.svs: slide file not found"):
        slide_layer_data(tmp_path / "gone.svs")


# -- results ------------------------------------------------------------------------
def test_result_reader_builds_slide_activations_and_mask(result, blob_slide):
    reader = get_result_reader(str(result) + "/")
    assert reader is read_results
    layers = reader(str(result))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image"] + ["image"] * 4 + ["labels"]
    slide, acts, (mask, mask_kw, _) = layers[0], layers[1:5], layers[5]
    assert slide[1]["metadata"]["wsi_seg_slide"]["path"] == str(blob_slide.resolve())
    info = open_result(result)
    assert info.complete and info.mpp == 0.5
    assert mask_kw["name"] == "blob: mask" and mask_kw["multiscale"]
    assert [m.shape for m in mask] == [(1024, 1024), (512, 512)]
    assert mask_kw["scale"] == (0.5, 0.5) and mask_kw["translate"] == (0.25, 0.25)
    assert list(mask_kw["features"]["class"]) == ["background", *info.class_names]
    for i, color in enumerate(info.class_colors):
        assert mask_kw["colormap"][i + 1] == pytest.approx([*(np.array(color) / 255), 1.0])
    assert mask_kw["colormap"][0][3] == 0  # background transparent
    for c, (data, kw, _) in enumerate(acts):
        assert kw["visible"] is False and kw["blending"] == "additive"
        assert kw["colormap"]["colors"][-1][:3] == pytest.approx(np.array(info.class_colors[c]) / 255)
        assert [d.shape for d in data] == [(1024, 1024), (512, 512)]
        assert kw["metadata"]["wsi_seg_result"]["class_name"] == info.class_names[c]
    g = zarr.open_group(str(result), mode="r")
    assert np.array_equal(np.asarray(mask[1]), g["labels/mask/1"][:])
    assert np.array_equal(np.asarray(acts[2][0][0][:50, :50]), g["0"][2, :50, :50])
    assert len(result_layer_data(result, include_slide=False)) == 5


def test_result_without_its_slide_opens_alone(tmp_path, result, caplog):
    copy = tmp_path / "moved.zarr"
    shutil.copytree(result, copy)
    g = zarr.open_group(str(copy), mode="r+")
    prov = g.attrs["wsi_seg"]
    g.attrs["wsi_seg"] = {**prov, "slide": {**prov["slide"], "path": str(tmp_path / "gone.svs")}}
    layers = read_results(copy)
    assert [kind for _, _, kind in layers] == ["image"] * 4 + ["labels"]
    assert "not found" in caplog.text


def test_other_zarr_stores_are_left_to_other_readers(tmp_path):
    from ome_zarr.writer import write_image

    ome = tmp_path / "other.ome.zarr"
    write_image(np.zeros((2, 64, 64), np.uint8), zarr.open_group(str(ome), mode="w"), axes="cyx")
    assert get_result_reader(str(ome)) is None
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("x", shape=(4,), dtype="uint8")
    assert get_result_reader(str(plain)) is None
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("[not json", encoding="utf-8")
    assert get_result_reader(str(bad)) is None
    (bad / "zarr.json").write_text("[1, 2]", encoding="utf-8")
    assert get_result_reader(str(bad)) is None
    assert get_result_reader(str(tmp_path / "missing.zarr")) is None


def test_broken_wsi_seg_store_gives_a_clear_error(tmp_path, result):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(result, broken)
    shutil.rmtree(broken / "labels")
    with pytest.raises(ResultError, match="broken.zarr: cannot read the result's arrays"):
        read_results(broken)
    meta = json.loads((broken / "zarr.json").read_text())
    del meta["attributes"]["wsi_seg"]["class_names"]
    (broken / "zarr.json").write_text(json.dumps(meta))
    assert get_result_reader(str(broken)) is not None  # ours, so not handed to others …
    with pytest.raises(ResultError, match="broken.zarr: wsi_seg attributes are incomplete"):
        read_results(broken)  # … but refused with one line


# -- the segment job ------------------------------------------------------------------
def test_job_cancel_leaves_a_resumable_partial_then_resumes(tmp_path, blob_slide, checkpoints):
    out = tmp_path / "job.zarr"
    # chunks of 576 px: blocks finish before the cancel, so some are resumed
    request = SegmentRequest(blob_slide, out, checkpoints[2], gui_options(device="cpu", batch_size=2, chunk_px=512))
    cancel = threading.Event()
    job = segment_job(request, cancel)
    reports = []
    with pytest.raises(StopIteration) as stop:
        while True:
            report = next(job)
            reports.append(report)
            if report.stage == STAGE_SEGMENT and report.done >= report.total // 2:
                cancel.set()  # seen by the engine before its next batch
    assert stop.value.value is None
    assert reports[-1].done < reports[-1].total // 2 + 2  # stopped at the next batch
    assert not out.exists() and (tmp_path / "job.zarr.partial").is_dir()
    partial = open_result(tmp_path / "job.zarr.partial")
    assert not partial.complete
    names = [kw["name"] for _, kw, _ in result_layer_data(tmp_path / "job.zarr.partial", include_slide=False)]
    assert names[-1] == "job: mask (incomplete)"

    reports, res = run_to_end(segment_job(request))
    assert res.out == out and res.patches_resumed > 0
    assert reports[-1].done == reports[-1].total == res.patches_run + res.patches_resumed
    assert open_result(out).complete


def test_job_errors_are_the_engines_messages(tmp_path, blob_slide):
    request = SegmentRequest(blob_slide, tmp_path / "x.zarr", tmp_path / "nope", gui_options(device="cpu"))
    with pytest.raises(CheckpointError, match="nope: checkpoint not found") as raised:
        run_to_end(segment_job(request))
    _reports, failed = run_to_end(guarded_segment_job(request))  # what the widget runs
    assert isinstance(failed, JobFailed) and failed.message == str(raised.value)


def test_closing_the_job_early_cancels_the_run(tmp_path, blob_slide, checkpoints):
    out = tmp_path / "closed.zarr"
    job = segment_job(SegmentRequest(blob_slide, out, checkpoints[1], gui_options(device="cpu", batch_size=1)))
    while next(job).stage != STAGE_SEGMENT:
        pass
    job.close()  # e.g. the viewer closed: must not leave a thread writing
    assert not out.exists() and (tmp_path / "closed.zarr.partial").is_dir()
    assert not [t for t in threading.enumerate() if t.name.startswith("wsi-seg")]  # no writer left running


# -- summary --------------------------------------------------------------------------
def test_class_areas_from_a_coarse_level_match_full_resolution():
    rng = np.random.default_rng(0)
    mask = np.zeros((512, 768), np.uint8)
    mask[:256, :384], mask[256:, :384], mask[:, 384:576] = 1, 2, 3
    levels = [mask, mask[::2, ::2], mask[::4, ::4]]
    rows = class_areas(levels, mpp=0.5, class_names=["a", "b", "c"], class_colors=[(1, 2, 3)] * 3, max_side_px=200)
    truth = np.bincount(mask.ravel(), minlength=4) * 0.25
    assert [r.area_um2 for r in rows] == pytest.approx(truth[1:], rel=0.02)
    assert sum(r.tissue_fraction for r in rows) == pytest.approx(1.0)
    # a single huge level is strided, not read whole into one array
    noisy = rng.integers(0, 3, (1000, 1000)).astype(np.uint8)
    rows = class_areas([noisy], mpp=1.0, class_names=["a", "b"], class_colors=[(0, 0, 0)] * 2, max_side_px=100)
    assert rows[0].area_um2 == pytest.approx((noisy == 1).sum(), rel=0.1)


# -- CLI --------------------------------------------------------------------------------
def test_view_without_napari_fails_with_one_clear_line(monkeypatch, capsys, blob_slide):
    import wsi_seg_napari.cli as view_cli

    from wsi_seg.cli.main import build_parser, main

    monkeypatch.setitem(sys.modules, "napari", None)  # import napari → ImportError
    monkeypatch.setattr("wsi_seg.cli.main.build_parser", lambda: _parser_with_view(build_parser, view_cli))
    assert main(["view", str(blob_slide)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("wsi-seg: error: ") and err.endswith('install the viewer with: pip install "wsi-seg[napari]"')


def _parser_with_view(build_parser, view_cli):
    """The CLI parser with ``view`` added even when the entry point is not installed yet."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "view" not in sub.choices:
        view_cli.register(sub)
    return parser

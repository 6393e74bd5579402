"""The plugin inside a napari viewer: readers, manifest, widgets (needs napari + a display).

Run under a virtual X server (offscreen Qt does not render napari)::

    xvfb-run -a -s "-screen 0 1280x1024x24" env QT_QPA_PLATFORM=xcb python -m pytest tests/test_napari_gui.py
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Image, Labels  # noqa: E402
from wsi_seg_napari._result_reader import get_result_reader, open_result  # noqa: E402
from wsi_seg_napari._slide_reader import read_slides  # noqa: E402
from wsi_seg_napari._summary_widget import SummaryWidget  # noqa: E402
from wsi_seg_napari._viewer import add_layer_data  # noqa: E402
from wsi_seg_napari._widget import SegmentWidget  # noqa: E402

from wsi_seg.inference.segment import SegmentOptions, segment_slide  # noqa: E402
from wsi_seg.model import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.napari
MANIFEST = Path(__file__).parents[1] / "napari_plugin" / "napari.yaml"
RUN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def result(tmp_path_factory, blob_slide, checkpoints) -> Path:
    out = tmp_path_factory.mktemp("gui") / "blob.zarr"
    opts = SegmentOptions(device="cpu", workers=0, progress=False)
    return segment_slide(blob_slide, out, load_checkpoint(checkpoints[2]), opts).out


def test_viewer_shows_slide_result_and_summary(make_napari_viewer, blob_slide, result):
    viewer = make_napari_viewer()
    [slide] = add_layer_data(viewer, read_slides(blob_slide))
    summary = SummaryWidget(viewer)
    assert summary.rows == []
    # the slide is already shown, so the result reader does not add it a second time
    layers = add_layer_data(viewer, get_result_reader(str(result))(str(result)))
    info = open_result(result)
    assert len(viewer.layers) == 1 + len(info.class_names) + 1
    assert isinstance(slide, Image) and slide.rgb and slide.multiscale and len(slide.data) == 2
    assert tuple(slide.scale) == (0.5, 0.5)
    *acts, mask = layers
    assert isinstance(mask, Labels) and mask.multiscale and len(mask.data) == 2
    assert tuple(mask.scale) == (0.5, 0.5) and tuple(mask.translate) == tuple(slide.translate)
    assert list(mask.features["class"]) == ["background", *info.class_names]
    for i, color in enumerate(info.class_colors):
        assert mask.colormap.map(i + 1)[:3] == pytest.approx(np.array(color) / 255, abs=1e-3)
    assert mask.colormap.map(0)[3] == 0
    for act, name, color in zip(acts, info.class_names, info.class_colors, strict=True):
        assert isinstance(act, Image) and not act.visible and act.blending == "additive"
        assert name in act.name and act.multiscale
        assert act.colormap.colors[-1][:3] == pytest.approx(np.array(color) / 255, abs=1e-3)

    rows = summary.rows
    assert [r.name for r in rows] == list(info.class_names)
    assert sum(r.tissue_fraction for r in rows) == pytest.approx(1.0)
    assert all(name in summary.legend.value for name in info.class_names)
    tissue_um2 = sum(r.area_um2 for r in rows)
    assert 0 < tissue_um2 < 1024 * 1024 * 0.25  # inside the slide's 512 × 512 µm

    shot = viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # something was drawn


def test_manifest_readers_and_widgets_work_through_napari(npe2pm, make_napari_viewer, blob_slide, result):
    """napari.yaml, as napari loads it once the package is installed (entry point napari.manifest)."""
    viewer = make_napari_viewer()
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        viewer.open(str(blob_slide), plugin="wsi-seg")
        viewer.open(str(result), plugin="wsi-seg")
        assert [type(layer).__name__ for layer in viewer.layers] == ["Image"] * 5 + ["Labels"]
        for name in ("Segment slide", "Result summary", "Corrections"):
            _dock, widget = viewer.window.add_plugin_dock_widget("wsi-seg", name)
            assert widget is not None


def _form(viewer, tmp_path, checkpoint, batch_size=8) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    slide = next(layer for layer in viewer.layers if "wsi_seg_slide" in layer.metadata)
    widget.slide_layer.value = slide
    assert widget.slide_file.value == Path(slide.metadata["wsi_seg_slide"]["path"])
    widget.output.value = tmp_path / "gui.zarr"
    widget.model.value = checkpoint
    widget.device.value = "cpu"
    widget.batch_size.value = batch_size
    return widget


def test_segment_widget_run_adds_the_result(make_napari_viewer, qtbot, blob_slide, checkpoints, tmp_path):
    viewer = make_napari_viewer()
    add_layer_data(viewer, read_slides(blob_slide))
    summary = SummaryWidget(viewer)
    widget = _form(viewer, tmp_path, checkpoints[2])
    reports = []
    worker = widget.start()
    worker.yielded.connect(reports.append)
    assert widget.running and not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    result = widget.last_result
    assert result is not None and result.out == tmp_path / "gui.zarr" and open_result(result.out).complete
    assert widget.progress.value == widget.progress.max == result.patches_run
    assert reports and reports[-1].done == result.patches_run
    assert "patches run" in widget.status.value and widget.run_button.enabled
    names = [layer.name for layer in viewer.layers]
    assert names[0] == blob_slide.name and names[-1] == "gui: mask" and len(names) == 6  # slide not re-added
    assert [r.name for r in summary.rows] == list(open_result(result.out).class_names)


def test_segment_widget_cancel_keeps_a_resumable_partial(
    make_napari_viewer, qtbot, blob_slide, checkpoints, tmp_path, monkeypatch
):
    import wsi_seg_napari._widget as widget_mod

    from wsi_seg.model import PsclNet

    predict = PsclNet.predict
    gui_options = widget_mod.gui_options  # chunks of 576 px: blocks finish before the cancel, so some are resumed
    monkeypatch.setattr(widget_mod, "gui_options", lambda **kw: gui_options(chunk_px=512, **kw))

    def slow_predict(*args, **kwargs):  # ~0.05 s per batch: time for the GUI to cancel mid-run
        time.sleep(0.05)
        return predict(*args, **kwargs)

    monkeypatch.setattr(PsclNet, "predict", slow_predict)
    viewer = make_napari_viewer()
    add_layer_data(viewer, read_slides(blob_slide))
    widget = _form(viewer, tmp_path, checkpoints[1], batch_size=1)
    worker = widget.start()
    def cancel_half_way(report):  # late enough that some blocks are written (and resumed below)
        if report.stage == "segmenting" and report.done >= report.total // 2:
            widget.cancel()

    worker.yielded.connect(cancel_half_way)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.last_result is None and "cancelled" in widget.status.value and "gui.zarr.partial" in widget.status.value
    assert not (tmp_path / "gui.zarr").exists()
    assert (tmp_path / "gui.zarr.partial").is_dir() and not open_result(tmp_path / "gui.zarr.partial").complete
    assert len(viewer.layers) == 1  # nothing added for a cancelled run
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    monkeypatch.setattr(PsclNet, "predict", predict)
    widget.start()  # same form again: resumes
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.last_result is not None and widget.last_result.patches_resumed > 0


def test_segment_widget_shows_the_clis_error_message(make_napari_viewer, qtbot, blob_slide, tmp_path):
    from wsi_seg.errors import CheckpointError

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.start() is None and "choose a slide" in widget.status.value
    widget.slide_file.value = blob_slide
    widget.model.value = tmp_path / "no-such-model"
    widget.output.value = tmp_path / "err.zarr"
    with pytest.raises(CheckpointError) as expected:
        load_checkpoint(tmp_path / "no-such-model")
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value == str(expected.value)
    assert len(viewer.layers) == 0


def test_view_command_opens_slide_and_result(make_napari_viewer, monkeypatch, blob_slide, result, tmp_path):
    from wsi_seg_napari.cli import open_viewer

    from wsi_seg.errors import ConfigError

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))  # fixture cleans up
    viewer = open_viewer(blob_slide, result, show=False)
    assert [layer.name for layer in viewer.layers][0] == blob_slide.name
    assert type(viewer.layers[-1]).__name__ == "Labels" and len(viewer.layers) == 6
    viewer = open_viewer(result, show=False)  # `wsi-seg view MASK.zarr`: finds its slide
    assert [layer.name for layer in viewer.layers][0] == blob_slide.name and len(viewer.layers) == 6
    with pytest.raises(ConfigError, match="not a wsi-seg result"):
        open_viewer(blob_slide, tmp_path, show=False)


def test_view_subcommand_runs_through_the_wsi_seg_cli(make_napari_viewer, monkeypatch, blob_slide, result):
    import wsi_seg_napari.cli as view_cli
    from test_napari_readers import _parser_with_view

    from wsi_seg.cli.main import build_parser, main

    shown = []
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: shown.append(make_napari_viewer(**kwargs)) or shown[-1])
    monkeypatch.setattr(napari, "run", lambda: None)  # the event loop would block the test
    monkeypatch.setattr("wsi_seg.cli.main.build_parser", lambda: _parser_with_view(build_parser, view_cli))
    assert main(["view", str(blob_slide), str(result)]) == 0
    assert len(shown) == 1 and len(shown[0].layers) == 6


def test_closed_widgets_stop_listening_to_the_viewer(make_napari_viewer, qtbot, blob_slide):
    viewer = make_napari_viewer()
    inserted = viewer.layers.events.inserted
    before = len(inserted.callbacks)
    segment, summary = SegmentWidget(viewer), SummaryWidget(viewer)
    assert len(inserted.callbacks) == before + 2
    segment.native.deleteLater()
    summary.native.deleteLater()
    qtbot.waitUntil(lambda: len(inserted.callbacks) == before, timeout=2_000)
    assert segment._closed and segment._cancel.is_set()  # a running job would stop (resumable)
    add_layer_data(viewer, read_slides(blob_slide))


def test_quitting_the_worker_stops_the_run(make_napari_viewer, qtbot, blob_slide, checkpoints, tmp_path):
    """napari's activity dock cancels a task with ``worker.quit()``: the run must stop too."""
    viewer = make_napari_viewer()
    add_layer_data(viewer, read_slides(blob_slide))
    widget = _form(viewer, tmp_path, checkpoints[1], batch_size=1)
    worker = widget.start()
    worker.yielded.connect(lambda report: worker.quit() if report.stage == "segmenting" else None)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert "cancelled" in widget.status.value
    qtbot.waitUntil(lambda: not [t for t in threading.enumerate() if t.name.startswith("wsi-seg")],
                    timeout=5_000)
    assert not (tmp_path / "gui.zarr").exists() and (tmp_path / "gui.zarr.partial").is_dir()

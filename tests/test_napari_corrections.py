"""`wsi-seg view` docks the legend and corrections; painting and "Save corrections" in napari.

Needs napari and a display (a virtual one: ``xvfb-run -a -s "-screen 0 1280x1024x24"``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, boxes_mask, write_result, write_slide

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from wsi_seg_napari._corrections import EDIT_KEY, edit_layers  # noqa: E402
from wsi_seg_napari._corrections_widget import CorrectionsWidget  # noqa: E402
from wsi_seg_napari._summary_widget import SummaryWidget  # noqa: E402

from wsi_seg.result.corrections import corrections_history  # noqa: E402
from wsi_seg.result.reader import Result  # noqa: E402

pytestmark = pytest.mark.napari
SLIDE_MPP, MPP = 0.5, 1.0


def striped_mask() -> np.ndarray:
    """256 × 256 px at 1 µm/px: TE left half, NEC right half, glass in a border."""
    return boxes_mask((256, 256), {1: (16, 240, 16, 128), 2: (16, 240, 128, 240)})


@pytest.fixture
def result(tmp_path) -> Path:
    slide = write_slide(tmp_path / "slide.tif", blob_image(512), mpp=SLIDE_MPP, tile_px=128)
    return write_result(tmp_path / "r.zarr", striped_mask(), slide, SLIDE_MPP, MPP, chunk_px=64)


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch, result):
    from wsi_seg_napari.cli import open_viewer

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))  # fixture cleans up
    return open_viewer(result, show=False)


def widget(viewer, kind):
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, kind))


def square(y, x, side):
    """Fancy indices of a square, as napari's brush hands them to ``Labels.data_setitem``."""
    ys, xs = np.mgrid[y : y + side, x : x + side]
    return ys.ravel(), xs.ravel()


def mask_layer(viewer, labels="mask"):
    return next(layer for layer in viewer.layers if (layer.metadata.get("wsi_seg_result") or {}).get("labels") == labels)


def test_view_docks_legend_and_corrections_and_names_classes_on_hover(viewer):
    assert {"Result summary", "Corrections"} <= set(viewer.window.dock_widgets)
    summary = widget(viewer, SummaryWidget)
    assert [r.name for r in summary.rows] == ["TE", "NEC", "LYM"] and "NEC" in summary.legend.value
    assert viewer.tooltip.visible
    mask = mask_layer(viewer)
    world_te = mask.data_to_world((100, 50))  # level-0 pixel in the TE half
    status = mask.get_status(world_te, world=True)
    assert "class: TE" in status["coordinates"]
    assert "class: NEC" in mask._get_tooltip_text(np.asarray(mask.data_to_world((100, 200))), world=True)


def test_paint_and_save_corrections(viewer, result, qtbot):
    corrections, summary = widget(viewer, CorrectionsWidget), widget(viewer, SummaryWidget)
    viewer.scene.camera.center = (0, 64.0, 64.0)  # µm: the top-left quarter of the result
    viewer.scene.camera.zoom = min(viewer.canvas.size) / 128
    edit = corrections.edit_visible_region()
    region = edit.metadata[EDIT_KEY]
    assert region.level == 0 and not edit.multiscale and edit.editable and edit.mode == "paint"
    mask = mask_layer(viewer)
    # the edit layer lies exactly over the result
    oy, ox = region.origin_yx
    assert np.allclose(edit.data_to_world((3, 5)), mask.data_to_world((oy + 3, ox + 5)))
    # paint NEC over a 20 × 20 µm square of TE with napari's own label-painting call
    y, x = 40 - oy, 40 - ox
    edit.data_setitem(square(y, x, 20), 2)
    saved = corrections.save()
    assert [r.pixels_changed for r in saved] == [400] and "Saved 400 px" in corrections.status.value
    res = Result.open(result)
    expected = striped_mask()
    expected[40:60, 40:60] = 2
    assert np.array_equal(res.mask(0, "corrected")[:], expected)
    assert np.array_equal(res.mask(0)[:], striped_mask())  # the model's mask is untouched
    assert corrections_history(res)[0]["chunks"] == [[0, 0]]
    corrected = mask_layer(viewer, "corrected")
    assert corrected.visible and not mask.visible
    assert viewer.layers.index(corrected) == viewer.layers.index(mask) + 1
    rows = {r.name: r for r in summary.rows}  # the legend now counts the corrected labels
    assert summary.layer is corrected and rows["NEC"].area_um2 > rows["TE"].area_um2 + 400 - 1e-6

    # a second save without painting writes nothing
    assert [r.pixels_changed for r in corrections.save()] == [0]
    assert corrections.status.value == "No changes to save."


def test_saving_a_label_outside_the_classes_is_refused(viewer, result):
    corrections = widget(viewer, CorrectionsWidget)
    edit = corrections.edit_visible_region()  # whole result in view: a coarser level is fine too
    edit.data_setitem(square(0, 0, 4), 7)
    assert corrections.save() == []
    assert "label value 7 is not a class" in corrections.status.value and "\n" not in corrections.status.value
    assert Result.open(result).label_names == ("mask",)


def test_read_only_result_is_refused_before_painting(viewer, result):
    corrections = widget(viewer, CorrectionsWidget)
    mode = result.stat().st_mode
    os.chmod(result, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        assert corrections.edit_visible_region() is None
    finally:
        os.chmod(result, mode)
    assert "read-only" in corrections.status.value and edit_layers(viewer) == []

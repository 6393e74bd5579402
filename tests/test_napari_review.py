"""napari: the Corrections widget walks the review's regions (next / previous), drops a region
once corrected, and shows the uncertainty as a layer. Needs napari and a display (xvfb-run -a)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blob_image, write_slide
from test_review import SLIDE_MPP, write_activation_result

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from wsi_seg_napari._corrections_widget import CorrectionsWidget  # noqa: E402

pytestmark = pytest.mark.napari


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch, tmp_path):
    from wsi_seg_napari.cli import open_viewer

    slide = write_slide(tmp_path / "slide.tif", blob_image(512), mpp=SLIDE_MPP, tile_px=128)
    result = write_activation_result(tmp_path / "r.zarr", slide)
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    return open_viewer(result, show=False)


def test_next_and_previous_region_and_the_uncertainty_layer(viewer):
    corrections = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, CorrectionsWidget))
    first = corrections.go_to_region(+1)
    assert (first.y0, first.x0) == (64, 128) and "Region 1 of 2" in corrections.status.value
    # the view is centred on the region (µm; 1 µm/px) and shows it whole
    assert np.allclose(viewer.scene.camera.center[-2:], (96, 160), atol=1.0)
    y0, x0, y1, x1 = _visible(viewer)
    assert y0 <= 64 and x0 <= 128 and y1 >= 128 and x1 >= 192
    second = corrections.go_to_region(+1)
    assert (second.y0, second.x0) == (192, 0)
    assert corrections.go_to_region(-1) == first
    # correct the first region: it drops out of the list
    edit = corrections.edit_visible_region()
    oy, ox = edit.metadata["wsi_seg_edit"].origin_yx
    edit.data_setitem((np.array([80 - oy]), np.array([150 - ox])), 2)
    corrections.save()
    again = corrections.go_to_region(+1)
    assert (again.y0, again.x0) == (192, 0) and "Region 1 of 1" in corrections.status.value
    layer = corrections.show_uncertainty()
    assert layer.name == "r: uncertainty" and layer.multiscale
    assert np.asarray(layer.data[0][64:128, 128:192]).min() > 230 and np.asarray(layer.data[0][100, 20]) < 30
    assert corrections.show_uncertainty() is layer  # shown again, not added twice


def _visible(viewer):
    from wsi_seg_napari._corrections import visible_world_box

    return visible_world_box(viewer)

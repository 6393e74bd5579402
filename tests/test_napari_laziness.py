"""Viewing a 50k × 50k slide reads only the tiles on screen (needs napari + a display)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from wsi_seg_napari._slide_reader import slide_layer_data  # noqa: E402
from wsi_seg_napari._viewer import add_layer_data  # noqa: E402

pytestmark = pytest.mark.napari
SIZE_PX, TILE_PX, MPP = 50_000, 256, 0.25


def write_big_slide(path: Path) -> Path:
    """A 50k × 50k Aperio-style pyramid of one repeated pre-compressed tile (~10 MB, < 1 s)."""
    import imagecodecs
    import tifffile

    tile = np.empty((TILE_PX, TILE_PX, 3), np.uint8)
    tile[:] = (200, 120, 170)
    encoded = imagecodecs.zlib_encode(tile.tobytes())

    def tiles(w: int, h: int):
        for _ in range(-(-w // TILE_PX) * -(-h // TILE_PX)):
            yield encoded  # bytes: written as an already-compressed tile

    desc = (f"Aperio Image Library v12.0.0\n{SIZE_PX}x{SIZE_PX} [0,0 {SIZE_PX}x{SIZE_PX}] "
            f"({TILE_PX}x{TILE_PX}) RGB|AppMag = 40|MPP = {MPP}")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, f in enumerate((1, 4, 16, 64)):
            n = SIZE_PX // f
            tw.write(tiles(n, n), shape=(n, n, 3), dtype=np.uint8, tile=(TILE_PX, TILE_PX), photometric="rgb",
                     compression="zlib", metadata=None, subfiletype=1 if i else 0, description=None if i else desc)
    return path


@pytest.fixture
def read_calls(monkeypatch) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Every ``Slide.read_rgb`` call as (level, level0_xy, size_px)."""
    from wsi_seg.slide.slide import Slide

    calls: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
    read = Slide.read_rgb

    def counting(self, level0_xy, level, size_px):
        calls.append((level, tuple(level0_xy), tuple(size_px)))
        return read(self, level0_xy, level, size_px)

    monkeypatch.setattr(Slide, "read_rgb", counting)
    return calls


def _settle(qtbot, seconds: float = 0.6) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        qtbot.wait(30)


def test_viewing_a_50k_slide_reads_a_bounded_number_of_tiles(make_napari_viewer, qtbot, tmp_path, read_calls):
    path = write_big_slide(tmp_path / "big.svs")
    data, kwargs, _ = slide_layer_data(path)
    assert [lv.shape[:2] for lv in data] == [(50_000, 50_000), (12_500, 12_500), (3_125, 3_125), (781, 781)]
    assert [lv.chunksize for lv in data] == [(TILE_PX, TILE_PX, 3)] * 4
    assert data[0].numblocks[:2] == (196, 196) and not read_calls  # 38k tiles, none read yet

    viewer = make_napari_viewer(show=True)  # draws drive napari's choice of level and region
    [layer] = add_layer_data(viewer, [(data, kwargs, "image")])
    _settle(qtbot)
    lowest = len(data) - 1
    assert layer.data_level == lowest
    overview = len(read_calls)
    assert 0 < overview <= 2 * data[lowest].npartitions  # the 4 × 4-tile level (+ thumbnail), nothing finer
    assert {level for level, _, _ in read_calls} == {lowest}

    read_calls.clear()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari ≥ 0.9 : older
    camera.center = (6_250.0, 6_250.0)  # µm: level-0 pixel (25000, 25000)
    camera.zoom = 1 / MPP  # one screen pixel per level-0 pixel
    _settle(qtbot)
    assert layer.data_level == 0
    assert 0 < len(read_calls) <= 60, f"{len(read_calls)} tiles read for one screen of level 0"
    assert {level for level, _, _ in read_calls} == {0}
    xs = [xy[0] for _, xy, _ in read_calls]
    assert 20_000 < min(xs) and max(xs) < 30_000  # only around the centre
    shot = viewer.screenshot(canvas_only=False)
    assert shot.shape[-1] == 4

"""A whole-slide image as a lazy multiscale napari image.

Each OpenSlide pyramid level becomes one dask array of shape (H, W, 3) uint8, chunked
at the slide's native tile size; a chunk is read with ``Slide.read_rgb`` only when
napari asks for it, so opening and viewing a 50k × 50k slide reads only the tiles on
screen. All levels share one open slide handle (OpenSlide reads are thread-safe).

Layers are placed in micrometres: ``scale`` = level-0 µm/px, and ``translate`` = half a
pixel so that the slide's top-left *corner* sits at (0, 0) µm. Result layers
(``_result_reader``) use the same corner convention, so they align at any zoom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from wsi_seg_napari import _notify

if TYPE_CHECKING:  # napari only for typing: this module runs without napari or Qt
    import dask.array as da

    from wsi_seg.slide.slide import Slide

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
DEFAULT_TILE_PX = 256
MIN_CHUNK_PX = 128
MAX_CHUNK_PX = 4096
METADATA_KEY = "wsi_seg_slide"  # layer.metadata[METADATA_KEY] describes the slide
UNITS_UM = ("micrometer", "micrometer")  # layer units (napari ≥ 0.5) when placed in µm

LayerData = tuple[Any, dict[str, Any], str]
PathLike = str | Path
ReaderFunction = Callable[[PathLike | Sequence[PathLike]], list[LayerData]]


def is_slide_path(path: PathLike) -> bool:
    """True if ``path`` has a slide extension and OpenSlide recognises its format."""
    p = Path(path)
    if p.suffix.lower() not in SLIDE_EXTENSIONS or not p.is_file():
        return False
    try:
        import openslide
    except (ImportError, OSError):  # openslide-bin missing or broken
        return False
    try:
        return openslide.OpenSlide.detect_format(str(p)) is not None
    except (openslide.OpenSlideError, OSError, ValueError):
        return False


def chunk_px(props: Mapping[str, str], level: int) -> tuple[int, int]:
    """(height, width) of dask chunks for a level: the native tile, else 256 px.

    Tiny tiles are grouped (≥ 128 px) and huge ones capped (≤ 4096 px).
    """

    def one(key: str) -> int:
        try:
            tile = int(props[f"openslide.level[{level}].tile-{key}"])
        except (KeyError, ValueError):
            return DEFAULT_TILE_PX
        if tile <= 0:
            return DEFAULT_TILE_PX
        if tile < MIN_CHUNK_PX:
            return tile * math.ceil(MIN_CHUNK_PX / tile)
        return min(tile, MAX_CHUNK_PX)

    return one("height"), one("width")


def _splits(size: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(size, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


class _LevelReader:
    """Reads one chunk of one level; dask calls it with the chunk's location."""

    def __init__(self, slide: Slide, level: int) -> None:
        self.slide, self.level = slide, level
        self.downsample = slide.level_downsamples[level]

    def __call__(self, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]  # type: ignore[index]
        ds = self.downsample
        level0_xy = (round(x0 * ds), round(y0 * ds))
        return self.slide.read_rgb(level0_xy, self.level, (x1 - x0, y1 - y0))


def slide_pyramid(slide: Slide) -> list[da.Array]:
    """One lazy (H, W, 3) uint8 dask array per pyramid level, finest first."""
    import dask.array as da
    from dask.base import tokenize

    stat = slide.path.stat()
    token = tokenize(str(slide.path.resolve()), stat.st_size, stat.st_mtime_ns)
    props = slide.properties
    levels = []
    for level, (w, h) in enumerate(slide.level_dimensions):
        ch, cw = chunk_px(props, level)
        levels.append(
            da.map_blocks(
                _LevelReader(slide, level),
                chunks=(_splits(h, ch), _splits(w, cw), (3,)),
                dtype=np.uint8,
                meta=np.empty((0, 0, 0), np.uint8),
                name=f"wsi-seg-slide-{token}-{level}",
            )
        )
    return levels


def slide_mpp_or_none(slide: Slide) -> float | None:
    from wsi_seg.errors import MissingMppError

    try:
        return slide.mpp
    except MissingMppError:
        return None


def slide_layer_data(path: PathLike, mpp: float | None = None) -> LayerData:
    """The napari layer data tuple of a slide (lazy; nothing is read here).

    ``mpp`` supplies or overrides the level-0 µm/px. Without it the layer is placed in
    pixels (scale 1) and the user is warned. Raises ``SlideError`` with a one-line
    message when OpenSlide cannot open the file.
    """
    from wsi_seg.slide.slide import Slide

    slide = Slide(path, mpp=mpp)
    levels = slide_pyramid(slide)
    level0_mpp = slide_mpp_or_none(slide)
    if level0_mpp is None:
        _notify.warn(
            f"{slide.path.name}: no µm/px in the slide metadata; shown in pixels "
            "(results will not line up with it; open it with an --mpp value to fix)"
        )
    scale = level0_mpp or 1.0
    meta = {
        METADATA_KEY: {
            "path": str(slide.path.resolve()),
            "mpp": level0_mpp,
            "vendor": slide.vendor,
            "dimensions_px": list(slide.dimensions),
            "level_downsamples": list(slide.level_downsamples),
        }
    }
    kwargs: dict[str, Any] = {
        "name": slide.path.name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": (scale, scale),
        "translate": (scale / 2, scale / 2),
        "contrast_limits": (0, 255),
        "metadata": meta,
    }
    if level0_mpp is not None:
        kwargs["units"] = UNITS_UM
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def _as_list(path: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [path] if isinstance(path, str | Path) else list(path)


def read_slides(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """napari reader function: one multiscale RGB layer per slide."""
    return [slide_layer_data(p) for p in _as_list(path)]


def get_slide_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """npe2 reader contribution: ``read_slides`` if every path is a slide, else None.

    Never raises: anything OpenSlide does not recognise is left to other readers.
    """
    paths = _as_list(path)
    if not paths or not all(is_slide_path(p) for p in paths):
        return None
    return read_slides

"""Small slide and checkpoint files made from arrays, for the tests, the benchmarks and bug
reports: an Aperio-style tiled TIFF of any RGB array, a sparse TIFF that declares a huge
slide in a few MB, a stained blob on glass, and a checkpoint copy with edited settings.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_slide(
    path: Path,
    rgb: np.ndarray,
    mpp: float | None = 0.5,
    tile_px: int = 128,
    compression: str | None = "zlib",
    downsamples: tuple[int, ...] = (4,),
    levels: Sequence[np.ndarray] | None = None,
) -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF that OpenSlide opens (Aperio-style when mpp is
    set). Lower levels are ``rgb`` strided by ``downsamples`` unless ``levels`` gives them."""
    import tifffile

    h, w = rgb.shape[:2]
    if mpp is not None:
        desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile_px}x{tile_px}) RGB|AppMag = 20|MPP = {mpp}"
    else:
        desc = "plain tiled tiff"
    if levels is None:
        levels = [np.ascontiguousarray(rgb[::f, ::f]) for f in downsamples if min(h, w) // f >= tile_px]
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, tile=(tile_px, tile_px), photometric="rgb", compression=compression,
                 description=desc, metadata=None, subfiletype=0)
        for level in levels:
            tw.write(level, tile=(tile_px, tile_px), photometric="rgb", compression=compression,
                     metadata=None, subfiletype=1)
    return path


def blob_image(size_px: int = 1024, seed: int = 0) -> np.ndarray:
    """Glass with an elliptical stained blob of two colours (for tissue detection)."""
    rng = np.random.default_rng(seed)
    img = np.full((size_px, size_px, 3), 240, np.uint8)
    yy, xx = np.mgrid[:size_px, :size_px]
    c = size_px / 2
    blob = (yy - c) ** 2 / (0.35 * size_px) ** 2 + (xx - c) ** 2 / (0.25 * size_px) ** 2 < 1
    img[blob] = (170, 90, 150)
    img[blob & (xx > c)] = (200, 120, 170)
    noise = rng.integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def sparse_tiff(path: Path, size_px: int, tile: int = 4096, mpp: float = 0.5) -> Path:
    """A BigTIFF declaring size_px² px whose tiles are all empty (byte count 0): small on disk."""
    import tifffile

    n_tiles = (-(-size_px // tile)) ** 2
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(iter([(b"", 0)] * n_tiles), shape=(size_px, size_px, 3), dtype=np.uint8, tile=(tile, tile),
                 photometric="rgb", compression="zlib", resolution=(1e4 / mpp, 1e4 / mpp),
                 resolutionunit="CENTIMETER", metadata=None)
    return path


def edited_checkpoint(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of the checkpoint folder ``src`` at ``dst`` whose config.json has ``changes``
    (None removes a key): a wrong or damaged checkpoint to feed the commands."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst

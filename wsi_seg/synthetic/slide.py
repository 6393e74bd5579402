"""Synthetic demo slide: a streamed, pyramidal, Aperio-style tiled TIFF plus its ground truth.

The class map is made once at a coarse resolution (``mask_mpp``, ≈ 4 µm/px); every
pyramid level is then rendered block by block at its own µm/px (finer than
``MAX_RENDER_MPP`` and averaged where the level is coarser) and handed to tifffile as
an iterator of tiles, so memory stays bounded (one row of blocks) whatever the slide
size. Nuclei and noise fields are global functions of position, so blocks join without
seams and all levels show the same tissue.

Files written for ``slide.tif``:

- ``slide.tif``: tiled (``tile_px``) RGB TIFF; page 0 = level 0 with an Aperio
  ImageDescription (``MPP = …`` and ``AppMag`` only when ``mpp`` is given), further
  pages = levels reduced 4× each (SubfileType 1), until the smaller side is < 1024 px;
- ``slide_mask.png``: uint8 class index per ``mask_mpp`` µm pixel (0 = glass,
  1..4 = CLASS_NAMES), a palette PNG coloured with CLASS_COLORS;
- ``slide_mask.json``: ``{"mpp", "class_names", "class_colors", "slide_size_px",
  "slide_mpp", "downsample"}``; ``mpp`` is the mask's µm/px, ``downsample`` the mask
  pixel size in level-0 pixels (an integer).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.synthetic.tissue import (
    CLASS_COLORS,
    CLASS_NAMES,
    LabelAt,
    TissueStyle,
    random_label_map,
    render,
    smooth_label_at,
)

log = logging.getLogger(__name__)

NOMINAL_MPP = 0.25  # µm/px the tissue is drawn at when the slide records no µm/px
MASK_MPP = 4.0  # target µm/px of the ground-truth mask
MASK_MAX_PX = 4096  # the mask's longer side is at most this
MIN_LEVEL_SIDE_PX = 1024  # reduced levels are added while the last one's smaller side is at least this
LEVEL_FACTOR = 4
_BLOCK_PX = 1024  # render block side (a multiple of the tile side)
_ENCODE_BUFFER_BYTES = 64 << 20  # tiles tifffile may hold for its encoder threads


@dataclass(frozen=True)
class DemoSlide:
    """A written synthetic slide and its ground truth."""

    path: Path
    mask_path: Path  # <stem>_mask.png
    mask_json_path: Path  # <stem>_mask.json
    mpp: float | None  # level-0 µm/px recorded in the slide (None: none recorded)
    size_px: tuple[int, int]  # (width, height) of level 0
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    mask_mpp: float  # µm/px of the mask (at the nominal µm/px when mpp is None)
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level


def mask_paths(slide_path: str | Path) -> tuple[Path, Path]:
    """(``<stem>_mask.png``, ``<stem>_mask.json``) next to a slide."""
    p = Path(slide_path)
    return p.with_name(p.stem + "_mask.png"), p.with_name(p.stem + "_mask.json")


def read_ground_truth(mask_png_path: str | Path) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """(class mask (H, W) uint8, its µm/px, class names) of a demo slide's ``*_mask.png``."""
    png = Path(mask_png_path)
    meta = json.loads(png.with_suffix(".json").read_text())
    with Image.open(png) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{png}: expected a palette or greyscale class mask, got mode {im.mode}")
        mask = np.asarray(im, dtype=np.uint8).copy()
    return mask, float(meta["mpp"]), tuple(meta["class_names"])


def _level_dimensions(size_px: tuple[int, int], levels: int | None) -> list[tuple[int, int]]:
    w, h = size_px
    dims = [(w, h)]
    while True:
        if levels is not None and len(dims) >= levels:
            break
        lw, lh = dims[-1]
        if levels is None and min(lw, lh) < MIN_LEVEL_SIDE_PX:
            break
        d = LEVEL_FACTOR ** len(dims)
        nw, nh = max(1, math.ceil(w / d)), max(1, math.ceil(h / d))
        if (nw, nh) == dims[-1]:
            break
        dims.append((nw, nh))
    return dims


def _level_tiles(
    style: TissueStyle,
    label_at: LabelAt,
    dims: tuple[int, int],
    level_mpp: float,
    tile_px: int,
    seed: int,
    level: int,
) -> Iterator[np.ndarray]:
    """Tiles of one level in TIFF order (row-major), rendered one row of blocks at a time."""
    w, h = dims
    block = max(tile_px, (_BLOCK_PX // tile_px) * tile_px)
    for bi, by in enumerate(range(0, h, block)):
        bh = min(block, h - by)
        row = np.empty((bh, w, 3), np.uint8)
        for bj, bx in enumerate(range(0, w, block)):
            bw = min(block, w - bx)
            rng = np.random.default_rng([seed, 2, level, bi, bj])
            row[:, bx : bx + bw] = render(style, label_at, by * level_mpp, bx * level_mpp, (bh, bw), level_mpp, rng)
        for ty in range(0, bh, tile_px):
            for tx in range(0, w, tile_px):
                yield row[ty : ty + tile_px, tx : tx + tile_px]
        del row


def _aperio_description(size_px: tuple[int, int], tile_px: int, mpp: float | None, compression: str | None) -> str:
    w, h = size_px
    codec = "JPEG/RGB Q=80" if compression == "jpeg" else "RGB"
    desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile_px}x{tile_px}) {codec}"
    if mpp is not None:
        desc += f"|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
    return desc


def write_demo_slide(
    path: str | Path,
    size_px: tuple[int, int] = (8192, 8192),
    mpp: float | None = 0.25,
    seed: int = 0,
    tissue_fraction: float = 0.6,
    tile_px: int = 256,
    compression: str | None = "jpeg",
    levels: int | None = None,
    region_scale_um: float = 300.0,
    jpeg_quality: int = 80,
) -> DemoSlide:
    """Write a synthetic H&E-like pyramidal TIFF that OpenSlide opens, and its ground truth.

    ``size_px`` is (width, height) of level 0; ``mpp`` its µm/px, written as Aperio
    ``MPP`` (None: no µm/px anywhere in the file; the tissue is drawn at 0.25 µm/px).
    ``levels`` is the number of pyramid levels (None: 4× reductions until the smaller
    side is < 1024 px). ``compression`` is a tifffile codec name ("jpeg", "zlib", None…).
    Deterministic for a given ``seed``; memory is bounded by one row of 1024-px blocks.
    """
    import tifffile

    path = Path(path)
    w, h = int(size_px[0]), int(size_px[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"size_px must be positive, got {size_px}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive or None, got {mpp}")
    if tile_px <= 0 or tile_px % 16:
        raise ValueError(f"tile_px must be a positive multiple of 16, got {tile_px}")
    draw_mpp = float(mpp) if mpp is not None else NOMINAL_MPP

    # ground truth: class map at an integer downsample of level 0
    down = max(1, round(MASK_MPP / draw_mpp), math.ceil(max(w, h) / MASK_MAX_PX))
    mask_mpp = draw_mpp * down
    mask_hw = (math.ceil(h / down), math.ceil(w / down))
    labels = random_label_map(
        mask_hw, np.random.default_rng([seed, 1]), mask_mpp, len(CLASS_NAMES), tissue_fraction, region_scale_um
    )
    label_at = smooth_label_at(labels, mask_mpp)
    style = TissueStyle.random(np.random.default_rng([seed, 3]), stain_variation=0.5)

    dims = _level_dimensions((w, h), levels)
    kwargs: dict = {"compression": compression}
    if compression == "jpeg":
        kwargs["compressionargs"] = {"level": jpeg_quality}
    bigtiff = w * h * 3 * 4 // 3 > 2**31
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for k, (lw, lh) in enumerate(dims):
            level_mpp = draw_mpp * ((w / lw + h / lh) / 2.0)
            tw.write(
                _level_tiles(style, label_at, (lw, lh), level_mpp, tile_px, seed, k),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_px, tile_px),
                photometric="rgb",
                description=_aperio_description((w, h), tile_px, mpp, compression) if k == 0 else None,
                metadata=None,
                subfiletype=0 if k == 0 else 1,
                buffersize=_ENCODE_BUFFER_BYTES,
                **kwargs,
            )
            log.debug("level %d: %d x %d px at %.3f µm/px", k, lw, lh, level_mpp)

    mask_png, mask_json = mask_paths(path)
    palette = [255, 255, 255] + [c for rgb in CLASS_COLORS for c in rgb]
    im = Image.fromarray(labels)
    im.putpalette(palette + [0] * (768 - len(palette)))  # L -> P, indices unchanged
    im.save(mask_png, optimize=True)
    mask_json.write_text(
        json.dumps(
            {
                "mpp": mask_mpp,
                "class_names": list(CLASS_NAMES),
                "class_colors": [list(c) for c in CLASS_COLORS],
                "slide_size_px": [w, h],
                "slide_mpp": mpp,
                "downsample": down,
            },
            indent=1,
        )
    )
    return DemoSlide(
        path=path,
        mask_path=mask_png,
        mask_json_path=mask_json,
        mpp=float(mpp) if mpp is not None else None,
        size_px=(w, h),
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        mask_mpp=mask_mpp,
        level_dimensions=tuple(dims),
    )

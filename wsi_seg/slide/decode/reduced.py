"""Regions from raw JPEG tiles decoded on the CPU at 1/1, 1/2, 1/4 or 1/8 scale.

libjpeg can skip most of the inverse DCT when it only needs a smaller image (DCT
scaling: simplejpeg's ``min_factor``, PIL's ``Image.draft``). When the pyramid level we
read is 2, 4 or 8× finer than the model's µm/px, decoding at that scale gives the
wanted pixels directly, instead of decoding 4–64× the pixels and resizing them away.

A DCT-scaled pixel is close to the mean of the r × r level pixels under it (a box
filter, a little sharper still). The OpenSlide path reduces with PIL's bilinear filter,
a triangle 2r level pixels wide, which is softer, and the model sees the difference:
the demo model's masks agreed on 98.3 % of pixels at 1/2. A 3 × 3 blur [a, 1 − 2a, a]²
after the DCT scaling closes most of the gap (99.6 %); ``a`` per scale is the value
that brought the DCT image closest to PIL's bilinear reduction of the full-resolution
level on the demo slide (mean difference 0.98 → 0.45 grey levels at 1/2, 1.26 → 0.56 at
1/4, 1.72 → 0.71 at 1/8; about 1.5× the variance difference of a box and a triangle).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from wsi_seg.errors import SlideError
from wsi_seg.slide.decode.tiff_jpeg import JpegLevel, TileFile

DCT_REDUCTIONS = (8, 4, 2, 1)  # the scales libjpeg decodes to cheaply (1/8 … 1/1)
_TOLERANCE = 0.01  # a level 1.99× finer than wanted still decodes at 1/2
_BILINEAR_MATCH = {2: 0.095, 4: 0.07, 8: 0.06}  # blur weight a per scale, measured (module docstring)


def dct_reduction(factor: float) -> int:
    """The largest of 8, 4, 2, 1 not above ``factor`` (level px per output px)."""
    return next(r for r in DCT_REDUCTIONS if r <= factor * (1 + _TOLERANCE) or r == 1)


def bilinear_match_blur(rgb: np.ndarray, reduce: int) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 filtered by the 3 × 3 blur [a, 1 − 2a, a]² that brings a
    DCT-scaled 1/``reduce`` image to PIL's bilinear reduction by ``reduce`` (see the module
    docstring); edge pixels are kept, as PIL's 3 × 3 kernel keeps them.

    Separable, in 16-bit integers with weights in 1/256 and each pass rounded: within one
    grey level of PIL's ``ImageFilter.Kernel`` (a fifth of the values differ by one, none
    by more) at a fifth of its CPU (4 vs 20 ms for a 992² block), which made it the
    reading's largest cost after decoding."""
    side = round(_BILINEAR_MATCH[reduce] * 256)
    ws, wc = np.uint16(side), np.uint16(256 - 2 * side)
    x = rgb.astype(np.uint16)
    y = x * wc
    y[1:-1] += (x[:-2] + x[2:]) * ws  # ≤ 255 · 256: no overflow
    y += 128
    y >>= 8
    z = y * wc
    z[:, 1:-1] += (y[:, :-2] + y[:, 2:]) * ws
    z += 128
    z >>= 8
    out = z.astype(np.uint8)
    out[0], out[-1], out[:, 0], out[:, -1] = rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]
    return out


def decode_tile(stream: bytes, reduce: int, tile_px: tuple[int, int]) -> np.ndarray:
    """(th / reduce, tw / reduce, 3) uint8 RGB of one complete JPEG tile stream.

    libjpeg-turbo through simplejpeg: DCT scaling, and its warnings (corrupt data, a
    premature end of a tile) raise ValueError, as OpenSlide fails on them too; PIL would
    decode such a tile to garbage without a word.
    """
    import simplejpeg

    tw, th = tile_px
    arr = simplejpeg.decode_jpeg(stream, colorspace="RGB", min_factor=reduce,
                                 min_width=tw // reduce, min_height=th // reduce)
    if arr.shape[:2] != (th // reduce, tw // reduce):
        raise ValueError(f"decoded to {arr.shape[1]}×{arr.shape[0]} px, expected {tw // reduce}×{th // reduce}")
    return arr


def read_region(
    tiles: TileFile,
    level: JpegLevel,
    box: tuple[float, float, float, float],
    out_size_px: tuple[int, int],
    reduce: int,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the level-pixel box (x0, y0, x1, y1) resampled to
    ``out_size_px`` (W, H), from tiles decoded at 1/``reduce``; outside the level is white."""
    x0, y0, x1, y1 = box
    r = reduce
    ix0, iy0, ix1, iy1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    # canvas in reduced pixels; reduced pixel k covers level pixels [k·r, (k+1)·r)
    cx0, cy0 = ix0 // r, iy0 // r
    cx1, cy1 = -(-ix1 // r), -(-iy1 // r)
    canvas = np.full((cy1 - cy0, cx1 - cx0, 3), 255, np.uint8)
    tw, th = level.tile_px
    lw, lh = level.size_px
    for row, col in level.tiles_in(ix0, iy0, ix1, iy1):
        try:
            stream = tiles.read(level, row, col)
            if stream is None:
                continue
            tile = decode_tile(stream, r, level.tile_px)
        except (OSError, ValueError, SyntaxError) as exc:
            raise SlideError(
                f"{level.path}: cannot decode JPEG tile ({row}, {col}) of TIFF page {level.page} ({exc})"
            ) from exc
        ty, tx = row * th // r, col * tw // r
        # only the part of an edge tile inside the image (the rest is padding)
        vh, vw = -(-(min(lh, (row + 1) * th) - row * th) // r), -(-(min(lw, (col + 1) * tw) - col * tw) // r)
        sy0, sy1 = max(ty, cy0), min(ty + vh, cy1)
        sx0, sx1 = max(tx, cx0), min(tx + vw, cx1)
        if sy0 < sy1 and sx0 < sx1:
            canvas[sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
    bx0, by0, bx1, by1 = x0 / r - cx0, y0 / r - cy0, x1 / r - cx0, y1 / r - cy0
    out_w, out_h = out_size_px
    if (bx0, by0) == (int(bx0), int(by0)) and (bx1 - bx0, by1 - by0) == (out_w, out_h):
        if r == 1:
            return np.ascontiguousarray(canvas[int(by0) : int(by0) + out_h, int(bx0) : int(bx0) + out_w])
        # blurred with the canvas' margin around the box, then cut
        return np.ascontiguousarray(bilinear_match_blur(canvas, r)[int(by0) : int(by1), int(bx0) : int(bx1)])
    # the rest of the reduction is PIL's bilinear resize, which brings its own softening
    img = Image.fromarray(canvas)
    return np.asarray(img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(bx0, by0, bx1, by1)))


class JpegRegionReader:
    """``Slide.read_at_mpp`` for one pyramid level, from its raw JPEG tiles decoded at
    1/``reduce`` scale. Same geometry as the OpenSlide path: the level-0 box is read at
    the level from ``floor(x0)`` over ``ceil(width / downsample)`` level pixels, then
    brought to the output size."""

    def __init__(self, level: JpegLevel, downsample: float, reduce: int) -> None:
        self.level, self.downsample, self.reduce = level, downsample, reduce
        self.tiles = TileFile(level.path)

    def read_at_mpp(self, level0_box: tuple[float, float, float, float], out_size_px: tuple[int, int]) -> np.ndarray:
        x0, y0, x1, y1 = level0_box
        ds = self.downsample
        read_w, read_h = max(1, math.ceil((x1 - x0) / ds)), max(1, math.ceil((y1 - y0) / ds))
        lx0, ly0 = math.floor(x0) / ds, math.floor(y0) / ds
        return read_region(self.tiles, self.level, (lx0, ly0, lx0 + read_w, ly0 + read_h), out_size_px, self.reduce)

    def close(self) -> None:
        self.tiles.close()

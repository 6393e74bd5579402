"""JPEG tiles decoded in batches on the model's device, and regions assembled there.

On CUDA, ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a block's tiles in
one nvJPEG batch; the region is then pasted, cropped and resized on the GPU, so the CPU
only reads bytes. On the CPU the same code runs with torchvision's libjpeg decoder.

A tile the device decoder rejects (an unsupported JPEG variant) is decoded by PIL on
the CPU instead and counted in ``fallbacks``. RGB-coded tiles (the Aperio case, see
``tiff_jpeg``) are checked once per level against PIL: a decoder that ignores the Adobe
colour marker would give false colours, and then that level is decoded by PIL (also
counted).
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from wsi_seg.errors import SlideError
from wsi_seg.slide.decode.reduced import decode_tile
from wsi_seg.slide.decode.tiff_jpeg import JpegLevel

log = logging.getLogger(__name__)

_COLOUR_CHECK_MAX_MEAN_DIFF = 3.0  # grey levels: libjpeg builds differ by ~1, a wrong colour space by tens


class TileDecoder:
    """Complete JPEG streams → (3, th, tw) uint8 tensors on ``device``; counts tiles and fallbacks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tiles = 0
        self.fallbacks = 0
        self._cpu_only_levels: set[tuple[str, int]] = set()
        self._checked_levels: set[tuple[str, int]] = set()

    def decode(self, level: JpegLevel, streams: list[bytes], where: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Decode ``streams`` (tiles ``where`` = (row, col) of ``level``) in one batch."""
        self.tiles += len(streams)
        key = (level.path, level.page)
        if key in self._cpu_only_levels:
            self.fallbacks += len(streams)
            return [self._cpu(level, s, w) for s, w in zip(streams, where)]
        data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
        try:
            out = _decode_jpeg(data, self.device)
        except RuntimeError:  # one bad tile fails the batch: find it tile by tile
            out = [self._one(d) for d in data]
        tw, th = level.tile_px
        result = []
        for tile, s, w in zip(out, streams, where):
            if tile is None or tuple(tile.shape) != (3, th, tw):
                self.fallbacks += 1
                tile = self._cpu(level, s, w)
            result.append(tile)
        if level.rgb_coded and key not in self._checked_levels and result:
            self._checked_levels.add(key)
            reference = self._cpu(level, streams[0], where[0])
            diff = (result[0].float() - reference.float()).abs().mean().item()
            if diff > _COLOUR_CHECK_MAX_MEAN_DIFF:
                log.warning("%s: the %s JPEG decoder ignores the RGB colour marker of TIFF page %d "
                            "(mean difference %.1f); decoding it on the CPU", level.path, self.device.type,
                            level.page, diff)
                self._cpu_only_levels.add(key)
                self.fallbacks += len(streams)
                result = [self._cpu(level, s, w) for s, w in zip(streams, where)]
        return result

    def _one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return _decode_jpeg(data, self.device)
        except RuntimeError:
            return None

    def _cpu(self, level: JpegLevel, stream: bytes, where: tuple[int, int]) -> torch.Tensor:
        try:
            arr = decode_tile(stream, 1, level.tile_px)
        except (OSError, ValueError, SyntaxError) as exc:
            raise SlideError(
                f"{level.path}: cannot decode JPEG tile {where} of TIFF page {level.page} ({exc})"
            ) from exc
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1).to(self.device)


def _decode_jpeg(data: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """torchvision's decoder (batched nvJPEG on CUDA). torchvision 0.29 deprecates its
    image codecs in favour of TorchCodec; they are still the batched GPU JPEG decoder in
    our dependencies, so the warning is silenced here."""
    import torchvision.io

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device)


def assemble_region(
    level: JpegLevel,
    tiles: list[torch.Tensor],
    where: list[tuple[int, int]],
    box: tuple[float, float, float, float],
    out_size_px: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """(3, H, W) uint8 on ``device``: decoded ``tiles`` at (row, col) ``where`` pasted
    onto white, the level-pixel ``box`` (x0, y0, x1, y1) cut from ``floor(x0)`` and
    resized to ``out_size_px`` (W, H) with an antialiased bilinear filter, as PIL's
    resize in the OpenSlide path."""
    x0, y0, x1, y1 = box
    ix0, iy0 = math.floor(x0), math.floor(y0)
    w, h = max(1, math.ceil(x1 - x0)), max(1, math.ceil(y1 - y0))
    canvas = torch.full((3, h, w), 255, dtype=torch.uint8, device=device)
    tw, th = level.tile_px
    lw, lh = level.size_px
    for tile, (row, col) in zip(tiles, where):
        ty, tx = row * th, col * tw
        vh, vw = min(lh, ty + th) - ty, min(lw, tx + tw) - tx  # inside the image
        sy0, sy1 = max(ty, iy0), min(ty + vh, iy0 + h)
        sx0, sx1 = max(tx, ix0), min(tx + vw, ix0 + w)
        if sy0 < sy1 and sx0 < sx1:
            canvas[:, sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = tile[:, sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
    out_w, out_h = out_size_px
    if (w, h) == (out_w, out_h):
        return canvas
    resized = F.interpolate(canvas[None].float(), size=(out_h, out_w), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized.round_().clamp_(0, 255).to(torch.uint8)

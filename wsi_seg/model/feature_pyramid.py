"""Multi-scale adapter: one-stride ViT token maps → the 4/8/16/32 pyramid of a hierarchical encoder.

Plain ViTs (the pathology foundation encoders) emit one (B, D, H/p, W/p) map per block;
the Mask2Former pixel decoder and the PSCL heads expect four maps at strides 4, 8, 16
and 32. :class:`SimpleFeaturePyramid` builds them as ViTDet does (Li et al. 2022,
"Exploring plain vision transformer backbones for object detection", §3): the stride-16
map is resampled to strides 4 and 8 by transposed convolutions and to 32 by max
pooling, then each level is projected (1×1 conv, LayerNorm, 3×3 conv, LayerNorm).

Two sources of the four maps:

* ``simple`` — all four levels from the last block (ViTDet's simple feature pyramid);
* ``intermediates`` — level i from block ⌈(i+1)·L/4⌉ − 1 of an L-block ViT (timm's
  ``forward_intermediates``), so the fine levels see earlier, more local features.

Level widths double, ``[D/8, D/4, D/2, D]``, as the pixel decoder's Swin-shaped input
projections expect (a ViT-S/16 gives 48, 96, 192, 384 channels; Swin-T 96 … 768).
"""

from __future__ import annotations

import torch
from torch import nn

from wsi_seg.errors import ConfigError

ADAPTERS = ("simple", "intermediates")
STRIDES = (4, 8, 16, 32)


def pyramid_widths(embed_dim: int) -> list[int]:
    """Channel counts of the four levels for a ViT of width ``embed_dim``: D/8, D/4, D/2, D."""
    if embed_dim % 8:
        raise ConfigError(f"the multi-scale adapter needs a ViT width divisible by 8, got {embed_dim}")
    return [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]


def block_indices(adapter: str, depth: int) -> list[int]:
    """Indices of the ViT blocks whose outputs feed the pyramid (one per level, or the last)."""
    if adapter == "simple":
        return [depth - 1]
    if adapter == "intermediates":
        if depth < 4:
            raise ConfigError(f"the intermediates adapter needs a ViT of ≥ 4 blocks, this one has {depth}")
        return [-(-(i + 1) * depth // 4) - 1 for i in range(4)]
    raise ConfigError(f"unknown ViT adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ViTDet's norm in the pyramid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _resample(embed_dim: int, stride: int) -> tuple[nn.Module, int]:
    """(module taking a stride-16 (B, D, h, w) map to ``stride``, its output channels)."""
    d = embed_dim
    if stride == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2), _LayerNorm2d(d // 2), nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2),
        ), d // 4
    if stride == 8:
        return nn.ConvTranspose2d(d, d // 2, 2, stride=2), d // 2
    if stride == 16:
        return nn.Identity(), d
    return nn.MaxPool2d(2, 2), d


class SimpleFeaturePyramid(nn.Module):
    """Four stride-16 maps (or one, used for every level) → maps at strides 4, 8, 16, 32.

    ``forward`` takes a list of (B, D, H/16, W/16) tensors — four, one per level, or a
    single one shared by all — and returns a list of (B, C_i, H/s_i, W/s_i) tensors with
    C = :func:`pyramid_widths` (D).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.channels = pyramid_widths(embed_dim)
        self.resample = nn.ModuleList()
        self.project = nn.ModuleList()
        for stride, width in zip(STRIDES, self.channels):
            resample, c_in = _resample(embed_dim, stride)
            self.resample.append(resample)
            self.project.append(nn.Sequential(
                nn.Conv2d(c_in, width, 1, bias=False), _LayerNorm2d(width),
                nn.Conv2d(width, width, 3, padding=1, bias=False), _LayerNorm2d(width),
            ))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) not in (1, len(STRIDES)):
            raise ValueError(f"expected 1 or {len(STRIDES)} stride-16 maps, got {len(maps)}")
        sources = maps * len(STRIDES) if len(maps) == 1 else maps
        return [proj(res(x)) for x, res, proj in zip(sources, self.resample, self.project)]

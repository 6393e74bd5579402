"""The encoder of plain ViTs (pathology foundation models): timm ViT + multi-scale adapter.

A ViT has one stride (its patch, 14 or 16 px); :class:`ViTEncoder` turns its token
maps into the four-level pyramid every wsi-seg head expects, with the same interface
as :class:`wsi_seg.model.encoder.TimmEncoder` (``channels``, ``reductions``,
``feature_info``, ``cam_level``, ``body``).

Token handling: timm's ``forward_intermediates`` drops the class and register tokens
and reshapes the patch tokens to (B, D, H/p, W/p), after the model's final norm.
Patch-14 models (UNI2-h, Virchow2, H-optimus-0) see the patch at its own size (224 px
→ 16×16 tokens, as in their pre-training) and the token map is resized bilinearly to
the stride-16 grid (14×14), so the pyramid has exact strides 4–32.

The stage-1 CAMs and PSCL use the stride-16 level (``cam_level`` 2): 14×14 CAMs at
224 px, twice as fine as Swin-T's stride-32 7×7.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsi_seg.errors import ConfigError
from wsi_seg.model.feature_pyramid import STRIDES, SimpleFeaturePyramid, block_indices


class ViTEncoder(nn.Module):
    """A timm ViT (``body``) and a :class:`SimpleFeaturePyramid` (``neck``).

    ``forward`` returns four (B, C_i, H/s_i, W/s_i) tensors, s = 4, 8, 16, 32, for
    inputs whose sides are multiples of 32 and of the ViT's patch size.
    """

    cam_level = 2  # the stride-16 map: the ViT's own resolution

    def __init__(
        self,
        name: str,
        pretrained: str | Path | bool = False,
        adapter: str = "simple",
        **kwargs: object,
    ) -> None:
        super().__init__()
        from timm.models import FeatureInfo

        from wsi_seg.model.timm_create import create_timm_model

        # any patch size the config asks for; at the model's own input size (224 px for the
        # foundation encoders) this changes nothing, so H-optimus-0's False is overridden
        kwargs["dynamic_img_size"] = True
        self.body = create_timm_model(name, pretrained, num_classes=0, **kwargs)
        if not hasattr(self.body, "forward_intermediates") or not hasattr(self.body, "blocks"):
            raise ConfigError(f"backbone {name!r} is not a plain ViT with forward_intermediates")
        self._indices = block_indices(adapter, len(self.body.blocks))
        self.body.prune_intermediate_layers(self._indices, prune_norm=False, prune_head=True)
        self.patch_px = int(self.body.patch_embed.patch_size[0])
        self.embed_dim = int(self.body.embed_dim)
        self.neck = SimpleFeaturePyramid(self.embed_dim)
        self.channels = list(self.neck.channels)
        self.reductions = list(STRIDES)
        self.feature_info = FeatureInfo(
            [dict(num_chs=c, reduction=r, module=f"neck.project.{i}")
             for i, (c, r) in enumerate(zip(self.channels, self.reductions))],
            out_indices=(0, 1, 2, 3),
        )

    def check_input_px(self, size_px: int) -> None:
        """ConfigError unless patches of ``size_px`` fit both the ViT's patches and stride 32."""
        if size_px % self.patch_px or size_px % 32:
            raise ConfigError(
                f"patch size {size_px} px does not suit this ViT: it must be a multiple of its "
                f"{self.patch_px}-px patches and of 32 (e.g. {_common_multiple(self.patch_px)} px)"
            )

    def tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ViT's patch-token maps on the stride-16 grid: (B, D, H/16, W/16) per used block."""
        maps = self.body.forward_intermediates(
            x, indices=self._indices, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        grid = (x.shape[-2] // 16, x.shape[-1] // 16)
        if maps[0].shape[-2:] != grid:
            maps = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps]
        return maps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.tokens(x))

    @property
    def backbone_channels(self) -> int:
        """Channels of :meth:`backbone_features` (the ViT's width)."""
        return self.embed_dim

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT's last token map (B, D, H/16, W/16), without the adapter: what
        pre-training trains and saves (the adapter starts fresh in stage 1)."""
        return self.tokens(x)[-1]


def _common_multiple(patch_px: int) -> int:
    import math

    return math.lcm(patch_px, 32) * max(1, round(224 / math.lcm(patch_px, 32)))

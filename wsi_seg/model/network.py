"""The PSCL network (thesis §4.1): encoder, stage-1 classifier, stage-2 pixel decoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.backbones import build_encoder
from wsi_seg.model.pretrained import PretrainedWeights


@dataclass
class Stage1Output:
    """Stage-1 forward result.

    logits: (B, N) GAP of the class maps; class_maps: (B, N, h, w) raw wᵀf at the last
    encoder stage; features: (B, C, h, w) that last stage (PSCL works on it).
    """

    logits: torch.Tensor
    class_maps: torch.Tensor
    features: torch.Tensor


def cams_from_class_maps(class_maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Thesis eq. 4.3: CAM_i = ReLU(A_i) / max ReLU(A_i), per image and class; in [0, 1]."""
    relu = F.relu(class_maps)
    peak = relu.flatten(2).amax(dim=2).clamp_min(eps)[..., None, None]
    return relu / peak


def build_pixel_decoder(cfg: ModelConfig, channels: list[int]) -> nn.Module:
    """The Mask2Former pixel decoder for encoder stages of the given channel counts.

    Built through ``Mask2FormerModel(config).pixel_level_module`` so transformers
    initialises every parameter (``level_embed`` included); its throw-away backbone is
    a one-block Swin with the same channel counts.
    """
    from transformers import Mask2FormerConfig, Mask2FormerModel, SwinConfig

    c0 = channels[0]
    if channels != [c0, 2 * c0, 4 * c0, 8 * c0]:
        raise ConfigError(f"pixel decoder needs doubling stage widths, backbone gives {channels}")
    backbone = SwinConfig(
        embed_dim=c0,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    m2f_cfg = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=cfg.decoder_dim,
        mask_feature_size=cfg.decoder_dim,
        hidden_dim=cfg.decoder_dim,
        encoder_layers=cfg.decoder_layers,
        encoder_feedforward_dim=cfg.decoder_ffn_dim,
        num_attention_heads=cfg.decoder_heads,
        decoder_layers=1,
        num_queries=1,
        dim_feedforward=cfg.decoder_ffn_dim,
    )
    return Mask2FormerModel(m2f_cfg).pixel_level_module.decoder


class PsclNet(nn.Module):
    """Encoder + 1×1 classifier (stage 1) and, for stage 2, pixel decoder + 1×1 head.

    Stage 2 predicts ``num_classes + 1`` channels: 0 = background, 1..N = classes.
    """

    def __init__(self, cfg: ModelConfig, pretrained: str | Path | bool | PretrainedWeights = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg, pretrained)
        cam_channels = self.encoder.channels[self.encoder.cam_level]
        self.classifier = nn.Conv2d(cam_channels, cfg.num_classes, 1, bias=False)
        self.decoder: nn.Module | None = None
        self.seg_head: nn.Module | None = None
        if cfg.stage == 2:
            self.decoder = build_pixel_decoder(cfg, self.encoder.channels)
            self.seg_head = nn.Conv2d(cfg.decoder_dim, cfg.num_classes + 1, 1)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 RGB → normalised float, on the images' device."""
        x = images_uint8.float().div_(255.0)
        return (x - self.mean) / self.std

    def forward_stage1(self, x: torch.Tensor) -> Stage1Output:
        features = self.encoder(x)[self.encoder.cam_level]
        class_maps = self.classifier(features)
        logits = class_maps.mean(dim=(2, 3))
        return Stage1Output(logits=logits, class_maps=class_maps, features=features)

    def forward_segmentation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N+1, H/4, W/4) segmentation logits of a stage-2 network."""
        if self.decoder is None or self.seg_head is None:
            raise ConfigError("this network has no decoder (stage-1 checkpoint)")
        decoded = self.decoder(self.encoder(x))
        return self.seg_head(decoded.mask_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 2: segmentation logits; stage 1: classification logits."""
        if self.cfg.stage == 2:
            return self.forward_segmentation(x)
        return self.forward_stage1(x).logits

"""The PSCL network (thesis ch. 4): encoder plus the stage heads of ``wsi_seg.model.heads``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.backbones import build_encoder
from wsi_seg.model.heads import CamHead, PatchPrediction, SegmentationHead, Stage1Output
from wsi_seg.model.predict_rules import PredictRules
from wsi_seg.model.pretrained import PretrainedWeights

# state-dict names of checkpoints written before the heads were modules of their own
_LEGACY_KEYS = (("classifier.", "cam_head.classifier."), ("decoder.", "seg_head.decoder."),
                ("seg_head.weight", "seg_head.classifier.weight"), ("seg_head.bias", "seg_head.classifier.bias"))


def _upgrade_legacy_keys(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: rename the head weights of older checkpoints in place."""
    if prefix + "classifier.weight" not in state:
        return
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in _LEGACY_KEYS:
            if rest.startswith(old):
                state[prefix + new + rest[len(old):]] = state.pop(key)
                break


class PsclNet(nn.Module):
    """Encoder + stage-1 CAM head and, for stage 2, the segmentation head.

    ``head`` is the head that predicts: the CAM head for stage 1, the segmentation head
    for stage 2 (whose CAM head, copied from stage 1, is carried along unused).
    Stage 2 predicts ``num_classes + 1`` channels: 0 = background, 1..N = classes.
    """

    def __init__(self, cfg: ModelConfig, pretrained: str | Path | bool | PretrainedWeights = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg, pretrained)
        level = self.encoder.cam_level
        self.cam_head = CamHead(self.encoder.channels[level], cfg.num_classes, cfg.cam_score_threshold, level)
        self.seg_head: SegmentationHead | None = None
        if cfg.stage == 2:
            self.seg_head = SegmentationHead(cfg, self.encoder.channels)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    @property
    def head(self) -> CamHead | SegmentationHead:
        """The head whose ``predict`` gives this network's activations and mask."""
        return self.seg_head if self.seg_head is not None else self.cam_head

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 RGB → normalised float, on the images' device."""
        x = images_uint8.float().div_(255.0)
        return (x - self.mean) / self.std

    def forward_stage1(self, x: torch.Tensor) -> Stage1Output:
        """CAM-head output of normalised images (stage-1 training and PSCL)."""
        return self.cam_head(self.encoder(x))

    def forward_segmentation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N+1, H/4, W/4) segmentation logits of normalised images (stage 2 only)."""
        if self.seg_head is None:
            raise ConfigError("this network has no decoder (stage-1 checkpoint)")
        return self.seg_head(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicting head's logits: stage 1 (B, N) classification, stage 2 segmentation."""
        return self.head.logits(self.encoder(x))

    def predict(
        self,
        images_uint8: torch.Tensor,
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        rules: PredictRules | None = None,
    ) -> PatchPrediction:
        """Activations and mask of (B, 3, P, P) uint8 patches on the network's device.

        ``background`` (B, P, P) bool is the background seed: background in the mask
        whatever the network says (eq. 4.9 for stage 1). ``image_labels`` (B, N) and
        ``rules`` choose a stage-1 patch's classes (see ``CamHead.predict_from``).
        """
        features = self.encoder(self.normalize(images_uint8))
        return self.head.predict(features, tuple(images_uint8.shape[-2:]), background, image_labels, rules)

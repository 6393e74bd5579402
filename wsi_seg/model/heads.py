"""The two stage heads of the PSCL network and their prediction rules.

Thesis: "Weakly supervised segmentation of histopathology images with pseudo-supervised
contrastive learning" (chapters 4 and 5); equation numbers below refer to it.

* :class:`CamHead` (stage 1): a 1×1 classifier on the last encoder stage; its class
  maps give the CAMs of eq. 4.3 and, with the background seed, the mask of eq. 4.9.
* :class:`SegmentationHead` (stage 2): the Mask2Former pixel decoder and a 1×1 conv to
  background + N class logits; its softmax gives the activations and the mask.

Each head owns its ``forward`` and its ``predict`` (activations + mask), so the engine,
pseudo-label generation and evaluation call the same rules. Masks always use
0 = background, 1..N = classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.predict_rules import PredictRules


@dataclass
class Stage1Output:
    """Stage-1 forward result.

    logits: (B, N) GAP of the class maps; class_maps: (B, N, h, w) raw wᵀf at the CAM
    head's encoder stage; features: (B, C, h, w) that stage (PSCL works on it).
    """

    logits: torch.Tensor
    class_maps: torch.Tensor
    features: torch.Tensor


@dataclass
class PatchPrediction:
    """activations: (B, N, P, P) in [0, 1]; mask: (B, P, P) uint8, 0 = background, 1..N."""

    activations: torch.Tensor
    mask: torch.Tensor


def cams_from_class_maps(class_maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 4.3: CAM_i = ReLU(A_i) / max ReLU(A_i), per image and class; in [0, 1]."""
    relu = F.relu(class_maps)
    peak = relu.flatten(2).amax(dim=2).clamp_min(eps)[..., None, None]
    return relu / peak


def mask_absent_classes(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Zero the CAMs of classes absent from each image's (B, N) label (known in training)."""
    return cams * (labels > 0).to(cams.dtype)[:, :, None, None]


def keep_predicted_classes(cams: torch.Tensor, logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero the CAMs of classes the classifier rejects: sigmoid score below ``threshold``,
    except each image's top class, which is always kept (inference without patch labels)."""
    scores = torch.sigmoid(logits.detach().float())
    keep = scores >= threshold
    keep[torch.arange(len(scores)), scores.argmax(dim=1)] = True
    return cams * keep.to(cams.dtype)[:, :, None, None]


def gate_cams(cams: torch.Tensor, logits: torch.Tensor, threshold: float = 0.8, floor: float = 0.0) -> torch.Tensor:
    """Eq. 4.4–4.5: CAM_n ← CAM_n · g_n, g_n = 1 if sigmoid(score_n) > τ_g else ε.

    ``floor`` ε = 0 is eq. 4.5 (the "Gating (ε = 0)" rows of tables 5.16/5.17); ε > 0
    keeps that fraction of a rejected class' CAM (our reading of the tables' other ε
    rows, see docs/method.md). Only tissue classes are gated; the background channel,
    concatenated later, is always kept (the thesis' constant background score of 1).
    """
    keep = (torch.sigmoid(logits.detach().float()) > threshold).to(cams.dtype)
    gate = keep + floor * (1 - keep) if floor else keep
    return cams * gate[:, :, None, None]


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, N, h, w) CAMs to the patch size, kept in [0, 1]."""
    return F.interpolate(cams, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H, W) uint8 argmax over C; ``max().indices`` is ~25× faster
    than ``argmax(dim=1)`` on the CPU for this layout (same ties: first maximum)."""
    return x.max(dim=1).indices.to(torch.uint8)


def pseudo_label_mask(cams: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4.9: l = (argmax CAM + 1) · (1 − bkg), as (B, H, W) uint8.

    ``cams`` (B, N, H, W) at patch resolution, rejected classes already zeroed;
    ``background`` (B, H, W) bool seed or None. Result: 0 = background, 1..N = classes.
    """
    label = channel_argmax(cams) + 1
    if background is None:
        return label
    return label * (~background.to(label.device, torch.bool)).to(torch.uint8)


class CamHead(nn.Module):
    """Stage 1: 1×1 classifier on one encoder stage (``level``: the last for CNNs and
    Swin, stride 16 for plain ViTs); GAP of its class maps → logits."""

    needs_background_seed = True  # eq. 4.9: CAMs have no background channel; the seed is it

    def __init__(self, in_channels: int, num_classes: int, score_threshold: float = 0.5, level: int = -1) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=False)
        self.score_threshold = score_threshold
        self.level = level

    def forward(self, features: list[torch.Tensor]) -> Stage1Output:
        feats = features[self.level]
        class_maps = self.classifier(feats)
        return Stage1Output(logits=class_maps.mean(dim=(2, 3)), class_maps=class_maps, features=feats)

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, N) classification logits."""
        return self(features).logits

    def predict(
        self,
        features: list[torch.Tensor],
        size: tuple[int, int],
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        rules: PredictRules | None = None,
    ) -> PatchPrediction:
        """CAMs and the eq. 4.9 mask of patches of ``size`` px (see :meth:`predict_from`)."""
        return self.predict_from(self(features), size, background, image_labels, rules)

    def predict_from(
        self,
        out: Stage1Output,
        size: tuple[int, int],
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        rules: PredictRules | None = None,
    ) -> PatchPrediction:
        """CAMs (eq. 4.3) upsampled to ``size`` and their mask (eq. 4.9).

        Which classes a patch may take: with ``image_labels`` (B, N) those of its label
        (training pseudo-labels, where patch labels are known); without, the classifier's
        own (sigmoid ≥ ``rules.score_threshold``, None: this head's ``score_threshold``;
        the top class always kept). Gating (eq. 4.4–4.5) when ``rules.gating_threshold``
        is set. ``rules`` None: :class:`PredictRules` defaults. ``background`` (B, P, P)
        bool is background in the mask.
        """
        rules = rules or PredictRules()
        cams = cams_from_class_maps(out.class_maps.float())
        if image_labels is not None:
            cams = mask_absent_classes(cams, image_labels.to(cams.device))
        else:
            threshold = self.score_threshold if rules.score_threshold is None else rules.score_threshold
            cams = keep_predicted_classes(cams, out.logits, threshold)
        if rules.gating_threshold is not None:
            cams = gate_cams(cams, out.logits, rules.gating_threshold, rules.gating_epsilon)
        cams = upsample_cams(cams, size)
        return PatchPrediction(activations=cams, mask=pseudo_label_mask(cams, background))


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


class SegmentationHead(nn.Module):
    """Stage 2: pixel decoder over the four encoder stages, then a 1×1 conv to
    ``num_classes + 1`` logits at 1/4 resolution (0 = background, 1..N = classes)."""

    needs_background_seed = False  # predicts background itself; a seed only overrides it

    def __init__(self, cfg: ModelConfig, channels: list[int]) -> None:
        super().__init__()
        self.decoder = build_pixel_decoder(cfg, channels)
        self.classifier = nn.Conv2d(cfg.decoder_dim, cfg.num_classes + 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, N+1, H/4, W/4) segmentation logits."""
        return self.classifier(self.decoder(features).mask_features)

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, N+1, H/4, W/4) segmentation logits (the forward)."""
        return self(features)

    def predict(
        self,
        features: list[torch.Tensor],
        size: tuple[int, int],
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        rules: PredictRules | None = None,
    ) -> PatchPrediction:
        """Softmax over background + classes upsampled to ``size``; the mask is its argmax,
        with ``background`` (B, P, P) bool pixels set to 0. ``image_labels`` and ``rules``
        choose a stage-1 patch's classes and do not apply here."""
        logits = F.interpolate(self(features).float(), size=size, mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        mask = channel_argmax(probs)
        if background is not None:
            mask[background.to(mask.device, torch.bool)] = 0
        return PatchPrediction(activations=probs[:, 1:], mask=mask)

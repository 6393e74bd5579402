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
from wsi_seg.model.predict_rules import IGNORE_LABEL, PredictRules


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
    """activations: (B, N, P, P) in [0, 1]; mask: (B, P, P) uint8, 0 = background, 1..N
    (:data:`IGNORE_LABEL` where gating with fallback ``ignore`` left a patch no class);
    fully_gated: (B,) bool, the patches whose every allowed class the gate rejected (None
    without gating)."""

    activations: torch.Tensor
    mask: torch.Tensor
    fully_gated: torch.Tensor | None = None


def cams_from_class_maps(class_maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 4.3: CAM_i = ReLU(A_i) / max ReLU(A_i), per image and class; in [0, 1]."""
    relu = F.relu(class_maps)
    peak = relu.flatten(2).amax(dim=2).clamp_min(eps)[..., None, None]
    return relu / peak


def mask_absent_classes(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Zero the CAMs of classes absent from each image's (B, N) label (known in training)."""
    return cams * (labels > 0).to(cams.dtype)[:, :, None, None]


def predicted_classes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N) bool: the classes the classifier keeps, sigmoid score ≥ ``threshold``, and
    each image's top class, which is always kept (inference without patch labels)."""
    scores = torch.sigmoid(logits.detach().float())
    keep = scores >= threshold
    keep[torch.arange(len(scores)), scores.argmax(dim=1)] = True
    return keep


def gate_weights(
    logits: torch.Tensor, allowed: torch.Tensor, threshold: float = 0.8, floor: float = 0.0, fallback: str = "top"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4.4: g_n = 1 if sigmoid(score_n) > τ_g else ε, over the ``allowed`` (B, N) classes
    (0 for the others); and (B,) bool, the images whose every allowed class was rejected.

    ``floor`` ε = 0 is eq. 4.5. ``fallback`` ``top``: such an image keeps its
    highest-scoring allowed class (g = 1), because eq. 4.5 alone leaves it no CAM and
    eq. 4.9's argmax would then make every pixel class 1; ``ignore``: the weights stay as
    they are and the caller leaves the image out. Only tissue classes are gated; the
    background channel, concatenated later, is always kept (the thesis' constant
    background score of 1).
    """
    scores = torch.sigmoid(logits.detach().float())
    allowed = allowed.to(scores.device, torch.bool)
    passed = (scores > threshold) & allowed
    fully_gated = ~passed.any(dim=1)
    if fallback == "top" and bool(fully_gated.any()):
        top = scores.masked_fill(~allowed, -1.0).argmax(dim=1)
        rows = torch.nonzero(fully_gated).squeeze(1)
        passed[rows, top[rows]] = True
    weights = passed.to(scores.dtype)
    if floor:
        weights = weights + floor * (allowed & ~passed).to(scores.dtype)
    return weights, fully_gated


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
            allowed = image_labels.to(cams.device) > 0
        else:
            allowed = predicted_classes(out.logits, self.score_threshold if rules.score_threshold is None
                                        else rules.score_threshold)
        fully_gated = None
        if rules.gate_threshold is not None:
            weights, fully_gated = gate_weights(out.logits, allowed, rules.gate_threshold, rules.gate_floor,
                                                rules.gating_fallback)
        else:
            weights = allowed.to(cams.dtype)
        cams = upsample_cams(cams * weights.to(cams.dtype)[:, :, None, None], size)
        mask = pseudo_label_mask(cams, background)
        if fully_gated is not None and rules.gating_fallback == "ignore" and bool(fully_gated.any()):
            ignored = fully_gated.to(mask.device)[:, None, None] & (mask > 0)
            mask = mask.masked_fill(ignored, IGNORE_LABEL)
        return PatchPrediction(activations=cams, mask=mask, fully_gated=fully_gated)


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

"""Pseudo-Supervised Contrastive Loss, PSCL (thesis §4.3.2, eq. 4.6–4.8)."""

from __future__ import annotations

import torch
from torch import nn

from wsi_seg.errors import ConfigError

from wsi_seg.model.heads import gate_weights, mask_absent_classes
from wsi_seg.model.predict_rules import PredictRules

from wsi_seg_training.cams import background_at, pixel_pseudo_labels
from wsi_seg_training.losses.sampling import sample_pixels

# SupCon keeps a handful of M×M float32 matrices alive for backward (similarities,
# masks, log-probabilities, their gradients): peak RSS of forward + backward measured
# ≈49 bytes per pixel pair at M = 3000 on the CPU; 50 is the budget's figure.
SUPCON_BYTES_PER_PAIR = 50


def default_supcon(temperature: float = 0.1) -> nn.Module:
    """pytorch-metric-learning's SupConLoss: cosine similarity (embeddings L2-normalised
    inside), the given temperature, AvgNonZeroReducer (the mean over anchors that have
    at least one positive — eq. 4.8's 1/|F̂| as the thesis implements it)."""
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(temperature=temperature)


class PSCLLoss(nn.Module):
    """Supervised contrastive loss on feature pixels labelled by the network's own CAMs.

    Per feature pixel (i, j): label = argmax over ``[CAMs ; background seed]`` if that
    maximum is above ``threshold`` (τ = 0.25), else the pixel is dropped (eq. 4.6);
    the kept feature vectors (eq. 4.7) go to ``loss`` (SupCon, eq. 4.8) with their
    labels. CAMs are targets: they are detached, gradients reach the network only
    through ``features``.

    Options: ``include_background`` (thesis table 5.9: whether background pixels take
    part); ``gating`` (eq. 4.4–4.5 as ``wsi-seg pseudo-labels`` applies them, None = off).

    Absent classes are zeroed whenever image labels are passed: the thesis does this for
    its pseudo-labels (§4.3.2, "setting any non-present class to 0, using the patch one-hot
    labels"), and in training, where PSCL runs, those labels are known. Gating is off here
    by default (``pscl.gate_pscl``): §4.3.2 introduces it "to improve the quality of the
    generated pseudo-labels", i.e. eq. 4.9, and an untrained classifier's scores (all
    < τ_g) would leave PSCL only its fallback class per image in the first epochs.

    Budget: at most ``max_pixels_per_class_per_image``
    pixels of each (image, class) and ``max_pixels_total`` in all, sampled with a
    seeded generator, so SupCon memory stays below ``memory_budget_bytes``.
    """

    def __init__(
        self,
        threshold: float = 0.25,
        include_background: bool = True,
        gating: PredictRules | None = None,
        max_pixels_per_class_per_image: int | None = 100,
        max_pixels_total: int | None = 2048,
        loss: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"PSCL threshold must be in [0, 1), got {threshold}")
        for name, value in (("max_pixels_per_class_per_image", max_pixels_per_class_per_image),
                            ("max_pixels_total", max_pixels_total)):
            if value is not None and value < 2:
                raise ConfigError(f"PSCL {name} must be at least 2 (or None), got {value}")
        self.threshold = threshold
        self.include_background = include_background
        self.gating = gating if gating is not None and gating.gate_threshold is not None else None
        self.max_pixels_per_class_per_image = max_pixels_per_class_per_image
        self.max_pixels_total = max_pixels_total
        self.loss = loss if loss is not None else default_supcon()
        self.generator = torch.Generator().manual_seed(seed)
        self.last_stats: dict[str, int] = {}

    @property
    def memory_budget_bytes(self) -> int | None:
        """Upper bound of SupCon's pair memory, or None when ``max_pixels_total`` is None."""
        if self.max_pixels_total is None:
            return None
        return SUPCON_BYTES_PER_PAIR * self.max_pixels_total**2

    def reseed(self, seed: int) -> None:
        """Restart the sampling generator (e.g. per epoch, so resumed runs draw the same)."""
        self.generator.manual_seed(seed)

    def pixel_labels(
        self,
        cams: torch.Tensor,
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, h, w) int64 pseudo-labels of the feature pixels: 0..N-1 classes, N background, -1 dropped."""
        cams = cams.detach().float()
        if image_labels is not None:
            cams = mask_absent_classes(cams, image_labels)
        if self.gating is not None:
            if logits is None:
                raise ConfigError("PSCL gating needs the classification logits")
            allowed = (image_labels > 0) if image_labels is not None else torch.ones_like(logits, dtype=torch.bool)
            weights, _ = gate_weights(logits, allowed, self.gating.gate_threshold, self.gating.gate_floor,
                                      self.gating.gating_fallback)
            cams = cams * weights.to(cams.dtype)[:, :, None, None]
        bkg = None if background is None else background_at(background, tuple(cams.shape[-2:]))
        labels = pixel_pseudo_labels(cams, bkg, self.threshold)
        if bkg is not None and not self.include_background:
            labels = labels.masked_fill(labels == cams.shape[1], -1)
        return labels

    def forward(
        self,
        features: torch.Tensor,
        cams: torch.Tensor,
        background: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """PSCL of a batch.

        features: (B, C, h, w) feature map the CAMs come from; cams: (B, N, h, w) in
        [0, 1]; background: (B, H, W) bool seed at any resolution (None: seeding off);
        image_labels: (B, N) multi-hot; logits: (B, N), needed with gating.
        """
        if features.ndim != 4 or cams.ndim != 4:
            raise ValueError(f"PSCL expects 4-D features and CAMs, got {tuple(features.shape)} and {tuple(cams.shape)}")
        b, c, h, w = features.shape
        if cams.shape[0] != b or tuple(cams.shape[-2:]) != (h, w):
            raise ValueError(f"CAMs {tuple(cams.shape)} do not match features {tuple(features.shape)}")
        num_labels = cams.shape[1] + 1
        labels = self.pixel_labels(cams, background, image_labels, logits).reshape(-1).cpu()
        kept = torch.nonzero(labels >= 0).squeeze(1)
        image_index = kept // (h * w)
        chosen = kept[sample_pixels(
            image_index, labels[kept], num_labels,
            self.max_pixels_per_class_per_image, self.max_pixels_total, self.generator,
        )]
        self.last_stats = {"kept_pixels": int(kept.numel()), "sampled_pixels": int(chosen.numel())}
        if chosen.numel() < 2:
            return features.sum() * 0.0
        embeddings = features.permute(0, 2, 3, 1).reshape(-1, c)[chosen.to(features.device)]
        return self.loss(embeddings.float(), labels[chosen].to(features.device))

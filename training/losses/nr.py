"""Noise-reduced loss, NR (thesis §4.4, eq. 4.10–4.11, after Kang et al. 2025)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsi_seg.model.predict_rules import IGNORE_LABEL

from wsi_seg_training.losses.gumbel import GumbelSoftmax


class NRLoss(nn.Module):
    """Confidence-weighted BCE over background + N classes, per pixel.

    L_nr(x) = −Σ_{i=0..N} c_i(x) [y_i log P_i(x) + (1 − y_i) log(1 − P_i(x))]  (eq. 4.11)

    averaged over pixels and images. y is the one-hot pseudo-label (channel 0 =
    background, 1..N = classes); P comes from ``probabilities`` (default: a Gumbel
    softmax of the logits, as in the thesis); c is :meth:`confidence`:

    * tissue pixels (pseudo-label ≥ 1): c_0 = 0 and c_n = CAM_n / Σ_k CAM_k (eq. 4.10) —
      the share of each class' activation; all 0 where every CAM is 0 (no evidence);
    * background pixels (pseudo-label 0, i.e. the stage-1 background seed, eq. 4.9):
      c_0 = 1 and c_n = 0. The seed overrides the CAMs when pseudo-labels are made, so
      it is taken as certain.

    The thesis' ``Σ_{i=0}^{n+1}`` runs over the N + 1 output channels.
    """

    def __init__(self, probabilities: nn.Module | None = None) -> None:
        super().__init__()
        self.probabilities = probabilities if probabilities is not None else GumbelSoftmax()

    @staticmethod
    def confidence(cams: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """(B, N+1, H, W) float32 confidences c_i from (B, N, H, W) CAMs (any scale, e.g.
        the saved uint8) and the (B, H, W) pseudo-label mask (0 = background)."""
        cams = cams.float()
        total = cams.sum(dim=1, keepdim=True)
        share = torch.where(total > eps, cams / total.clamp_min(eps), torch.zeros_like(cams))
        background = (mask == 0)[:, None].to(share.dtype)
        return torch.cat([background, share * (1.0 - background)], dim=1)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """logits (B, N+1, H, W) at the mask's size; mask (B, H, W) int in 0..N; cams (B, N, H, W)."""
        b, c, h, w = logits.shape
        if tuple(mask.shape) != (b, h, w) or tuple(cams.shape) != (b, c - 1, h, w):
            raise ValueError(
                f"NR loss: logits {tuple(logits.shape)}, mask {tuple(mask.shape)} and CAMs "
                f"{tuple(cams.shape)} do not fit (B, N+1, H, W), (B, H, W), (B, N, H, W)"
            )
        probs = self.probabilities(logits.float())
        ignored = mask == IGNORE_LABEL  # gating fallback "ignore": no target there
        mask = mask.masked_fill(ignored, 0)
        target = F.one_hot(mask.long(), c).permute(0, 3, 1, 2).to(probs.dtype)
        weight = self.confidence(cams, mask) * (~ignored)[:, None].to(probs.dtype)
        bce = F.binary_cross_entropy(probs, target, weight=weight, reduction="none")
        return bce.sum(dim=1).mean()

"""Multi-label soft-margin loss on GAP logits (thesis §4.3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLSMLoss(nn.Module):
    """−1/N Σ_i [y_i log σ(x_i) + (1 − y_i) log(1 − σ(x_i))], averaged over the batch.

    logits: (B, N) class scores (GAP of the class maps); labels: (B, N) multi-hot.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
        return F.multilabel_soft_margin_loss(logits.float(), labels.float())

"""Intra- + inter-image NT-Xent of unsupervised pre-training (thesis §4.2, eq. 4.1, 3.1)."""

from __future__ import annotations

import torch
from torch import nn


def default_ntxent(temperature: float = 0.1) -> nn.Module:
    """pytorch-metric-learning's NTXentLoss (eq. 3.1): cosine similarity, the given
    temperature, mean over the positive pairs (each view an anchor once)."""
    from pytorch_metric_learning.losses import NTXentLoss

    return NTXentLoss(temperature=temperature)


class IntraInterNTXentLoss(nn.Module):
    """L = L_intra + ``inter_weight`` · L_inter (eq. 4.1, λ_inter = 0.5).

    Each image x comes with two views (thesis §4.2, appendix A.3): v, visual-only
    (colour, contrast, sharpness, blur: pixels stay where they are) and s, spatial
    (flips, rotation). Following SuperCL (Zeng et al. 2025a), whose λ the thesis takes:

    * **L_intra** is dense, within one image: the projected feature maps of x and v
      (B, D, h, w) give 2·h·w vectors per image; the positive of x's vector at cell
      (i, j) is v's vector at the same cell (and vice versa); its negatives are the
      other 2·h·w − 2 vectors *of the same image*. NT-Xent per image, averaged over
      the images.
    * **L_inter** is global, across images: the projected pooled features of x and s
      (B, D) give 2B vectors; the positive of x_b is s_b (and vice versa), the negatives
      are the 2B − 2 views of the other images in the batch (SimCLR).

    ``loss`` is the NT-Xent implementation (default :func:`default_ntxent`), called as
    ``loss(embeddings, labels)`` where equal labels mark positives. After each call
    ``last_stats`` holds the two terms.
    """

    def __init__(self, inter_weight: float = 0.5, temperature: float = 0.1, loss: nn.Module | None = None) -> None:
        super().__init__()
        if inter_weight < 0:
            raise ValueError(f"inter_weight must be ≥ 0, got {inter_weight}")
        self.inter_weight = inter_weight
        self.loss = loss if loss is not None else default_ntxent(temperature)
        self.last_stats: dict[str, float] = {}

    def intra(self, dense_x: torch.Tensor, dense_v: torch.Tensor) -> torch.Tensor:
        """Dense NT-Xent within each image of (B, D, h, w) maps of x and its visual view."""
        if dense_x.shape != dense_v.shape or dense_x.ndim != 4:
            raise ValueError(f"intra: view maps {tuple(dense_x.shape)} and {tuple(dense_v.shape)} differ or are not 4-D")
        b, d, h, w = dense_x.shape
        cells = torch.arange(h * w, device=dense_x.device).repeat(2)
        terms = []
        for i in range(b):
            emb = torch.cat([dense_x[i].reshape(d, -1).T, dense_v[i].reshape(d, -1).T])
            terms.append(self.loss(emb.float(), cells))
        return torch.stack(terms).mean()

    def inter(self, global_x: torch.Tensor, global_s: torch.Tensor) -> torch.Tensor:
        """NT-Xent across the batch of (B, D) embeddings of x and its spatial view."""
        if global_x.shape != global_s.shape or global_x.ndim != 2:
            raise ValueError(f"inter: embeddings {tuple(global_x.shape)} and {tuple(global_s.shape)} differ or are not 2-D")
        labels = torch.arange(global_x.shape[0], device=global_x.device).repeat(2)
        return self.loss(torch.cat([global_x, global_s]).float(), labels)

    def forward(
        self, dense_x: torch.Tensor, dense_v: torch.Tensor, global_x: torch.Tensor, global_s: torch.Tensor
    ) -> torch.Tensor:
        intra = self.intra(dense_x, dense_v)
        inter = self.inter(global_x, global_s)
        self.last_stats = {"intra": float(intra.detach()), "inter": float(inter.detach())}
        return intra + self.inter_weight * inter

"""CAM post-processing shared by PSCL and pseudo-label generation (thesis §4.3.2).

Shapes: ``cams`` (B, N, h, w) float in [0, 1] (thesis eq. 4.3, see
:func:`wsi_seg.model.cams_from_class_maps`), ``labels`` (B, N) multi-hot image labels,
``logits`` (B, N) classification logits, ``background`` (B, H, W) bool seeds.
Class indices in the maps returned here: see each function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_absent_classes(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Zero the CAMs of classes absent from each image's label (known during training)."""
    return cams * (labels > 0).to(cams.dtype)[:, :, None, None]


def gate_cams(cams: torch.Tensor, logits: torch.Tensor, threshold: float = 0.8, floor: float = 0.0) -> torch.Tensor:
    """Thesis eq. 4.4–4.5: CAM_n ← CAM_n · g_n, g_n = 1 if sigmoid(score_n) > τ_g else ε.

    ``floor`` ε = 0 is eq. 4.5 (the "Gating (ε = 0)" rows of tables 5.16/5.17); ε > 0
    keeps that fraction of a rejected class' CAM (our reading of the tables' other ε
    rows, see docs/method.md). Only tissue classes are gated; the background channel,
    concatenated later, is always kept (the thesis' constant background score of 1).
    """
    keep = (torch.sigmoid(logits.detach().float()) > threshold).to(cams.dtype)
    gate = keep + floor * (1 - keep) if floor else keep
    return cams * gate[:, :, None, None]


def background_at(background: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool seeds → (B, h, w) float: the background fraction of each cell.

    Area interpolation, so a feature pixel whose 32×32 footprint is 60 % glass gets 0.6
    and competes with the CAMs on the same [0, 1] scale.
    """
    x = background[:, None].to(torch.float32)
    if tuple(x.shape[-2:]) == tuple(size):
        return x[:, 0]
    return F.adaptive_avg_pool2d(x, size)[:, 0]


def pixel_pseudo_labels(
    cams: torch.Tensor, background: torch.Tensor | None, threshold: float = 0.25
) -> torch.Tensor:
    """Thesis eq. 4.6 on feature pixels: (B, h, w) int64 labels.

    ``argmax`` over the channels ``[CAM_0 … CAM_{N-1} ; background]`` — so labels
    ``0 .. N-1`` are the tissue classes and ``N`` the background — and ``-1`` where
    the maximum is not above ``threshold``. ``background`` (B, h, w) float at the CAMs'
    resolution, or None when seeding is off (then no pixel is labelled ``N``).
    Ties go to the lower index (tissue before background).
    """
    scores = cams if background is None else torch.cat([cams, background[:, None].to(cams.dtype)], dim=1)
    peak, label = scores.max(dim=1)
    return torch.where(peak > threshold, label, torch.full_like(label, -1))


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, N, h, w) CAMs to the patch size, kept in [0, 1]."""
    return F.interpolate(cams, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def pseudo_label_mask(cams: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Thesis eq. 4.9: l = (argmax CAM + 1) · (1 − bkg), as (B, H, W) uint8.

    ``cams`` (B, N, H, W) at patch resolution, absent classes already zeroed;
    ``background`` (B, H, W) bool. Result: 0 = background, 1..N = classes.
    """
    label = cams.max(dim=1).indices.to(torch.uint8) + 1
    return label * (~background.bool()).to(torch.uint8)

"""Feature-level CAM labels of the PSCL loss (thesis eq. 4.6).

Shapes: ``cams`` (B, N, h, w) float in [0, 1] (eq. 4.3, see
:func:`wsi_seg.model.cams_from_class_maps`), ``background`` (B, H, W) bool seeds.
The patch-level rules (absent classes, gating eq. 4.4–4.5, the eq. 4.9 mask) belong to
the stage-1 head, :mod:`wsi_seg.model.heads`, shared with inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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

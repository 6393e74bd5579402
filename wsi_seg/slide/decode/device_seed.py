"""Background seeding on the model's device: ``tissue.background_seed`` in torch.

The gray threshold is skimage's ``rgb2gray`` weights; small white objects are removed
by 4-connected component labelling (skimage's default connectivity for
``remove_small_objects``) made of whole-run minima and pointer jumping, a handful of
tensor operations per round.
Used on CUDA, where the block is already there; on the CPU skimage is faster.
"""

from __future__ import annotations

import torch

from wsi_seg.slide.tissue import BackgroundSeedParams

# skimage.color.rgb2gray: Y = 0.2125 R + 0.7154 G + 0.0721 B
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def gray_uint8_scale(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W) float32 gray in [0, 255] of a (3, H, W) uint8 image, as ``tissue._gray_uint8``."""
    w = torch.tensor(_GRAY_WEIGHTS, dtype=torch.float32, device=rgb.device)
    return ((rgb.float() / 255.0) * w[:, None, None]).sum(0) * 255.0


def _run_ids(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 id of the horizontal run of True pixels each pixel is in (row-major)."""
    start = mask.clone()
    start[:, 1:] &= ~mask[:, :-1]
    return torch.cumsum(start.flatten(), 0).view_as(mask)


def _run_min(lab: torch.Tensor, mask: torch.Tensor, runs: torch.Tensor) -> torch.Tensor:
    """Every pixel of ``mask`` takes the smallest label of its horizontal run."""
    keys, values = runs[mask], lab[mask]
    best = torch.full((int(runs.max()) + 1,), lab.numel() + 1, dtype=lab.dtype, device=lab.device)
    best.scatter_reduce_(0, keys, values, reduce="amin")
    out = lab.clone()
    out[mask] = best[keys]
    return out


def component_labels(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 label per pixel of ``mask``'s 4-connected components (the smallest
    flat index + 1 in the component); 0 outside the mask.

    Rounds of: smallest label along each horizontal run, then each vertical run, then
    pointer jumping; a round carries labels around one bend of a component, so rounds
    grow with a component's windiness, not its length.
    """
    h, w = mask.shape
    n = h * w
    big = n + 1
    lab = torch.where(mask, torch.arange(1, n + 1, device=mask.device, dtype=torch.int64).view(h, w), big)
    rows, mask_t = _run_ids(mask), mask.t().contiguous()
    cols = _run_ids(mask_t)
    while True:
        m = _run_min(lab, mask, rows)
        m = _run_min(m.t().contiguous(), mask_t, cols).t().contiguous()
        flat = torch.cat([m.flatten(), m.new_full((1,), big)])
        m = flat[m - 1]  # pointer jumping: a label is a pixel of the same component
        if torch.equal(m, lab):
            return torch.where(mask, lab, 0)
        lab = m


def remove_small_objects(mask: torch.Tensor, min_size_px: int) -> torch.Tensor:
    """``mask`` without its 4-connected components smaller than ``min_size_px`` pixels."""
    if min_size_px <= 0 or not bool(mask.any()):
        return mask
    lab = component_labels(mask)
    sizes = torch.bincount(lab.flatten(), minlength=mask.numel() + 1)
    return mask & (sizes[lab] >= min_size_px)


def background_seed(rgb: torch.Tensor, params: BackgroundSeedParams) -> torch.Tensor:
    """(H, W) bool background seed of a (3, H, W) uint8 image on any device."""
    if not params.enabled:
        return torch.zeros(rgb.shape[1:], dtype=torch.bool, device=rgb.device)
    candidates = gray_uint8_scale(rgb) > params.gray_threshold
    return remove_small_objects(candidates, params.min_size_px)

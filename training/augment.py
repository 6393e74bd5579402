"""Stage-1/2 augmentations (thesis §4.1.3): random horizontal and vertical flips.

Flips act jointly on the image and, when given, its mask (torchvision.transforms.v2
dispatches on ``tv_tensors``). Normalisation is not done here: the network applies
its config's mean/std on the device (:meth:`wsi_seg.model.PsclNet.normalize`).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def flips(p: float = 0.5) -> v2.Transform:
    """Random horizontal and vertical flips, each with probability ``p``."""
    return v2.Compose([v2.RandomHorizontalFlip(p), v2.RandomVerticalFlip(p)])


def apply_joint(
    transform: v2.Transform | None, image: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``transform`` to a (3, H, W) uint8 image and its (H, W) mask with one draw."""
    if transform is None:
        return image, mask
    if mask is None:
        return torch.as_tensor(transform(tv_tensors.Image(image))), None
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return torch.as_tensor(out_image), torch.as_tensor(out_mask)

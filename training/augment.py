"""Augmentations: stage 1/2 flips (thesis §4.1.3) and the pre-training views (appendix A.3).

Flips act jointly on the image and, when given, its masks (torchvision.transforms.v2
dispatches on ``tv_tensors``). Normalisation is not done here: the network applies
its config's mean/std on the device (:meth:`wsi_seg.model.PsclNet.normalize`).
All transforms take and give (3, H, W) uint8 tensors.
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
    if mask is None:
        return apply_joint_many(transform, image)[0], None
    out_image, out_mask = apply_joint_many(transform, image, mask)
    return out_image, out_mask


def visual_view() -> v2.Transform:
    """The intra-image view of pre-training (thesis appendix A.3): colour and texture
    only, no pixel moves — sharpness, autocontrast, equalisation, blur, colour jitter."""
    return v2.Compose([
        v2.RandomAdjustSharpness(sharpness_factor=2, p=0.5),
        v2.RandomAutocontrast(p=0.5),
        v2.RandomEqualize(p=0.5),
        v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
    ])


def spatial_view() -> v2.Transform:
    """The inter-image view of pre-training (thesis appendix A.3): flips and a rotation
    by up to ±90° (corners filled black, torchvision's default as in the thesis)."""
    return v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5), v2.RandomRotation(degrees=(-90, 90))])


def apply_joint_many(transform: v2.Transform | None, image: torch.Tensor, *masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Apply ``transform`` with one draw to a (3, H, W) uint8 image and any number of
    (…, H, W) masks (label maps, CAM stacks); (image, *masks)."""
    if transform is None:
        return (image, *masks)
    out = transform(tv_tensors.Image(image), *(tv_tensors.Mask(m) for m in masks))
    outs = (out,) if not masks else tuple(out)
    return tuple(t.as_subclass(torch.Tensor) for t in outs)

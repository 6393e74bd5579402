"""Torch datasets over the records of one split: image, labels, background seed, mask."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from wsi_seg_training.augment import apply_joint
from wsi_seg_training.datasets.io import read_mask, read_rgb
from wsi_seg_training.datasets.layout import PatchRecord

from wsi_seg.errors import DatasetError
from wsi_seg.slide.tissue import BackgroundSeedParams


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot (N,) of the tissue classes present in an internal-convention label map."""
    present = np.zeros(num_classes, np.float32)
    values = np.unique(mask)
    present[values[values > 0] - 1] = 1.0
    return present


class PatchDataset(Dataset):
    """The patches of one split as dicts of tensors.

    Each sample holds ``image`` (3, H, W) uint8 RGB, ``labels`` (N,) float32 multi-hot
    (from the file name / csv, or, for val/test patches without one, the classes
    present in the ground truth), ``background`` (H, W) bool (the seed, computed after
    augmentation), ``index`` int64, and with ``with_masks`` ``mask`` (H, W) uint8 in the
    internal convention (0 = background, 1..N). ``transform`` acts jointly on image and mask.
    """

    def __init__(
        self,
        records: list[PatchRecord],
        num_classes: int,
        background_seed: BackgroundSeedParams = BackgroundSeedParams(),
        transform: v2.Transform | None = None,
        with_masks: bool = False,
    ) -> None:
        self.records = list(records)
        self.num_classes = num_classes
        self.background_seed = background_seed
        self.transform = transform
        self.with_masks = with_masks
        for rec in self.records:
            if rec.labels is None and rec.mask is None:
                raise DatasetError(f"{rec.image}: patch has neither an image-level label nor a mask")
            if with_masks and rec.mask is None:
                raise DatasetError(f"{rec.image}: patch has no ground-truth mask")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        rgb = read_rgb(rec.image)
        need_mask = self.with_masks or rec.labels is None
        mask = read_mask(rec.mask, self.num_classes, rgb.shape[:2]) if need_mask and rec.mask else None
        labels = (
            np.asarray(rec.labels, np.float32) if rec.labels is not None else labels_from_mask(mask, self.num_classes)
        )
        image_t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(mask) if mask is not None and self.with_masks else None
        image_t, mask_t = apply_joint(self.transform, image_t, mask_t)
        background = self.background_seed.seed(image_t.permute(1, 2, 0).numpy())
        sample = {
            "image": image_t.contiguous(),
            "labels": torch.from_numpy(labels),
            "background": torch.from_numpy(background),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if mask_t is not None:
            sample["mask"] = mask_t.contiguous()
        return sample

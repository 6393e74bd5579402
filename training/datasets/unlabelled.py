"""Unlabelled patches for pre-training: any folder of images, each with its two views.

:func:`pretrain_images` lists the images of a dataset's train split (LUAD-HistoSeg,
BCSS-WSSS, ``labels.csv``: labels are ignored) or of a plain folder (searched
recursively). :class:`ContrastiveViews` gives per image the three tensors of thesis
§4.2: the image x, its visual-only view v and its spatial view s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from wsi_seg.errors import DatasetError

from wsi_seg_training.augment import apply_joint_many, flips, spatial_view, visual_view
from wsi_seg_training.datasets.formats import FORMATS
from wsi_seg_training.datasets.io import IMAGE_SUFFIXES, image_header, read_rgb
from wsi_seg_training.datasets.layout import detect_format, open_dataset

log = logging.getLogger(__name__)
PRETRAIN_FORMATS = ("auto", "folder", *FORMATS)


def _folder_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pretrain_images(root: str | Path, format: str = "auto") -> list[Path]:
    """The images to pre-train on: a dataset's train split, or every image under ``root``.

    ``format``: auto (a dataset if the folder is one, else a plain folder), folder,
    luad, bcss or csv.
    """
    root = Path(root)
    if format not in PRETRAIN_FORMATS:
        raise DatasetError(f"unknown image-folder format {format!r}; use {', '.join(PRETRAIN_FORMATS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    if format == "auto":
        try:
            format = detect_format(root)
        except DatasetError:
            format = "folder"
    if format == "folder":
        images = _folder_images(root)
        if not images:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
        return images
    index = open_dataset(root, format, check_images=False)
    return [r.image for r in index.split("train")]


def check_image_sizes(images: list[Path], size_px: int) -> None:
    """DatasetError naming the first image smaller than ``size_px`` on a side (headers only)."""
    for path in images:
        (h, w), _ = image_header(path)
        if h < size_px or w < size_px:
            raise DatasetError(
                f"{path}: image is {w}×{h} px, smaller than the {size_px} px pre-training patches; "
                "remove it or pass a smaller --patch-size"
            )


class ContrastiveViews(Dataset):
    """Each image as ``image`` (x), ``visual`` (v) and ``spatial`` (s): (3, P, P) uint8.

    x is a random P×P crop of the image (the whole image when it is P×P), randomly
    flipped (thesis §4.1.3); v = ``visual`` (x) and s = ``spatial`` (x), drawn independently
    (defaults: :func:`wsi_seg_training.augment.visual_view` and :func:`spatial_view`, appendix A.3).
    """

    def __init__(
        self, images: list[Path], size_px: int, visual: v2.Transform | None = None, spatial: v2.Transform | None = None
    ) -> None:
        self.images = list(images)
        self.base = v2.Compose([v2.RandomCrop(size_px), flips()])
        self.visual = visual if visual is not None else visual_view()
        self.spatial = spatial if spatial is not None else spatial_view()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rgb = read_rgb(self.images[i])
        (image,) = apply_joint_many(self.base, torch.from_numpy(rgb.transpose(2, 0, 1).copy()))
        (visual,) = apply_joint_many(self.visual, image)
        (spatial,) = apply_joint_many(self.spatial, image)
        return {
            "image": image.contiguous(),
            "visual": visual.contiguous(),
            "spatial": spatial.contiguous(),
            "index": torch.tensor(i, dtype=torch.int64),
        }

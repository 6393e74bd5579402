"""Stage-2 training data: the train patches of a dataset with their stage-1 pseudo-labels.

A pseudo-label folder is what ``wsi-seg pseudo-labels`` writes
(:mod:`wsi_seg_training.pseudo_labels`): ``PL/pseudo_labels.json`` and, per train patch,
``PL/train/mask/<stem>.png`` (0 = background, 1..N) and ``PL/train/cams/<stem>.npz``.
:func:`open_pseudo_labels` checks the folder against the dataset up front — every
patch has its mask (and CAMs when the loss needs them), no mask is left over, masks
have their patch's size, classes agree — so a wrong folder fails before training,
with one line naming the path.

Not exported from :mod:`wsi_seg_training.datasets` (it builds on :mod:`wsi_seg_training.pseudo_labels`,
which imports that package); import it from here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from wsi_seg.errors import DatasetError
from wsi_seg.model.predict_rules import IGNORE_LABEL

from wsi_seg_training.augment import apply_joint_many
from wsi_seg_training.datasets.io import image_header, read_rgb
from wsi_seg_training.datasets.layout import DatasetIndex
from wsi_seg_training.pseudo_labels import MANIFEST_NAME, read_cams

log = logging.getLogger(__name__)
_HINT = "write it with: wsi-seg pseudo-labels --model STAGE1_CKPT --data DATA --out DIR"


@dataclass(frozen=True)
class PseudoLabelRecord:
    """One train patch, its pseudo-label mask and (if present) its CAMs file."""

    image: Path
    mask: Path
    cams: Path | None


@dataclass
class PseudoLabels:
    """A checked pseudo-label folder: its records (dataset order) and manifest."""

    root: Path
    records: list[PseudoLabelRecord]
    manifest: dict


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise DatasetError(f"{root}: pseudo-label folder not found; {_HINT}")
    if not path.is_file():
        raise DatasetError(f"{root}: no {MANIFEST_NAME}, so not a pseudo-label folder; {_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the pseudo-label manifest ({exc})") from exc
    if not isinstance(manifest, dict) or "class_names" not in manifest:
        raise DatasetError(f"{path}: not a pseudo-label manifest (no class_names); {_HINT}")
    return manifest


def open_pseudo_labels(root: str | Path, index: DatasetIndex, need_cams: bool = False, split: str = "train") -> PseudoLabels:
    """Check a pseudo-label folder against ``index``'s ``split`` and pair the files up."""
    root = Path(root)
    manifest = _read_manifest(root)
    names = tuple(manifest["class_names"])
    if names != tuple(index.class_names):
        raise DatasetError(
            f"{root}: pseudo-labels of classes {', '.join(names)} but the dataset {index.root} has "
            f"{', '.join(index.class_names)}"
        )
    mask_dir, cam_dir = root / split / "mask", root / split / "cams"
    if not mask_dir.is_dir():
        raise DatasetError(f"{mask_dir}: no {split} pseudo-labels in this folder; {_HINT} --split {split}")
    if need_cams and not cam_dir.is_dir():
        raise DatasetError(f"{cam_dir}: no CAMs, which the NR loss needs; rewrite the pseudo-labels with wsi-seg pseudo-labels")
    images = index.split(split)
    masks = {p.stem: p for p in mask_dir.glob("*.png")}
    missing = [r.image for r in images if r.image.stem not in masks]
    if missing:
        raise DatasetError(
            f"{mask_dir}: no pseudo-label for {len(missing)} of {len(images)} {split} patches "
            f"(first: {missing[0].name}); incomplete, or made from another dataset"
        )
    extra = sorted(set(masks) - {r.image.stem for r in images})
    if extra:
        raise DatasetError(
            f"{mask_dir}: {len(extra)} pseudo-labels match no {split} patch of {index.root} "
            f"(first: {extra[0]}.png); made from another dataset?"
        )
    records = []
    patch_hw = index.patch_hw.get(split)
    for rec in images:
        mask = masks[rec.image.stem]
        hw, mode = image_header(mask)
        if mode not in ("L", "P") or (patch_hw is not None and hw != patch_hw):
            raise DatasetError(
                f"{mask}: pseudo-label is a {hw[1]}×{hw[0]} px {mode} image; expected a single-channel "
                f"index PNG of the patch size{f' ({patch_hw[1]}×{patch_hw[0]} px)' if patch_hw else ''}"
            )
        cams = cam_dir / f"{rec.image.stem}.npz"
        if need_cams and not cams.is_file():
            raise DatasetError(f"{cams}: CAMs of {rec.image.name} missing; the NR loss needs them")
        records.append(PseudoLabelRecord(image=rec.image, mask=mask, cams=cams if cams.is_file() else None))
    return PseudoLabels(root=root, records=records, manifest=manifest)


class PseudoLabelDataset(Dataset):
    """Train patches with their pseudo-labels, as dicts of tensors.

    ``image`` (3, H, W) uint8; ``mask`` (H, W) uint8 (0 = background, 1..N); with
    ``with_cams`` ``cams`` (N, H, W) float32 in [0, 1]; ``index`` int64.
    ``transform`` (e.g. :func:`wsi_seg_training.augment.flips`) acts on all of them with one draw.
    """

    def __init__(
        self, records: list[PseudoLabelRecord], num_classes: int, transform: v2.Transform | None = None,
        with_cams: bool = False,
    ) -> None:
        self.records = list(records)
        self.num_classes = num_classes
        self.transform = transform
        self.with_cams = with_cams

    def __len__(self) -> int:
        return len(self.records)

    def _mask(self, rec: PseudoLabelRecord, hw: tuple[int, int]) -> np.ndarray:
        try:
            with Image.open(rec.mask) as im:
                mask = np.array(im)
        except OSError as exc:
            raise DatasetError(f"{rec.mask}: cannot read pseudo-label ({exc})") from exc
        labelled = mask[mask != IGNORE_LABEL]
        if mask.shape != hw or labelled.max(initial=0) > self.num_classes:
            raise DatasetError(
                f"{rec.mask}: pseudo-label {mask.shape[1]}×{mask.shape[0]} px with values up to "
                f"{int(labelled.max(initial=0))}; expected {hw[1]}×{hw[0]} px, 0 (background) – {self.num_classes} "
                f"or {IGNORE_LABEL} (ignore)"
            )
        return mask

    def _cams(self, rec: PseudoLabelRecord, hw: tuple[int, int]) -> np.ndarray:
        if rec.cams is None:
            raise DatasetError(f"{rec.mask}: no CAMs next to this pseudo-label; the NR loss needs them")
        try:
            cams = read_cams(rec.cams)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{rec.cams}: cannot read CAMs ({exc})") from exc
        if cams.shape != (self.num_classes, *hw):
            raise DatasetError(f"{rec.cams}: CAMs of shape {cams.shape}; expected {(self.num_classes, *hw)}")
        return cams

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        rgb = read_rgb(rec.image)
        hw = rgb.shape[:2]
        tensors = [torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), torch.from_numpy(self._mask(rec, hw))]
        if self.with_cams:
            tensors.append(torch.from_numpy(self._cams(rec, hw)))
        out = apply_joint_many(self.transform, *tensors)
        sample = {"image": out[0].contiguous(), "mask": out[1].contiguous(), "index": torch.tensor(i, dtype=torch.int64)}
        if self.with_cams:
            sample["cams"] = out[2].contiguous()
        return sample

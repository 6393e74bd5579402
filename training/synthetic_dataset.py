"""Small synthetic patch datasets in the published layouts, for tests, examples and demos.

Patches come from :func:`wsi_seg.synthetic.synthesize_patch` (H&E-like texture, the
same renderer as the demo slide) by default; :func:`shapes_patch` (flat-coloured Voronoi
regions with noise) is a faster stand-in for tests. Image labels are the classes
actually present in each patch's mask, as in LUAD-HistoSeg.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.errors import ConfigError
from wsi_seg.synthetic import synthesize_patch

PatchFn = Callable[..., tuple[np.ndarray, np.ndarray]]
NUM_CLASSES = 4
# stained-looking flat colours of the four classes and of glass
_CLASS_RGB = np.array([(150, 60, 150), (235, 160, 190), (60, 50, 150), (205, 95, 120)], np.float32)
_GLASS_RGB = np.array((242, 240, 245), np.float32)


def shapes_patch(
    rng: np.random.Generator,
    size_px: int = 224,
    mpp: float = 0.5,
    classes_present: list[int] | None = None,
    background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), mask uint8 (H, W): 0 = glass, 1..4 = classes).

    Regions of the chosen classes (1-based) tile the patch as a Voronoi diagram; with
    ``background`` one region is glass. ``mpp`` is accepted for API symmetry.
    """
    classes = list(classes_present or [int(rng.integers(1, NUM_CLASSES + 1))])
    owners = classes + ([0] if background else [])
    n_seeds = len(owners) * 2
    seeds = rng.uniform(0, size_px, size=(n_seeds, 2))
    seed_owner = np.array([owners[i % len(owners)] for i in range(n_seeds)])
    yy, xx = np.mgrid[:size_px, :size_px].astype(np.float32)
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    mask = seed_owner[d.argmin(axis=0)].astype(np.uint8)
    palette = np.vstack([_GLASS_RGB, _CLASS_RGB])
    rgb = palette[mask] + rng.normal(0, 8, size=(size_px, size_px, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _dataset_mask(mask: np.ndarray) -> np.ndarray:
    """Internal (0 = glass, 1..4) → dataset convention (0..3 classes, 4 = background)."""
    out = mask.astype(np.int64) - 1
    out[mask == 0] = NUM_CLASSES
    return out.astype(np.uint8)


def _draw(
    rng: np.random.Generator, patch_fn: PatchFn, size_px: int, mpp: float, classes_per_patch: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(classes_per_patch[0], classes_per_patch[1] + 1))
    classes = sorted(int(c) for c in rng.choice(np.arange(1, NUM_CLASSES + 1), size=k, replace=False))
    background = bool(rng.random() < 0.5)
    return patch_fn(rng, size_px=size_px, mpp=mpp, classes_present=classes, background=background)


def write_dataset(
    root: str | Path,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 4,
    size_px: int = 224,
    format: str = "luad",
    seed: int = 0,
    mpp: float = 1.0,
    patch_fn: PatchFn | None = None,
    val_dir_name: str = "val",
    classes_per_patch: tuple[int, int] = (1, 2),
) -> Path:
    """Write a synthetic dataset of ``format`` (luad | bcss | csv) under ``root``.

    Each patch shows between ``classes_per_patch[0]`` and ``[1]`` tissue classes (drawn
    uniformly) and, half of the time, some glass.
    """
    if format not in ("luad", "bcss", "csv"):
        raise ConfigError(f"unknown synthetic dataset format {format!r}")
    if not 1 <= classes_per_patch[0] <= classes_per_patch[1] <= NUM_CLASSES:
        raise ConfigError(f"classes_per_patch must be within 1..{NUM_CLASSES}, got {classes_per_patch}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    patch_fn = patch_fn or synthesize_patch
    rows: list[list[str]] = []
    for i in range(n_train):
        rgb, mask = _draw(rng, patch_fn, size_px, mpp, classes_per_patch)
        labels = [int((mask == c).any()) for c in range(1, NUM_CLASSES + 1)]
        if format == "csv":
            name = f"patches/train_{i:04d}.png"
            rows.append([name, "train", "", *map(str, labels)])
        elif format == "luad":
            name = f"train/{i:04d}-[{' '.join(map(str, labels))}].png"
        else:
            name = f"train/TCGA-XX-{i:04d}+0[{''.join(map(str, labels))}].png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / name)
    for split, n in (("val", n_val), ("test", n_test)):
        for i in range(n):
            rgb, mask = _draw(rng, patch_fn, size_px, mpp, classes_per_patch)
            if format == "csv":
                img_name, mask_name = f"patches/{split}_{i:04d}.png", f"masks/{split}_{i:04d}.png"
                labels = [int((mask == c).any()) for c in range(1, NUM_CLASSES + 1)]
                rows.append([img_name, split, mask_name, *map(str, labels)])
            else:
                folder = val_dir_name if split == "val" else split
                img_name, mask_name = f"{folder}/img/{i:04d}.png", f"{folder}/mask/{i:04d}.png"
            for name in (img_name, mask_name):
                (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / img_name)
            Image.fromarray(_dataset_mask(mask), mode="L").save(root / mask_name)
    if format == "csv":
        with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "split", "mask", "TE", "NEC", "LYM", "TAS"])
            writer.writerows(rows)
    return root

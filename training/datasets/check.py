"""``wsi-seg check-dataset``: what a dataset folder holds and what is wrong with it.

:func:`check_dataset` reports, for a LUAD-HistoSeg / BCSS-WSSS / csv folder, the patches
per split and class, the co-occurrence of the train labels, patch sizes and modes, and
every problem found (unreadable files, names whose label cannot be parsed, images
without masks, masks that are not single-channel, not the image's size, hold unknown
class indices or carry another palette than the others). Training opens its dataset with
:func:`open_checked_dataset`, which refuses a folder with the same findings.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsi_seg.errors import DatasetError

from wsi_seg_training.datasets.io import MASK_MODES, read_rgb
from wsi_seg_training.datasets.layout import DatasetIndex, open_dataset, problems_error

log = logging.getLogger(__name__)


@dataclass
class DatasetReport:
    """Findings of :func:`check_dataset`.

    ``class_patches[split]``: patches holding each class (train: from the labels;
    val/test: from the masks); ``pixel_share[split]``: share of mask pixels per class,
    background last; ``cooccurrence``: (N, N) train patches labelled with both classes;
    ``classes_per_patch``: train patches by number of labelled classes.
    """

    index: DatasetIndex
    class_patches: dict[str, list[int]] = field(default_factory=dict)
    pixel_share: dict[str, list[float]] = field(default_factory=dict)
    cooccurrence: np.ndarray | None = None
    classes_per_patch: Counter = field(default_factory=Counter)
    decoded: bool = False

    @property
    def problems(self) -> list[str]:
        return self.index.problems

    @property
    def ok(self) -> bool:
        return not self.index.problems

    def to_dict(self) -> dict[str, Any]:
        idx = self.index
        return {
            "root": str(idx.root),
            "format": idx.info.name,
            "class_names": list(idx.class_names),
            "splits": {
                name: {
                    "patches": len(records),
                    "class_patches": dict(zip(idx.class_names, self.class_patches.get(name, []))),
                    "pixel_share": dict(zip([*idx.class_names, "background"], self.pixel_share[name]))
                    if name in self.pixel_share else None,
                    "sizes": dict(idx.sizes.get(name, {})),
                    "modes": dict(idx.modes.get(name, {})),
                }
                for name, records in idx.splits.items()
            },
            "cooccurrence": self.cooccurrence.tolist() if self.cooccurrence is not None else None,
            "classes_per_patch": {str(k): v for k, v in sorted(self.classes_per_patch.items())},
            "images_decoded": self.decoded,
            "problems": list(self.problems),
        }

    def format_text(self, max_problems: int = 50) -> str:
        idx = self.index
        names = list(idx.class_names)
        w = max(6, *(len(n) + 1 for n in names))
        lines = [f"{idx.root}: {idx.info.name} dataset, classes {', '.join(names)}", ""]
        lines.append("split  patches  " + "".join(f"{n:>{w}}" for n in names) + "  sizes / modes")
        for name, records in idx.splits.items():
            counts = self.class_patches.get(name, [0] * len(names))
            sizes = ", ".join(f"{k} ({v})" for k, v in idx.sizes.get(name, Counter()).most_common())
            modes = ", ".join(f"{k} ({v})" for k, v in idx.modes.get(name, Counter()).most_common())
            lines.append(f"{name:<6} {len(records):>7}  " + "".join(f"{c:>{w}}" for c in counts)
                         + f"  {sizes or '-'} / {modes or '-'}")
        shares = [(n, s) for n, s in self.pixel_share.items()]
        if shares:
            lines += ["", "mask pixels per class (%):", "split  " + "".join(f"{n:>{w}}" for n in [*names, "bkg"])]
            lines += [f"{n:<6} " + "".join(f"{100 * v:>{w}.1f}" for v in s) for n, s in shares]
        if self.cooccurrence is not None:
            lines += ["", "train label co-occurrence (patches labelled with both):",
                      " " * w + "".join(f"{n:>{w}}" for n in names)]
            lines += [f"{n:<{w}}" + "".join(f"{int(v):>{w}}" for v in row) for n, row in zip(names, self.cooccurrence)]
            per = ", ".join(f"{k}: {v}" for k, v in sorted(self.classes_per_patch.items()))
            lines.append(f"classes per train patch: {per}")
        lines.append("")
        if self.ok:
            lines.append("no problems found" + ("" if self.decoded else " (headers read; pixels of masks checked)"))
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  … and {len(self.problems) - max_problems} more (--json FILE lists all)")
        return "\n".join(lines)


def _mask_values(path: Path, num_classes: int, problems: list[str], palette: list) -> np.ndarray | None:
    """Pixel counts per value 0..N of a mask (dataset convention: N = background)."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                return None  # reported by the header check
            if im.mode == "P":
                pal = (im.getpalette() or [])[: 3 * (num_classes + 1)]
                if not palette:
                    palette.append((path, pal))
                else:
                    first_path, first = palette[0]
                    n = min(len(pal), len(first))
                    if pal[:n] != first[:n]:
                        problems.append(f"{path}: mask palette differs from {first_path.name}'s in its first "
                                        f"{num_classes + 1} colours; its indices may mean other classes")
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        problems.append(f"{path}: cannot read mask ({exc})")
        return None
    counts = np.bincount(arr.ravel().astype(np.int64), minlength=num_classes + 1)
    if len(counts) > num_classes + 1 and counts[num_classes + 1:].any():
        unknown = np.flatnonzero(counts[num_classes + 1:]) + num_classes + 1
        problems.append(f"{path}: mask holds unknown class indices {', '.join(str(int(v)) for v in unknown[:8])}; "
                        f"expected 0–{num_classes - 1} (tissue classes) and {num_classes} (background)")
    return counts[: num_classes + 1]


def check_dataset(root: str | Path, format: str = "auto", decode: bool = True, progress: bool = False) -> DatasetReport:
    """Check a dataset folder completely; problems are collected, not raised.

    Every image header is read; every mask is decoded (class presence, pixel shares,
    unknown indices, palette); with ``decode`` every image is decoded too (truncated files).
    """
    from tqdm import tqdm

    index = open_dataset(root, format, check_images=True, strict=False)
    n = index.num_classes
    report = DatasetReport(index=index, decoded=decode)
    bad = {p.split(": ", 1)[0] for p in index.problems}
    palette: list = []
    for name, records in index.splits.items():
        present = np.zeros(n, np.int64)
        pixels = np.zeros(n + 1, np.int64)
        labelled = [r for r in records if r.labels is not None]
        for rec in tqdm(records, desc=f"check {name}", unit="patch", disable=not progress, leave=False):
            if decode and str(rec.image) not in bad:
                try:
                    read_rgb(rec.image)
                except DatasetError as exc:
                    index.problems.append(str(exc))
            if rec.mask is not None and str(rec.mask) not in bad:
                counts = _mask_values(rec.mask, n, index.problems, palette)
                if counts is not None:
                    pixels += counts
                    if rec.labels is None:
                        present += counts[:n] > 0
            if rec.labels is not None:
                present += np.asarray(rec.labels, np.int64)
        report.class_patches[name] = present.tolist()
        if pixels.sum():
            report.pixel_share[name] = (pixels / pixels.sum()).tolist()
        if name == "train" and labelled:
            labels = np.asarray([r.labels for r in labelled], np.int64)
            report.cooccurrence = labels.T @ labels
            report.classes_per_patch = Counter(int(k) for k in labels.sum(axis=1))
    return report


def open_checked_dataset(root: str | Path, format: str = "auto") -> DatasetIndex:
    """The dataset, checked as :func:`check_dataset` does (headers and masks; images are
    decoded by the loader); DatasetError naming the first problem when there is any."""
    report = check_dataset(root, format, decode=False)
    if not report.ok:
        raise problems_error(Path(root), report.problems)
    return report.index

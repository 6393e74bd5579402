"""Finding the patches of a dataset folder: LUAD-HistoSeg, BCSS-WSSS or a labels.csv folder.

Published layout of LUAD-HistoSeg and BCSS-WSSS (Han et al. 2021)::

    ROOT/train/<name>-[1 0 0 1].png      LUAD: labels TE NEC LYM TAS, space separated
    ROOT/train/<name>[1101].png          BCSS: labels TUM STR LYM NEC, no spaces
    ROOT/val/img/*.png  ROOT/val/mask/*.png     (some copies: valid/)
    ROOT/test/img/*.png ROOT/test/mask/*.png

(``train/img/`` is accepted too.) A ``csv`` dataset is a folder with ``labels.csv``:
a header ``filename,<class 1>,…,<class N>`` (optional ``split`` = train|val|test and
``mask`` columns), one row per patch, paths relative to the folder, labels 0/1.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from wsi_seg.errors import DatasetError

from wsi_seg_training.datasets.formats import BCSS, FORMATS, LUAD, FormatInfo, csv_info
from wsi_seg_training.datasets.io import IMAGE_MODES, IMAGE_SUFFIXES, MASK_MODES, image_header, not_8_bit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VAL_DIR_NAMES = ("val", "valid", "validation")
CSV_NAME = "labels.csv"
CSV_RESERVED = ("split", "mask")
_LABEL_RE = re.compile(r"\[([^\[\]]*)\]\s*$")


@dataclass(frozen=True)
class PatchRecord:
    """One patch: its image, its multi-hot image label (if known) and its mask (if any)."""

    image: Path
    labels: tuple[int, ...] | None = None
    mask: Path | None = None


@dataclass
class DatasetIndex:
    """The patches of a dataset folder, per split, and what its format implies."""

    root: Path
    info: FormatInfo
    splits: dict[str, list[PatchRecord]] = field(default_factory=dict)
    patch_hw: dict[str, tuple[int, int]] = field(default_factory=dict)
    # what the headers say, per split: Counter of "W×H" sizes and of PIL modes
    sizes: dict[str, Counter] = field(default_factory=dict)
    modes: dict[str, Counter] = field(default_factory=dict)
    # one line per problem found (file: what is wrong); open_dataset raises when any
    problems: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    def split(self, name: str, need_masks: bool = False, need_labels: bool = False) -> list[PatchRecord]:
        """The records of a split, checked for what the caller needs."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        records = self.splits.get(name, [])
        if not records:
            raise DatasetError(f"{self.root}: dataset has no {name} split")
        if need_masks:
            missing = next((r for r in records if r.mask is None), None)
            if missing is not None:
                raise DatasetError(f"{missing.image}: {name} patch has no ground-truth mask")
        if need_labels:
            missing = next((r for r in records if r.labels is None), None)
            if missing is not None:
                raise DatasetError(f"{missing.image}: {name} patch has no image-level label")
        return records

    def has_masks(self, name: str) -> bool:
        records = self.splits.get(name, [])
        return bool(records) and all(r.mask is not None for r in records)


def parse_label(path: Path, num_classes: int, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The multi-hot label in brackets at the end of a file name: ``…-[1 0 0 1].png`` or ``…[1101].png``."""
    m = _LABEL_RE.search(path.stem)
    digits = re.sub(r"\s+", "", m.group(1)) if m else ""
    if not m or len(digits) != num_classes or set(digits) - {"0", "1"}:
        found = f"'[{m.group(1)}]'" if m else "no '[…]' label"
        raise DatasetError(
            f"{path}: cannot parse the image label ({found}); expected {num_classes} digits 0/1 in "
            f"brackets at the end of the name, e.g. '…-[1 0 0 1].png' ({' '.join(class_names)})"
        )
    return tuple(int(c) for c in digits)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _train_folder(root: Path) -> Path | None:
    train = root / "train"
    if not train.is_dir():
        return None
    if not _images_in(train) and (train / "img").is_dir():
        return train / "img"
    return train


def detect_format(root: Path) -> str:
    """``luad``, ``bcss`` or ``csv`` from what the folder holds; DatasetError if none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if (root / CSV_NAME).is_file():
        return "csv"
    train = _train_folder(root)
    if train is not None:
        labelled = [p for p in _images_in(train) if _LABEL_RE.search(p.stem)]
        if labelled:
            return "luad" if any(re.search(r"\s", _LABEL_RE.search(p.stem).group(1)) for p in labelled[:50]) else "bcss"
    raise DatasetError(
        f"{root}: not a recognised dataset folder; expected the LUAD-HistoSeg / BCSS-WSSS layout "
        "(train/*-[1 0 0 1].png, val/img + val/mask, test/img + test/mask) or a folder of patches "
        f"with {CSV_NAME} (filename + one 0/1 column per class); or pass --format"
    )


def _eval_split(root: Path, name: str, info: FormatInfo, problems: list[str]) -> list[PatchRecord]:
    names = (name,) if name == "test" else VAL_DIR_NAMES
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        return []
    img_dir, mask_dir = folder / "img", folder / "mask"
    if not img_dir.is_dir():
        raise DatasetError(f"{folder}: {name} split has no img/ folder (expected {folder.name}/img and {folder.name}/mask)")
    records = []
    images = _images_in(img_dir)
    for image in images:
        mask = mask_dir / (image.stem + ".png")
        if not mask.is_file():
            problems.append(f"{image}: no ground-truth mask {mask}")
            continue
        records.append(PatchRecord(image=image, labels=None, mask=mask))
    if mask_dir.is_dir():
        stems = {p.stem for p in images}
        problems.extend(f"{m}: mask without an image in {img_dir}" for m in _images_in(mask_dir) if m.stem not in stems)
    if not images:
        raise DatasetError(f"{img_dir}: {name} split holds no images")
    return records


def _read_csv(root: Path, problems: list[str]) -> tuple[FormatInfo, dict[str, list[PatchRecord]]]:
    path = root / CSV_NAME
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not rows:
        raise DatasetError(f"{path}: empty file; expected a header 'filename,<class 1>,…'")
    header = [h.strip() for h in rows[0]]
    cols = {h.lower(): i for i, h in enumerate(header)}
    class_cols = [i for i, h in enumerate(header[1:], start=1) if h.lower() not in CSV_RESERVED]
    if not class_cols:
        raise DatasetError(f"{path}: header {','.join(header)} names no class columns after the file name")
    info = csv_info(tuple(header[i] for i in class_cols))
    splits: dict[str, list[PatchRecord]] = {s: [] for s in SPLITS}
    seen: dict[Path, tuple[int, str, tuple[str, ...]]] = {}  # image → (line, split, labels) of its first row
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            problems.append(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            continue
        image = root / row[0].strip()
        split = row[cols["split"]].strip().lower() if "split" in cols else "train"
        values = [row[i].strip() for i in class_cols]
        mask_name = row[cols["mask"]].strip() if "mask" in cols else ""
        mask = root / mask_name if mask_name else None
        first = seen.setdefault(image.resolve(), (line_no, split, tuple(values)))
        if first[0] != line_no:  # a patch listed twice: trained twice, or with two answers
            same = first[1:] == (split, tuple(values))
            problems.append(f"{path}:{line_no}: {row[0].strip()} is listed again (first on line {first[0]})"
                            + ("" if same else f" with other labels or split ({first[1]} {','.join(first[2])} vs "
                                               f"{split} {','.join(values)})"))
            continue
        if split not in SPLITS:
            problems.append(f"{path}:{line_no}: split {split!r}; expected train, val or test")
        elif any(v not in ("0", "1") for v in values):
            problems.append(f"{path}:{line_no}: labels {','.join(values)} for {row[0]}; expected 0 or 1 per class")
        elif not image.is_file():
            problems.append(f"{image}: listed in {path}:{line_no} but not found")
        elif mask is not None and not mask.is_file():
            problems.append(f"{mask}: mask listed in {path}:{line_no} but not found")
        else:
            splits[split].append(PatchRecord(image=image, labels=tuple(int(v) for v in values), mask=mask))
    if not any(splits.values()) and not problems:
        raise DatasetError(f"{path}: lists no patches")
    return info, splits


def _check_split(index: DatasetIndex, name: str, records: list[PatchRecord]) -> None:
    """Header-check every image (and mask) of a split into ``index``: sizes, modes, and
    problems (unreadable files, masks that are not single-channel or not the image's
    size, patches of another size than the split's first)."""
    num_classes = index.num_classes
    sizes, modes = Counter(), Counter()
    first_hw: tuple[int, int] | None = None
    for rec in records:
        try:
            hw, mode = image_header(rec.image)
        except DatasetError as exc:
            index.problems.append(str(exc))
            continue
        sizes[f"{hw[1]}×{hw[0]}"] += 1
        modes[mode] += 1
        if mode not in IMAGE_MODES:
            index.problems.append(not_8_bit(rec.image, mode))
        if first_hw is None:
            first_hw = hw
        elif hw != first_hw:
            index.problems.append(
                f"{rec.image}: {name} patch is {hw[1]}×{hw[0]} px but the others are "
                f"{first_hw[1]}×{first_hw[0]} px; all patches of a split must share one size"
            )
        if rec.mask is not None:
            try:
                mhw, mode = image_header(rec.mask)
            except DatasetError as exc:
                index.problems.append(str(exc))
                continue
            if mode not in MASK_MODES:
                index.problems.append(
                    f"{rec.mask}: mask has mode {mode}; expected a single-channel index PNG "
                    f"(0–{num_classes - 1} tissue classes, {num_classes} = background)"
                )
            elif mhw != hw:
                index.problems.append(
                    f"{rec.mask}: mask is {mhw[1]}×{mhw[0]} px but its image is {hw[1]}×{hw[0]} px"
                )
    index.sizes[name], index.modes[name] = sizes, modes
    if first_hw is not None:
        index.patch_hw[name] = first_hw


def _labelled(paths: list[Path], info: FormatInfo, problems: list[str]) -> list[PatchRecord]:
    records = []
    for p in paths:
        try:
            records.append(PatchRecord(p, parse_label(p, len(info.class_names), info.class_names)))
        except DatasetError as exc:
            problems.append(str(exc))
    return records


def problems_error(root: Path, problems: list[str]) -> DatasetError:
    """One line: the first problem, how many more, and the command that lists them all."""
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return DatasetError(f"{problems[0]}{more}; `wsi-seg check-dataset {root}` lists what is wrong with the dataset")


def open_dataset(root: str | Path, format: str = "auto", check_images: bool = True, strict: bool = True) -> DatasetIndex:
    """Index a dataset folder (``format``: auto | luad | bcss | csv).

    With ``check_images`` every image and mask header is read once, so an unreadable
    file or a mask of the wrong size fails here, naming the file, not mid-training.
    Problems (also unparseable names, images without masks) are collected in
    ``index.problems``; ``strict`` raises one DatasetError naming the first.
    """
    root = Path(root)
    if format == "auto":
        format = detect_format(root)
    elif format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; use auto, {', '.join(FORMATS)}")
    elif not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    problems: list[str] = []
    if format == "csv":
        if not (root / CSV_NAME).is_file():
            raise DatasetError(f"{root}: no {CSV_NAME} (needed by --format csv)")
        info, splits = _read_csv(root, problems)
    else:
        info = LUAD if format == "luad" else BCSS
        train = _train_folder(root)
        if train is None:
            raise DatasetError(f"{root}: no train/ folder (expected the {format.upper()} layout: train/, val/, test/)")
        splits = {
            "train": _labelled(_images_in(train), info, problems),
            "val": _eval_split(root, "val", info, problems),
            "test": _eval_split(root, "test", info, problems),
        }
    index = DatasetIndex(root=root, info=info, splits={k: v for k, v in splits.items() if v}, problems=problems)
    if check_images:
        for name, records in index.splits.items():
            _check_split(index, name, records)
    if strict and index.problems:
        raise problems_error(root, index.problems)
    log.info(
        "%s: %s dataset, %s", root, info.name,
        ", ".join(f"{len(v)} {k}" for k, v in index.splits.items()),
    )
    return index

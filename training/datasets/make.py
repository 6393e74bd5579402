"""``wsi-seg make-dataset``: a weakly supervised patch dataset cut from pixel-annotated images.

This is how LUAD-HistoSeg itself was made (patches cut from annotated slides, each
train patch keeping only the list of classes it holds), so that a user with a few
pixel-annotated regions can measure weak supervision on their own tissue.

Input: ``--images DIR`` (RGB images) and ``--masks DIR`` (single-channel index PNGs of
the same stem: 0 = unlabelled, k = class k of ``--classes``). Per image:

* the mask's pixels become ground truth: class k where the mask says k; the thesis's
  glass seed (§4.3.2: grey > 200, white regions under 200 px dropped — the seeding the
  training of a csv dataset applies, computed on each patch as training does) makes a
  pixel **background** whatever the mask says (glass carries no tissue class, and eq.
  4.9 sets it to background in every prediction); unlabelled tissue (0, not glass) is
  background too, or the class ``--other-class`` when given (e.g. ``stroma`` beside
  ``gland``);
* patches of ``--patch`` px on a grid covering the image (the last row and column
  flush with its edge, as ``wsi-seg export --patches`` cuts), optionally after
  resampling from ``--mpp`` to ``--patch-mpp`` µm/px;
* a patch's image-level label: the classes covering at least ``--min-fraction`` of its
  area (weak labels, as a pathologist ticks them). A patch with no such class is
  skipped. Val/test patches also get their masks, and as labels every class present
  in the mask (as LUAD-HistoSeg's val/test labels follow their masks);
* splits by source image (no image in two splits), seeded, in the stated fractions,
  stratified by each image's largest class (each class with two images or more is in
  train and in test; see :func:`_assign_splits`).

Output: the csv layout (:mod:`wsi_seg_training.datasets.layout`) written through the
same code as ``wsi-seg export --patches`` — ``labels.csv``, ``img/``, ``mask/`` (0..N-1
classes, N = background) — and ``make.json`` (inputs, settings, images per split). The
folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from wsi_seg_training.config import MakeDatasetConfig
from wsi_seg_training.datasets.io import IMAGE_SUFFIXES, MASK_MODES, read_rgb
from wsi_seg_training.datasets.layout import SPLITS

from wsi_seg.errors import DatasetError, OutputError
from wsi_seg.exports.patches import (
    CSV_NAME,
    CsvRow,
    patch_starts,
    to_dataset_mask,
    write_labels_csv,
    written_whole,
)
from wsi_seg.slide.tissue import BackgroundSeedParams

log = logging.getLogger(__name__)

MANIFEST_NAME = "make.json"
UNINFORMATIVE_SHARE = 0.9  # a class in this share of the train labels or more is flagged


@dataclass
class SourceImage:
    """One image/mask pair, its split and what it gave."""

    image: Path
    mask: Path
    pixels: list[int]  # per dataset class (mask classes, then other), glass excluded, whole image
    stratum: int  # index of its largest class (-1: nothing labelled)
    split: str = ""
    patches: int = 0
    skipped: int = 0


@dataclass
class MadeDataset:
    """What :func:`make_dataset` wrote."""

    out: Path
    class_names: tuple[str, ...]
    sources: list[SourceImage] = field(default_factory=list)
    train_label_counts: list[int] = field(default_factory=list)  # train patches labelled with each class

    def uninformative(self, share: float = UNINFORMATIVE_SHARE) -> list[str]:
        """Classes in the label of at least ``share`` of the train patches: a label that is
        (almost) always 1 says nothing about where the class is, so CAMs learnt from it tend
        to paint the class over every patch (docs/method.md, "Real tissue")."""
        train = self.counts()["train"]["patches"]
        return [n for n, c in zip(self.class_names, self.train_label_counts) if train and c >= share * train]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images, patches and skipped patches per split."""
        return {s: {"images": sum(1 for x in self.sources if x.split == s),
                    "patches": sum(x.patches for x in self.sources if x.split == s),
                    "skipped": sum(x.skipped for x in self.sources if x.split == s)} for s in SPLITS}

    def summary(self) -> str:
        lines = [f"{self.out}: {sum(x.patches for x in self.sources)} patches from {len(self.sources)} images, "
                 f"classes {', '.join(self.class_names)}"]
        for split, c in self.counts().items():
            lines.append(f"  {split:<5} {c['images']:>4} images  {c['patches']:>5} patches"
                         f"  ({c['skipped']} without a class ≥ min-fraction skipped)")
        train = self.counts()["train"]["patches"]
        for name in self.uninformative():
            count = self.train_label_counts[self.class_names.index(name)]
            lines.append(f"WARNING: {name} is in the label of {count} of {train} train patches: a label that is "
                         f"almost always 1 says nothing about where {name} is, and CAMs tend to paint it everywhere")
        return "\n".join(lines)


def _find_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) by file stem; DatasetError naming the first image without its mask."""
    for folder, what in ((images, "--images"), (masks, "--masks")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {what} folder not found")
    found = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DatasetError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in found]
    twice = next((s for s in stems if stems.count(s) > 1), None)
    if twice is not None:
        raise DatasetError(f"{images}: two images share the stem {twice!r}; masks are matched by stem")
    mask_files = {p.stem: p for p in masks.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    pairs = []
    for image in found:
        mask = mask_files.get(image.stem)
        if mask is None:
            raise DatasetError(f"{image}: no mask {masks / (image.stem + '.png')}")
        pairs.append((image, mask))
    extra = sorted(set(mask_files) - set(stems))
    if extra:
        log.warning("%s: %d mask(s) without an image (e.g. %s); ignored", masks, len(extra), extra[0])
    return pairs


def _read_index_mask(path: Path, num_mask_classes: int, image: Path, hw: tuple[int, int]) -> np.ndarray:
    """A mask as an (H, W) uint8 array of 0..K; DatasetError naming the file when it is not one."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(f"{path}: mask has mode {im.mode} ({len(im.getbands())} channels); expected a "
                                   f"single-channel index PNG (0 = unlabelled, 1–{num_mask_classes} = --classes)")
            mask = np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read mask ({exc})") from exc
    if mask.shape != hw:
        raise DatasetError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]} px but its image {image.name} is "
                           f"{hw[1]}×{hw[0]} px")
    top = int(mask.max()) if mask.size else 0
    if top > num_mask_classes or int(mask.min()) < 0:
        raise DatasetError(f"{path}: mask holds class index {top} but --classes names {num_mask_classes} "
                           f"class(es) (1–{num_mask_classes}; 0 = unlabelled)")
    return mask.astype(np.uint8)


def _resample(rgb: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear, antialiased when shrinking) and mask (nearest) scaled by ``scale``."""
    if abs(scale - 1.0) < 1e-6:
        return rgb, mask
    h, w = mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return rgb, np.asarray(Image.fromarray(mask, mode="L").resize(size, Image.Resampling.NEAREST))


def _ground_truth(mask: np.ndarray, glass: np.ndarray, num_mask_classes: int, other: bool) -> np.ndarray:
    """Internal-convention labels (0 = background, 1..N): glass → background; unlabelled
    tissue → the other class (N) when there is one, else background."""
    gt = mask.copy()
    if other:
        gt[mask == 0] = num_mask_classes + 1
    gt[glass] = 0
    return gt


def _assign_splits(sources: list[SourceImage], fractions: tuple[float, float, float], seed: int) -> None:
    """Split by image, stratified by each image's largest class: within a class (members in
    seeded order) the first image goes to train, the second to test (when test has a share),
    each next one to the split furthest below its share so far. So every class with two
    images or more is in train and test; a small class may leave val without it."""
    rng = np.random.default_rng(seed)
    for stratum in sorted({s.stratum for s in sources}):
        members = [s for s in sources if s.stratum == stratum]
        assigned = [0, 0, 0]
        for i, k in enumerate(rng.permutation(len(members))):
            if i == 0 or (i == 1 and fractions[2] > 0):
                j = 0 if i == 0 else 2
            else:
                j = int(np.argmax([f * (i + 1) - assigned[j] for j, f in enumerate(fractions)]))
            assigned[j] += 1
            members[int(k)].split = SPLITS[j]


def make_dataset(cfg: MakeDatasetConfig, overwrite: bool = False, progress: bool = False) -> MadeDataset:
    """Cut the dataset ``cfg`` describes into ``cfg.out`` (see the module doc)."""
    from tqdm import tqdm

    cfg.check()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out}: folder exists and is not empty; choose a new one or pass --overwrite")
        if not (out / MANIFEST_NAME).is_file():
            raise OutputError(f"{out}: exists and is not a make-dataset folder (no {MANIFEST_NAME}); not replacing it")
    names = cfg.class_names()
    k = len(names) - (1 if cfg.other_class.strip() else 0)  # classes the masks name
    n = len(names)
    other = n > k
    seeding = BackgroundSeedParams(True, cfg.bkg_gray_threshold, cfg.bkg_min_size_px)
    scale = cfg.mpp / cfg.patch_mpp if cfg.patch_mpp is not None and cfg.mpp is not None else 1.0
    pairs = _find_pairs(Path(cfg.images), Path(cfg.masks))

    def load(image: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(image)
        mask = _read_index_mask(mask_path, k, image, rgb.shape[:2])
        return _resample(rgb, mask, scale)

    # pass 1: check every pair and find each image's largest class (glass excluded)
    sources = []
    for image, mask_path in tqdm(pairs, desc="check", unit="image", disable=not progress, leave=False):
        rgb, mask = load(image, mask_path)
        gt = _ground_truth(mask, seeding.seed(rgb), k, other)
        pixels = np.bincount(gt.ravel(), minlength=n + 1)[1:].tolist()
        sources.append(SourceImage(image, mask_path, pixels, int(np.argmax(pixels)) if any(pixels) else -1))
    _assign_splits(sources, cfg.split_fractions(), cfg.seed)

    # pass 2: cut, label and write into a temporary folder
    rows: list[CsvRow] = []
    p = cfg.patch
    with written_whole(out, "the dataset") as tmp:
        (tmp / "img").mkdir()
        (tmp / "mask").mkdir()
        for src in tqdm(sources, desc="cut", unit="image", disable=not progress, leave=False):
            rgb, mask = load(src.image, src.mask)
            h, w = mask.shape
            if h < p or w < p:
                log.warning("%s: %d×%d px is smaller than one %d-px patch; skipped", src.image, w, h, p)
                continue
            for y in patch_starts(h, p):
                for x in patch_starts(w, p):
                    patch_rgb = np.ascontiguousarray(rgb[y:y + p, x:x + p])
                    gt = _ground_truth(mask[y:y + p, x:x + p], seeding.seed(patch_rgb), k, other)
                    counts = np.bincount(gt.ravel(), minlength=n + 1)[1:]
                    weak = tuple(int(c >= cfg.min_fraction * p * p) for c in counts)
                    if not any(weak):
                        src.skipped += 1
                        continue
                    name = f"{src.image.stem}_y{y}_x{x}.png"
                    Image.fromarray(patch_rgb).save(tmp / "img" / name)
                    if src.split == "train":
                        rows.append(CsvRow(f"img/{name}", weak, "train"))
                    else:
                        Image.fromarray(to_dataset_mask(gt, n), mode="L").save(tmp / "mask" / name)
                        rows.append(CsvRow(f"img/{name}", tuple(int(c > 0) for c in counts), src.split,
                                           f"mask/{name}"))
                    src.patches += 1
        if not rows:
            raise DatasetError(f"{cfg.images}: no {p}-px patch holds a class covering ≥ {cfg.min_fraction:g} of it; "
                               "nothing written (lower --min-fraction or --patch)")
        train_labels = [r.labels for r in rows if r.split == "train"]
        made = MadeDataset(out, names, sources, np.asarray(train_labels, np.int64).sum(axis=0).tolist()
                           if train_labels else [0] * n)
        write_labels_csv(tmp / CSV_NAME, names, rows)
        (tmp / MANIFEST_NAME).write_text(json.dumps({
            "settings": asdict(cfg),
            "class_names": list(names),
            "mpp": cfg.patch_mpp if cfg.patch_mpp is not None else cfg.mpp,
            "splits": made.counts(),
            "train_label_counts": dict(zip(names, made.train_label_counts)),
            "uninformative_classes": made.uninformative(),
            "images": [{"image": str(s.image), "mask": str(s.mask), "split": s.split, "patches": s.patches}
                       for s in sources],
        }, indent=1) + "\n", encoding="utf-8")
    return made


def patch_mpp_of(data: Path) -> float | None:
    """The µm/px a make-dataset folder records (None: not one, or unknown)."""
    path = Path(data) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("mpp")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


__all__ = ["MANIFEST_NAME", "MadeDataset", "MakeDatasetConfig", "make_dataset", "patch_mpp_of"]  # config re-exported

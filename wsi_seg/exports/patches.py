"""A result's labels as training patches: image + index-mask pairs in the CSV dataset layout.

``wsi-seg export RESULT.zarr --patches DIR`` cuts the result into non-overlapping
patches of the model's size at the model's µm/px (the grid the labels were made on),
reads each patch's pixels from the slide the way ``wsi-seg segment`` reads them, and
writes::

    DIR/labels.csv        filename,<class 1>,…,<class N>,split,mask   (one row per patch)
    DIR/img/<name>.png    RGB patch
    DIR/mask/<name>.png   class index: 0..N-1 = the classes, N = background (the
                          LUAD-HistoSeg / BCSS-WSSS convention of dataset masks)
    DIR/export.json       provenance: result, slide and fingerprint, labels, µm/px, patches

The labels are the corrected ones when the result has some (``labels/corrected``), else
the model's mask; ``only_corrected`` keeps the patches holding a pixel the corrections
changed. Patches with less than ``min_tissue`` of labelled (non-background) pixels are
skipped. ``wsi-seg train --stage 2 --init CKPT --data DIR`` fine-tunes on the folder.

The slide must be the one the result was computed from: its fingerprint is checked
(``slide`` gives its new path when it moved). The folder is written under a temporary
name and renamed when complete, so ``DIR`` is never half-written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.errors import ConfigError, OutputError, SlideError
from wsi_seg.result.format import CORRECTED_NAME, LABEL_NAME
from wsi_seg.result.reader import Result
from wsi_seg.slide.slide import Slide

log = logging.getLogger(__name__)

CSV_NAME = "labels.csv"  # as wsi_seg_training.datasets.layout reads it
DEFAULT_MIN_TISSUE = 0.05


@dataclass(frozen=True)
class PatchExport:
    """What an export wrote."""

    out: Path
    patches: int
    labels: str  # mask or corrected
    patch_px: int
    mpp: float
    class_pixels: dict[str, int]


def patch_starts(size: int, patch: int) -> list[int]:
    """Patch origins covering ``size`` with whole patches (the last one flush with the edge)."""
    if size < patch:
        return []
    starts = list(range(0, size - patch + 1, patch))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


@dataclass(frozen=True)
class CsvRow:
    """One patch of a ``labels.csv``: image path (relative to the folder), 0/1 per class,
    split, mask path ("" when the patch has none)."""

    filename: str
    labels: tuple[int, ...]
    split: str = "train"
    mask: str = ""


def write_labels_csv(path: Path, class_names: tuple[str, ...] | list[str], rows: list[CsvRow]) -> None:
    """The ``labels.csv`` that ``wsi_seg_training.datasets`` reads: filename, one column per
    class, split, mask. Shared by ``export --patches`` and ``make-dataset``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", *class_names, "split", "mask"])
        writer.writerows([r.filename, *(str(int(v)) for v in r.labels), r.split, r.mask] for r in rows)


def to_dataset_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Internal labels (0 = background, 1..N) → dataset masks (0..N-1 classes, N = background)."""
    out = labels.astype(np.int16) - 1
    out[labels == 0] = num_classes
    return out.astype(np.uint8)


def check_slide(result: Result, slide: str | Path | None) -> Path:
    """The slide of ``result`` (``slide`` when given), checked against the recorded fingerprint."""
    recorded = result.provenance.slide
    path = Path(slide) if slide is not None else recorded.path
    if path is None or not path.exists():
        raise SlideError(
            f"{path}: the slide of {result.path.name} is not there (moved or deleted); pass --slide NEWPATH"
        )
    if recorded.fingerprint:
        with Slide(path, mpp=recorded.mpp) as opened:
            found = opened.fingerprint()
        if found != recorded.fingerprint:
            hint = "pass --slide with the slide it was computed from" if slide is not None else "pass --slide NEWPATH"
            raise SlideError(
                f"{path}: not the slide {result.path.name} was computed from (fingerprint {found}, "
                f"recorded {recorded.fingerprint}); {hint}"
            )
    return path


def export_patches(
    result_path: str | Path,
    out: str | Path,
    only_corrected: bool = False,
    slide: str | Path | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    overwrite: bool = False,
    origins: Iterable[tuple[int, int]] | None = None,
    model_masks: bool = False,
) -> PatchExport:
    """Write the patches of ``result_path`` to ``out`` (see the module doc).

    ``origins``: only the patches of these level-0 (y, x) corners (``wsi-seg finetune``
    picks them), else the whole grid. ``model_masks``: also write the model's own labels
    of each patch to ``DIR/model_mask/<name>.png`` (dataset convention), so that the
    pixels the corrections changed can be told apart."""
    out = Path(out)
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"--min-tissue must be in [0, 1], got {min_tissue}")
    result = Result.open(result_path)
    labels = result.current_labels
    if only_corrected and labels != CORRECTED_NAME:
        raise ConfigError(
            f"{result.path}: has no corrections (labels/{CORRECTED_NAME}); save some in napari "
            "(wsi-seg view) or export without --only-corrected"
        )
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not (out / "export.json").is_file():
        raise OutputError(f"{out}: exists and is not a patch export of wsi-seg (no export.json); not replacing it")
    slide_path = check_slide(result, slide)
    prov = result.provenance
    patch_px = int(prov.patch_size_px or prov.model.config.get("patch_size_px") or 0)
    if patch_px <= 0:
        raise ConfigError(f"{result.path}: the provenance records no patch size")
    slide_mpp = prov.slide.mpp
    if not slide_mpp:
        raise SlideError(f"{result.path}: the provenance records no µm/px of the slide")
    scale = slide_mpp / result.mpp  # result px per slide level-0 px
    names = result.class_names
    n = len(names)
    mask0, labels0 = result.mask(0, LABEL_NAME), result.mask(0, labels)
    h, w = labels0.shape
    rows: list[CsvRow] = []
    class_pixels = np.zeros(n + 1, np.int64)
    with written_whole(out, "the patches") as tmp:
        (tmp / "img").mkdir()
        (tmp / "mask").mkdir()
        if model_masks:
            (tmp / "model_mask").mkdir()
        grid = ([(y, x) for y in patch_starts(h, patch_px) for x in patch_starts(w, patch_px)]
                if origins is None else sorted(set(origins)))
        with Slide(slide_path, mpp=slide_mpp) as opened:
            for y, x in grid:
                lab = np.asarray(labels0[y : y + patch_px, x : x + patch_px])
                if lab.shape != (patch_px, patch_px) or (lab > 0).mean() < max(min_tissue, 1e-9):
                    continue
                own = np.asarray(mask0[y : y + patch_px, x : x + patch_px]) if labels != LABEL_NAME else lab
                if only_corrected and not np.any(lab != own):
                    continue
                box = (x / scale, y / scale, (x + patch_px) / scale, (y + patch_px) / scale)
                rgb = opened.read_at_mpp(box, (patch_px, patch_px))
                name = f"{result.name}_y{y}_x{x}.png"
                Image.fromarray(rgb).save(tmp / "img" / name)
                Image.fromarray(to_dataset_mask(lab, n), mode="L").save(tmp / "mask" / name)
                if model_masks:
                    Image.fromarray(to_dataset_mask(own, n), mode="L").save(tmp / "model_mask" / name)
                counts = np.bincount(lab.ravel(), minlength=n + 1)[: n + 1]
                class_pixels += counts
                rows.append(CsvRow(f"img/{name}", tuple(int(c > 0) for c in counts[1:]), "train", f"mask/{name}"))
        if not rows:
            what = "changed by the corrections" if only_corrected else f"with ≥ {min_tissue:.0%} labelled tissue"
            raise ConfigError(f"{result.path}: no {patch_px}-px patch {what}; nothing to export")
        write_labels_csv(tmp / CSV_NAME, names, rows)
        (tmp / "export.json").write_text(json.dumps({
            "result": str(result.path.resolve()),
            "labels": labels,
            "only_corrected": only_corrected,
            "slide": {"path": str(slide_path.resolve()), "fingerprint": prov.slide.fingerprint},
            "model": {"path": prov.model.path, "sha256": prov.model.sha256},
            "mpp": result.mpp,
            "patch_size_px": patch_px,
            "patches": len(rows),
            "model_masks": model_masks,
            "class_names": list(names),
            "class_colors": [list(c) for c in result.class_colors],
        }, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %d patches → %s", result.path, len(rows), out)
    return PatchExport(out, len(rows), labels, patch_px, result.mpp,
                       {name: int(class_pixels[i + 1]) for i, name in enumerate(names)})


@contextmanager
def written_whole(out: Path, what: str) -> Iterator[Path]:
    """A fresh temporary folder beside ``out`` to write into; it becomes ``out`` only when
    the block ends without error, and is removed either way. An OSError becomes one line:
    ``out: cannot write <what> (…)``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        replace_dir(tmp, out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write {what} ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, final: Path) -> None:
    """Move the finished folder ``new`` to ``final`` (the old one, if any, removed after)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

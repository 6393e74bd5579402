"""The result format: its names, version and layout, in one place.

A result is an OME-Zarr (NGFF 0.5, zarr v3) folder::

    slide.zarr/                root: per-class activation maps, (c, y, x) uint8 0–255
      0/ 1/ …                  2× pyramid levels
      labels/mask/0/ 1/ …      uint8 class index, 0 = background, 1..N = classes
      labels/corrected/0/ 1/ … the mask with the user's corrections, if any
    attrs["ome"]               multiscales (scale in µm), omero channels, image-label
    attrs["wsi_seg"]           provenance; "complete" is written last

``store`` writes it, ``reader`` reads it, ``corrections`` adds the corrected labels and
``ownership`` decides what may be replaced; all of them take their names from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # provenance["format_version"] of what ``store`` writes
PROVENANCE_KEY = "wsi_seg"  # root attribute holding the provenance
CORRECTIONS_KEY = "wsi_seg_corrections"  # attribute of labels/corrected: what was edited
LABELS_GROUP = "labels"  # NGFF image-label group under the root
LABEL_NAME = "mask"  # the class-index image under labels/
CORRECTED_NAME = "corrected"  # the user's corrections (napari), same pyramid as labels/mask
BACKGROUND = "background"  # the name of class index 0
PARTIAL_SUFFIX = ".partial"  # an unfinished run's folder: <out>.partial
REPLACED_SUFFIX = ".replaced"  # the old result, between the swap and its removal
PROGRESS_FILE = ".wsi_seg_progress"  # finished blocks of a run, one per line


def labels_path(root: str | Path, name: str | None = None) -> Path:
    """The label group of a result (``root/labels``), or one label image in it."""
    base = Path(root) / LABELS_GROUP
    return base / name if name else base


def partial_path(out: Path) -> Path:
    """Where a run writes ``out`` until it is complete."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def replaced_path(out: Path) -> Path:
    """Where the previous result waits while a new one takes its place."""
    return out.with_name(out.name + REPLACED_SUFFIX)


def is_partial(path: str | Path) -> bool:
    """True for an unfinished run's folder, ``<out>.partial``."""
    return Path(path).name.endswith(PARTIAL_SUFFIX)


def result_name(path: str | Path) -> str:
    """A result's folder name without ``.partial`` and ``.zarr``: ``slide.zarr`` → ``slide``."""
    return Path(path).name.removesuffix(PARTIAL_SUFFIX).removesuffix(".zarr")


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The ``wsi_seg`` attributes of a store, or None if ``path`` is not one of ours."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
        prov = attrs.get(PROVENANCE_KEY)
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, JSON but not an object
        return None
    return prov if isinstance(prov, dict) else None


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a wsi-seg result whose run finished."""
    prov = read_provenance(path)
    return bool(prov and prov.get("complete"))


def has_corrections(path: str | Path) -> bool:
    """True when the result at ``path`` holds a corrected label image."""
    return (labels_path(path, CORRECTED_NAME) / "zarr.json").is_file()


def pending_corrections(path: str | Path) -> list[tuple[int, int]]:
    """The level-0 chunks of a corrections save into the result at ``path`` that was
    interrupted (written, but the coarser levels above them may be stale); [] when none."""
    meta = labels_path(path, CORRECTED_NAME) / "zarr.json"
    try:
        state = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {}).get(CORRECTIONS_KEY) or {}
        return [(int(i), int(j)) for i, j in (state.get("pending") or {}).get("chunks") or []]
    except (OSError, ValueError, TypeError, AttributeError):
        return []

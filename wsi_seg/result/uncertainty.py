"""Per-pixel uncertainty of a result, computed from its stored activations (nothing new is stored).

The uncertainty of a pixel is ``1 − margin``, the margin being the gap between its two
largest class probabilities (background included): 0 where the model is sure, 1 where two
classes tie. A stage-2 result stores the softmax probabilities of classes 1..N as uint8
0–255 (``wsi_seg.result.format``); the background's is what they leave, 255 − their sum.
A stage-1 result stores CAMs, not probabilities; their top-two gap is used as it is.

Every pyramid level of the activations gives the uncertainty at that level, so a viewer
reads it lazily (:func:`uncertainty_pyramid`) and ``wsi-seg review`` ranks regions on a
coarse level (:mod:`wsi_seg.reports.review`). Old results read the same: only
activations and labels are needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsi_seg.result.reader import Result

UNCERTAINTY_NAME = "uncertainty"  # the napari layer's name and the review's column prefix


def has_background_channel(result: Result) -> bool:
    """True when the activations are stage-2 probabilities (background = what they leave)."""
    return int(result.provenance.model.config.get("stage", 2)) == 2


def uncertainty_of(activations: np.ndarray, with_background: bool = True) -> np.ndarray:
    """(H, W) float32 ``1 − (p₁ − p₂)`` of (C, H, W) uint8 activations, 0–1."""
    acts = np.asarray(activations, dtype=np.int16)
    if with_background:
        bg = np.clip(255 - acts.sum(axis=0, dtype=np.int32), 0, 255).astype(np.int16)
        acts = np.concatenate([bg[None], acts], axis=0)
    if acts.shape[0] < 2:
        return np.zeros(acts.shape[1:], np.float32)
    top2 = np.partition(acts, acts.shape[0] - 2, axis=0)[-2:]
    margin = (top2[1] - top2[0]).astype(np.float32) / 255.0
    return np.clip(1.0 - margin, 0.0, 1.0)


def uncertainty_at(result: Result, level: int, window: tuple[slice, slice] | None = None) -> np.ndarray:
    """The uncertainty of ``level`` (or of a ``window`` of it), 0 on background pixels."""
    ys, xs = window or (slice(None), slice(None))
    acts = np.asarray(result.activations(level)[:, ys, xs])
    labels = np.asarray(result.mask(level, result.current_labels)[ys, xs])
    return np.where(labels > 0, uncertainty_of(acts, has_background_channel(result)), 0.0).astype(np.float32)


def uncertainty_pyramid(result: Result) -> list[Any]:
    """Lazy (dask) uint8 uncertainty maps, 0–255 (0 on background), one per pyramid level,
    finest first: what napari shows as the uncertainty layer."""
    import dask.array as da

    bg = has_background_channel(result)
    labels_name = result.current_labels
    out = []
    for level in result.levels:
        labels = da.from_zarr(result.mask(level, labels_name))
        acts = da.from_zarr(result.activations(level)).rechunk({0: -1, 1: labels.chunks[0], 2: labels.chunks[1]})

        def block(a: np.ndarray, lab: np.ndarray, _bg: bool = bg) -> np.ndarray:
            return np.where(lab[0] > 0, (uncertainty_of(a, _bg) * 255).round(), 0).astype(np.uint8)

        out.append(da.map_blocks(block, acts, labels[None], drop_axis=0, dtype=np.uint8, chunks=labels.chunks))
    return out

"""Synthetic training patches with known classes (LUAD-HistoSeg-like), from the slide renderer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsi_seg.synthetic.tissue import CLASS_NAMES, GLASS, NoiseField, TissueStyle, synthesize_region

MIN_CLASS_FRACTION = 0.04  # each requested class covers at least this share of the tissue pixels


def _patch_label(
    rng: np.random.Generator, size_px: int, mpp: float, classes: Sequence[int], background: bool
) -> np.ndarray:
    key = int(rng.integers(0, 2**62))
    extent_um = size_px * mpp
    scale_um = extent_um * float(rng.uniform(0.35, 0.8))
    origin = rng.uniform(0.0, 1e5, 2)
    ys = origin[0] + (np.arange(size_px) + 0.5) * mpp
    xs = origin[1] + (np.arange(size_px) + 0.5) * mpp

    tissue = np.ones((size_px, size_px), bool)
    if background:
        g = NoiseField(key, 1, scale_um * 1.3).grid(ys, xs)
        glass_fraction = float(rng.uniform(0.1, 0.45))
        tissue = g <= np.quantile(g, 1.0 - glass_fraction)

    fields = np.stack([NoiseField(key, 100 + c, scale_um).grid(ys, xs) for c in classes])
    bias = rng.uniform(-0.2, 0.2, len(classes)).astype(np.float32)
    n_tissue = int(tissue.sum())
    need = max(1, int(np.ceil(MIN_CLASS_FRACTION * n_tissue)))
    for _ in range(40):
        winner = np.argmax(fields + bias[:, None, None], axis=0)
        counts = np.bincount(winner[tissue], minlength=len(classes))
        short = counts < need
        if not short.any():
            break
        bias[short] += 0.15
    else:  # give each missing class the pixels where its field leads the most
        for i in np.flatnonzero(np.bincount(winner[tissue], minlength=len(classes)) < need):
            lead = fields[i] - np.delete(fields, i, axis=0).max(axis=0)
            lead[~tissue] = -np.inf
            top = np.argpartition(lead.ravel(), -need)[-need:]
            winner.ravel()[top] = i
    label = np.asarray(classes, np.uint8)[winner]
    label[~tissue] = GLASS
    return label


def synthesize_patch(
    rng: np.random.Generator,
    size_px: int = 224,
    mpp: float = 0.5,
    classes_present: Sequence[int] = (1,),
    background: bool = False,
    style: TissueStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A square H&E-like patch containing exactly ``classes_present`` (indices 1..4).

    Returns (RGB (size_px, size_px, 3) uint8, class mask (size_px, size_px) uint8, 0 =
    glass). Each requested class covers ≥ 4 % of the tissue in irregular regions; with
    ``background`` 10–45 % of the patch is glass. Stain and texture style are drawn from
    ``rng`` unless ``style`` is given.
    """
    classes = sorted({int(c) for c in classes_present})
    if not classes:
        raise ValueError("classes_present must name at least one class")
    if classes[0] < 1 or classes[-1] > len(CLASS_NAMES):
        raise ValueError(f"class indices must be in 1..{len(CLASS_NAMES)}, got {classes}")
    if size_px < 8:
        raise ValueError(f"size_px must be at least 8, got {size_px}")
    label = _patch_label(rng, int(size_px), float(mpp), classes, bool(background))
    rgb = synthesize_region(label, rng, mpp, style=style)
    return rgb, label

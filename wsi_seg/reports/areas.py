"""Per-class areas of a result, counted on a coarse level of its mask pyramid.

Areas are counted on the finest level whose longer side is at most ``max_side_px``
(strided further if even the coarsest level is larger, e.g. an unfinished run with
level 0 only), then scaled to level-0 µm²: cost and memory stay bounded on any slide.
Nothing is re-segmented. Used by ``wsi-seg report``, the cohort summary and napari.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi_seg.result.reader import finest_level_within

DEFAULT_MAX_SIDE_PX = 2048
UM2_PER_MM2 = 1e6


@dataclass(frozen=True)
class ClassArea:
    """One row of the legend."""

    label: int  # value in the mask, 1..N
    name: str
    color: tuple[int, int, int]
    area_um2: float
    tissue_fraction: float  # of all non-background mask pixels, 0–1

    @property
    def area_mm2(self) -> float:
        return self.area_um2 / UM2_PER_MM2

    @property
    def hex_color(self) -> str:
        return hex_color(self.color)


def hex_color(rgb: Sequence[int]) -> str:
    """``(255, 128, 0)`` → ``"#ff8000"``."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb[:3])


def class_areas(
    levels: Sequence[Any],
    mpp: float,
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    max_side_px: int = DEFAULT_MAX_SIDE_PX,
) -> list[ClassArea]:
    """Per-class area of a class-index mask pyramid.

    ``levels``: (H, W) uint8 arrays (numpy, zarr or dask), finest first; 0 = background,
    i = class i. ``mpp``: µm/px of ``levels[0]``.
    """
    if not levels:
        raise ValueError("class_areas needs at least one mask level")
    h0, w0 = levels[0].shape[-2:]
    level = levels[finest_level_within((lv.shape for lv in levels), max_side_px)]
    stride = max(1, math.ceil(max(level.shape[-2:]) / max_side_px))  # > 1 when even the coarsest is larger
    mask = np.asarray(level[::stride, ::stride])
    h, w = mask.shape
    px_area_um2 = mpp * mpp * (h0 / h) * (w0 / w)
    counts = np.bincount(mask.ravel(), minlength=len(class_names) + 1)
    tissue = int(counts[1 : len(class_names) + 1].sum())
    return [
        ClassArea(
            label=i + 1, name=str(name), color=(int(c[0]), int(c[1]), int(c[2])),
            area_um2=float(counts[i + 1]) * px_area_um2,
            tissue_fraction=float(counts[i + 1]) / tissue if tissue else 0.0,
        )
        for i, (name, c) in enumerate(zip(class_names, class_colors, strict=True))
    ]


def tissue_area_um2(rows: Sequence[ClassArea]) -> float:
    """Area of all classes together (every non-background pixel)."""
    return float(sum(r.area_um2 for r in rows))


def format_area(area_um2: float) -> str:
    """µm², with mm² (1 mm² = 10⁶ µm²) added from 0.01 mm² up."""
    if area_um2 < 1e4:
        return f"{area_um2:,.0f} µm²"
    return f"{area_um2:,.0f} µm² ({area_um2 / 1e6:,.2f} mm²)"

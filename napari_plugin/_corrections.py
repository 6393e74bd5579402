"""Correcting a result in napari, without Qt: a paintable crop of its labels, saved back.

napari paints only single-scale Labels layers, and a result's labels are a lazy
multiscale pyramid. So the user asks for an *edit region*: the part of the labels in
view is read (at the finest level that keeps it within ``EDIT_MAX_PX`` per side) into a
plain in-memory Labels layer placed exactly over the result; napari's own brush, fill
and eraser work on it; "Save corrections" hands the crop as loaded and as painted to
:func:`wsi_seg.result.corrections.save_corrections`, which writes only the changed pixels to
``labels/corrected`` (``labels/mask`` stays untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_seg.errors import ConfigError
from wsi_seg.result.corrections import CorrectionSave, save_corrections
from wsi_seg.result.format import BACKGROUND
from wsi_seg.result.reader import Result

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

EDIT_KEY = "wsi_seg_edit"  # layer.metadata[EDIT_KEY]: an EditRegion
EDIT_MAX_PX = 2048  # longer side of an edit layer; coarser levels for larger views


@dataclass
class EditRegion:
    """A crop of a result's labels, as loaded, for one paintable layer."""

    path: str  # the result
    level: int  # pyramid level of the crop
    origin_yx: tuple[int, int]  # top-left corner, level-0 px of the result
    before: np.ndarray  # (h, w) uint8, as loaded (or as last saved)

    def save(self, after: np.ndarray, author: str | None = None) -> CorrectionSave:
        """Write what changed since loading (or the last save) to ``labels/corrected``."""
        record = save_corrections(self.path, self.origin_yx, self.before, after, level=self.level, author=author)
        self.before = np.array(after, copy=True)
        return record


def level0_box(world_box: tuple[float, float, float, float], scale: tuple[float, float],
               translate: tuple[float, float], shape_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """World box (y0, x0, y1, x1 in µm) → level-0 pixel box of a layer with this
    ``scale``/``translate`` (napari: pixel i's centre at translate + i·scale), clipped to
    ``shape_hw``; None when they do not overlap."""
    (wy0, wx0, wy1, wx1), (sy, sx), (ty, tx) = world_box, scale, translate
    y0 = max(0, math.floor((wy0 - ty) / sy + 0.5))
    x0 = max(0, math.floor((wx0 - tx) / sx + 0.5))
    y1 = min(shape_hw[0], math.ceil((wy1 - ty) / sy + 0.5))
    x1 = min(shape_hw[1], math.ceil((wx1 - tx) / sx + 0.5))
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def edit_level(result: Result, box: tuple[int, int, int, int], max_px: int = EDIT_MAX_PX) -> int:
    """The finest level at which ``box`` (level-0 px) fits in ``max_px`` per side."""
    side = max(box[2] - box[0], box[3] - box[1])
    for level in result.levels:
        if math.ceil(side / 2**level) <= max_px:
            return level
    return result.levels[-1]


def load_edit_region(result: Result, box: tuple[int, int, int, int], max_px: int = EDIT_MAX_PX) -> EditRegion:
    """The labels of ``box`` (level-0 px), from the corrected labels when there are some."""
    level = edit_level(result, box, max_px)
    f = 2**level
    y0, x0 = box[0] // f, box[1] // f
    h, w = result.level_shape(level)
    y1, x1 = min(h, math.ceil(box[2] / f)), min(w, math.ceil(box[3] / f))
    if y1 <= y0 or x1 <= x0:
        raise ConfigError(f"{result.path}: the region in view holds no pixels of the result at level {level}")
    crop = np.array(result.mask(level, result.current_labels)[y0:y1, x0:x1], dtype=np.uint8)
    return EditRegion(str(result.path), level, (y0 * f, x0 * f), crop)


def edit_layer_kwargs(result: Result, region: EditRegion, mask_scale: tuple[float, float],
                      mask_translate: tuple[float, float], colormap: dict) -> dict[str, Any]:
    """napari Labels kwargs that put ``region`` exactly over the result's mask layer.

    A level-L pixel k covers level-0 pixels k·f … k·f + f − 1 (f = 2**L): its centre
    is level-0 index k·f + (f − 1)/2.
    """
    f = 2**region.level
    (sy, sx), (ty, tx) = mask_scale, mask_translate
    oy, ox = region.origin_yx
    return {
        "name": f"{result.name}: corrections",
        "scale": (sy * f, sx * f),
        "translate": (ty + (oy + (f - 1) / 2) * sy, tx + (ox + (f - 1) / 2) * sx),
        "colormap": colormap,
        "features": {"index": list(range(len(result.class_names) + 1)), "class": [BACKGROUND, *result.class_names]},
        "opacity": 0.7,
        "metadata": {EDIT_KEY: region},
    }


def visible_world_box(viewer: napari.viewer.Viewer) -> tuple[float, float, float, float]:
    """(y0, x0, y1, x1) in world units (µm) of what the canvas shows (2-D view)."""
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    canvas = getattr(viewer, "canvas", None)
    size = np.asarray(canvas.size if canvas is not None else viewer._canvas_size, float)
    cy, cx = camera.center[-2:]
    hy, hx = size / camera.zoom / 2
    return cy - hy, cx - hx, cy + hy, cx + hx


def edit_layers(viewer: napari.viewer.Viewer, path: str | None = None) -> list[Labels]:
    """The viewer's edit layers (of the result at ``path``, or all)."""
    return [layer for layer in viewer.layers
            if isinstance(layer.metadata.get(EDIT_KEY), EditRegion)
            and (path is None or layer.metadata[EDIT_KEY].path == path)]

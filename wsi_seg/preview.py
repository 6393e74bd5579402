"""A PNG preview of a result: the class mask blended over the slide at a coarse level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.result import Result
from wsi_seg.slide import Slide


def render_overlay(result: str | Path, slide_path: str | Path, max_side_px: int = 1600, alpha: float = 0.45, slide_mpp: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the slide with class colours blended where the mask is not background."""
    res = Result.open(result)
    level = res.pick_level(max_side_px)
    mask = res.mask(level)[:]
    out_mpp = res.level_mpp(level)
    with Slide(slide_path, mpp=slide_mpp) as slide:
        h, w = mask.shape
        thumb, _ = slide.thumbnail(out_mpp)  # read in strips: bounded memory on any slide
        rgb = np.asarray(Image.fromarray(thumb).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    palette = np.zeros((256, 3), np.float32)
    for i, color in enumerate(res.class_colors):
        palette[i + 1] = color
    colored = palette[mask]
    blend = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colored, rgb)
    return blend.clip(0, 255).astype(np.uint8)


def save_overlay(result: str | Path, slide_path: str | Path, png: str | Path, **kwargs: object) -> Path:
    Image.fromarray(render_overlay(result, slide_path, **kwargs)).save(png)
    return Path(png)

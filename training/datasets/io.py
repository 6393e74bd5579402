"""Reading patches and masks, every failure a DatasetError that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsi_seg.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_MODES = ("L", "P", "I", "I;16", "1")
# PIL modes of 8-bit images; 16-bit and float ones (I;16, I, F) would be clipped to white by a
# conversion to RGB, so they are refused rather than trained on
IMAGE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "La")


def not_8_bit(path: Path, mode: str) -> str:
    """The problem line of an image that is not 8-bit."""
    return (f"{path}: {mode} image (16-bit or floating point); patches must be 8-bit RGB or grey, "
            "convert it first (e.g. scale 16-bit values by 1/257)")


def image_header(path: Path) -> tuple[tuple[int, int], str]:
    """((height, width), PIL mode) of an image, reading only its header."""
    try:
        with Image.open(path) as im:
            return (im.height, im.width), im.mode
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image (alpha dropped, grey expanded)."""
    try:
        with Image.open(path) as im:
            if im.mode not in IMAGE_MODES:
                raise DatasetError(not_8_bit(path, im.mode))
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


def to_internal(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Dataset convention (0..N-1 classes, N = background) → internal (0 = background, 1..N)."""
    out = mask.astype(np.uint8) + 1
    out[mask == num_classes] = 0
    return out


def read_mask(path: Path, num_classes: int, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth index PNG as an (H, W) uint8 label map, **internal convention**.

    On disk ``0 .. N-1`` are tissue classes and ``N`` is background (LUAD-HistoSeg,
    BCSS-WSSS); the result has ``0`` = background and ``1 .. N`` = classes.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(
                    f"{path}: mask has mode {im.mode} ({len(im.getbands())} channels); expected a "
                    f"single-channel index PNG (0–{num_classes - 1} tissue classes, {num_classes} = background)"
                )
            mask = np.asarray(im)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: mask file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read mask ({exc})") from exc
    if expected_hw is not None and mask.shape != tuple(expected_hw):
        raise DatasetError(
            f"{path}: mask is {mask.shape[1]}×{mask.shape[0]} px but its image is "
            f"{expected_hw[1]}×{expected_hw[0]} px"
        )
    found = np.unique(mask)
    unknown = found[(found < 0) | (found > num_classes)]
    if unknown.size:
        shown = ", ".join(str(int(v)) for v in unknown[:8])
        raise DatasetError(
            f"{path}: mask holds unknown class indices {shown}; expected 0–{num_classes - 1} "
            f"(tissue classes) and {num_classes} (background)"
        )
    return to_internal(mask.astype(np.int64), num_classes)

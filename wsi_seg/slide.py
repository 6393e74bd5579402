"""Slide reading with OpenSlide: pyramid levels, µm/px, and reads at a target µm/px.

Regions are read from the pyramid level nearest to (and not coarser than) the wanted
resolution, then resized; never from level 0 when a closer level exists.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.errors import MissingMppError, SlideError

log = logging.getLogger(__name__)

# a level is "fine enough" if its µm/px is at most this much coarser than wanted
LEVEL_TOLERANCE = 0.01
_STRIP_PIXELS = 16_000_000  # thumbnail strips read at most this many level pixels


@dataclass(frozen=True)
class SlideInfo:
    """What ``wsi-seg info`` prints, and what outputs record as provenance."""

    path: str
    vendor: str
    dimensions: tuple[int, int]  # (width, height) at level 0, px
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # level-0 µm/px, None when unknown
    mpp_source: str  # "metadata", "user" or "none"
    objective_power: float | None
    fingerprint: str


def slide_fingerprint(path: Path, sample_bytes: int = 1 << 20) -> str:
    """Cheap content hash: file size + first and last MiB (slides are GB)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample_bytes))
        if size > sample_bytes:
            f.seek(max(size - sample_bytes, sample_bytes))
            h.update(f.read(sample_bytes))
    return h.hexdigest()[:32]


class Slide:
    """An open whole-slide image. Thread-safe reads; open one per process."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"{self.path}: slide file not found")
        if self.path.is_dir() and self.path.suffix.lower() != ".mrxs":
            raise SlideError(f"{self.path}: is a directory, not a slide file")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"{self.path}: unsupported or unreadable slide format") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{self.path}: cannot open slide ({exc})") from exc
        props = self._osr.properties
        if mpp is not None:
            if not mpp > 0:
                raise SlideError(f"{self.path}: --mpp must be positive, got {mpp}")
            self._mpp, self._mpp_source = float(mpp), "user"
        else:
            self._mpp, self._mpp_source = self._read_mpp(props), "metadata"
            if self._mpp is None:
                self._mpp_source = "none"
        self.dimensions: tuple[int, int] = tuple(self._osr.dimensions)  # type: ignore[assignment]
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.vendor = props.get("openslide.vendor", "unknown")

    @staticmethod
    def _read_mpp(props: object) -> float | None:
        try:
            x = float(props["openslide.mpp-x"])  # type: ignore[index]
            y = float(props.get("openslide.mpp-y", x))  # type: ignore[attr-defined]
        except (KeyError, ValueError):
            return None
        if not (x > 0 and y > 0):
            return None
        if abs(x - y) / x > 0.05:
            log.warning("non-square pixels (mpp-x %.4f, mpp-y %.4f); using mpp-x", x, y)
        return x

    @property
    def properties(self) -> Mapping[str, str]:
        """OpenSlide's property map (vendor keys, ``openslide.level[N].tile-width`` …)."""
        return self._osr.properties

    @property
    def mpp(self) -> float:
        """Level-0 µm/px; raises MissingMppError when the slide does not say."""
        if self._mpp is None:
            raise MissingMppError(
                f"{self.path}: slide has no µm/px metadata (openslide.mpp-x); "
                "pass --mpp with the scan resolution, e.g. --mpp 0.25 for 40x"
            )
        return self._mpp

    def info(self) -> SlideInfo:
        props = self._osr.properties
        try:
            power = float(props.get("openslide.objective-power", "nan"))
        except ValueError:
            power = float("nan")
        return SlideInfo(
            path=str(self.path),
            vendor=self.vendor,
            dimensions=self.dimensions,
            level_dimensions=self.level_dimensions,
            level_downsamples=self.level_downsamples,
            mpp=self._mpp,
            mpp_source=self._mpp_source,
            objective_power=None if math.isnan(power) else power,
            fingerprint=slide_fingerprint(self.path),
        )

    def level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose µm/px is not coarser than ``target_mpp``."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if self.mpp * ds <= target_mpp * (1 + LEVEL_TOLERANCE):
                best = level
        return best

    def read_rgb(self, level0_xy: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a region; outside the slide (alpha 0) reads as white glass."""
        try:
            rgba = self._osr.read_region((int(level0_xy[0]), int(level0_xy[1])), level, size_px)
        except Exception as exc:  # openslide raises OpenSlideError, ValueError, OSError
            raise SlideError(
                f"{self.path}: cannot decode region at level {level}, xy {level0_xy} ({exc})"
            ) from exc
        return _rgba_on_white(rgba)

    def read_at_mpp(self, level0_box: tuple[float, float, float, float], out_size_px: tuple[int, int]) -> np.ndarray:
        """Read the level-0 box (x0, y0, x1, y1) and resize it to ``out_size_px`` (W, H).

        Reads from the pyramid level closest to the output resolution.
        """
        x0, y0, x1, y1 = level0_box
        out_w, out_h = out_size_px
        target_mpp = self.mpp * (x1 - x0) / out_w
        level = self.level_for_mpp(target_mpp)
        ds = self.level_downsamples[level]
        read_w = max(1, math.ceil((x1 - x0) / ds))
        read_h = max(1, math.ceil((y1 - y0) / ds))
        rgb = self.read_rgb((math.floor(x0), math.floor(y0)), level, (read_w, read_h))
        if (read_w, read_h) == (out_w, out_h):
            return rgb
        img = Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BILINEAR)
        return np.asarray(img)

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, float]:
        """An RGB thumbnail at about ``mpp`` µm/px, read in strips to bound memory.

        Returns the image and its exact µm/px (along x).
        """
        w0, h0 = self.dimensions
        scale = self.mpp / mpp
        out_w, out_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        level = self.level_for_mpp(mpp)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        out = np.empty((out_h, out_w, 3), np.uint8)
        rows_per_strip = max(1, int(_STRIP_PIXELS / lw * out_h / lh))
        for oy in range(0, out_h, rows_per_strip):
            oy1 = min(out_h, oy + rows_per_strip)
            ly0, ly1 = math.floor(oy * lh / out_h), min(lh, math.ceil(oy1 * lh / out_h))
            strip = self.read_rgb((0, int(ly0 * ds)), level, (lw, max(1, ly1 - ly0)))
            img = Image.fromarray(strip).resize((out_w, oy1 - oy), Image.Resampling.BOX)
            out[oy:oy1] = np.asarray(img)
        return out, self.mpp * w0 / out_w

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rgba_on_white(rgba: Image.Image) -> np.ndarray:
    arr = np.asarray(rgba)
    rgb = arr[..., :3].copy()
    rgb[arr[..., 3] == 0] = 255
    return rgb


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide; ``mpp`` overrides (or supplies missing) level-0 µm/px."""
    return Slide(path, mpp=mpp)

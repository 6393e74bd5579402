"""Slide reading with OpenSlide: pyramid levels, µm/px, and reads at a target µm/px.

DICOM whole-slide images (a folder of instances or one ``.dcm`` file) open through
``wsi_seg.slide.dicom``: with OpenSlide where it reads them, else with wsidicom behind the
same calls; ``Slide.reader`` says which.

Regions are read from the pyramid level nearest to (and not coarser than) the wanted
resolution, then resized; never from level 0 when a closer level exists. Plain images
(PNG, JPEG, stripped TIFF) open as single-level slides through OpenSlide's ``ImageSlide``,
the same reader contract; they carry no µm/px, so they need ``--mpp``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.errors import MissingMppError, SlideError
from wsi_seg.slide.dicom import is_dicom_slide, open_dicom
from wsi_seg.slide.fingerprint import slide_fingerprint

log = logging.getLogger(__name__)

# a level is "fine enough" if its µm/px is at most this much coarser than wanted
LEVEL_TOLERANCE = 0.01
_STRIP_PIXELS = 16_000_000  # thumbnail strips read at most this many level pixels
MAX_THUMBNAIL_STRIPS = 128  # a thumbnail reads at most 128 × 16 Mpx (2 Gpx) of its level
MAX_THUMBNAIL_PX = 32_000_000  # thumbnails coarser than asked rather than larger than this
# µm/px a slide's metadata may plausibly give: 0.05 (beyond any objective) to 50 (below
# any slide scan; a 72-dpi TIFF resolution tag reads as 352.8); --mpp overrides
PLAUSIBLE_MPP = (0.05, 50.0)
_CONVERT_HINT = "convert it to a pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`"


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _is_tiff(path: Path) -> bool:
    """True when ``path`` starts as a TIFF does (SVS, NDPI, SCN, generic tiled TIFF)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


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
    reader: str = "openslide"  # the library that opened it: "openslide" or "wsidicom"


PLAIN_IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _tiff_cut_short(path: Path) -> str | None:
    """Why the TIFF at ``path`` is damaged or cut short (its directories unreadable, or its
    image data reaching past the end of the file), or None when every page is whole."""
    import tifffile

    size = path.stat().st_size
    quiet = logging.getLogger("tifffile")  # it logs the broken offsets it meets; we say it once
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        with tifffile.TiffFile(path) as tif:
            end = max((int(o) + int(n) for page in tif.pages
                       for o, n in zip(page.dataoffsets, page.databytecounts) if n), default=0)
    except Exception as exc:  # tifffile's errors on a broken IFD chain
        return f"its image directories cannot be read ({exc})"
    finally:
        quiet.setLevel(level)
    if end > size:
        return f"its image data runs to byte {end:,}, past the end of the file ({size:,} bytes)"
    return None


def _open_plain_image(path: Path) -> tuple[object, str] | None:
    """(``openslide.ImageSlide``, format) of a plain PNG/JPEG/TIFF image, or None if it is not one."""
    import openslide

    if path.suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
        return None
    try:
        with Image.open(path) as img:
            fmt, size = img.format, img.size
    except Image.DecompressionBombError as exc:
        raise SlideError(f"{path}: a plain image too large to read whole ({exc}); {_CONVERT_HINT}") from exc
    except (OSError, ValueError, SyntaxError):
        return None
    if fmt not in PLAIN_IMAGE_SUFFIXES.values():
        return None
    try:
        slide = openslide.ImageSlide(str(path))
    except Exception as exc:  # PIL's own error types
        raise SlideError(f"{path}: cannot read this {fmt} image ({exc})") from exc
    log.debug("%s: a plain %s image of %d × %d px, read as one level", path, fmt, *size)
    return slide, fmt


class Slide:
    """An open whole-slide image. Thread-safe reads; open one per process."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"{self.path}: slide file not found")
        dicom = is_dicom_slide(self.path)
        if self.path.is_dir() and self.path.suffix.lower() != ".mrxs" and not dicom:
            raise SlideError(f"{self.path}: is a directory, not a slide file (nor a folder of DICOM files)")
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise SlideError(f"{self.path}: --mpp must be a positive number of µm per pixel, got {mpp}")
        if self.path.suffix.lower() == ".mrxs" and not self.path.with_suffix("").is_dir():
            raise SlideError(
                f"{self.path}: a MIRAX slide needs its companion folder {self.path.with_suffix('').name}/ "
                "(Slidedat.ini and the Data*.dat files) next to the .mrxs file; copy that folder too"
            )
        self.plain_image: str | None = None  # the image format (PNG, JPEG, TIFF) of a plain image
        self.reader = "openslide"  # the library that reads it: "openslide" or "wsidicom"
        self.reader_note = ""  # why not OpenSlide, when not
        self._files: list[Path] | None = None  # a DICOM slide's files (for the fingerprint)
        try:
            if dicom:
                opened = open_dicom(self.path)
                self._osr, self.reader, self._files, self.reader_note = (
                    opened.handle, opened.reader, opened.files, opened.note)
            else:
                self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            damage = _tiff_cut_short(self.path) if _is_tiff(self.path) else None
            if damage is not None:  # a slide OpenSlide no longer recognises: cut short, most often
                raise SlideError(f"{self.path}: damaged or cut-short TIFF slide: {damage}; copy the slide again") from exc
            plain = _open_plain_image(self.path)
            if plain is None:
                if _is_tiff(self.path):  # a TIFF (SVS, NDPI, …) OpenSlide cannot parse: cut short, most often
                    raise SlideError(f"{self.path}: damaged or cut-short TIFF slide ({self.path.stat().st_size} bytes; "
                                     "its image directories cannot be read); copy the slide again") from exc
                raise SlideError(f"{self.path}: unsupported or unreadable slide format") from exc
            self._osr, self.plain_image = plain
        except SlideError:  # said already, naming the file (a DICOM slide's problems)
            raise
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{self.path}: cannot open slide ({exc})") from exc
        props = self._osr.properties
        if mpp is not None:
            self._mpp, self._mpp_source = float(mpp), "user"
        else:
            self._mpp, self._mpp_source = self._read_mpp(props), "metadata"
            if self._mpp is None:
                self._mpp_source = "none"
        self.dimensions: tuple[int, int] = tuple(self._osr.dimensions)  # type: ignore[assignment]
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.vendor = f"plain {self.plain_image} image" if self.plain_image else props.get("openslide.vendor", "unknown")
        self._fingerprint: str | None = None

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
    def mpp_problem(self) -> str | None:
        """Why the slide's own µm/px cannot be used (missing or implausible), or None."""
        if self._mpp_source == "user":
            return None
        if self.plain_image:
            return (
                f"{self.path}: a plain {self.plain_image} image, not a whole-slide image, and it carries no µm/px; "
                "pass --mpp with its resolution (e.g. --mpp 0.5 for a 20x scan) to segment it as a "
                "single-level slide, or convert it to a pyramidal TIFF that records it, e.g. "
                f"`vips tiffsave {self.path.name} OUT.tif --tile --pyramid --xres 2000 --yres 2000` (px/mm) for 0.5 µm/px"
            )
        if self._mpp is None:
            return (
                f"{self.path}: slide has no µm/px metadata (openslide.mpp-x); "
                "pass --mpp with the scan resolution, e.g. --mpp 0.25 for 40x"
            )
        lo, hi = PLAUSIBLE_MPP
        if not lo <= self._mpp <= hi:
            return (
                f"{self.path}: its metadata says {self._mpp:g} µm/px, outside the {lo:g}–{hi:g} µm/px of slide "
                "scans (a 72-dpi TIFF resolution tag reads as 352.8); pass --mpp with the scan resolution, "
                "e.g. --mpp 0.25 for 40x"
            )
        return None

    @property
    def mpp(self) -> float:
        """Level-0 µm/px; raises MissingMppError when the slide does not say, or says
        something implausible (see ``PLAUSIBLE_MPP``), and ``--mpp`` was not given."""
        problem = self.mpp_problem
        if problem is not None:
            raise MissingMppError(problem)
        return self._mpp  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """The slide's content fingerprint (``wsi_seg.slide.fingerprint``), computed once."""
        if self._fingerprint is None:
            self._fingerprint = slide_fingerprint(self.path, self._osr.properties, self._files)
        return self._fingerprint

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
            fingerprint=self.fingerprint(),
            reader=self.reader,
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

        Read from the coarsest level that suffices; coarser than ``mpp`` if it would
        exceed ``MAX_THUMBNAIL_PX``. A slide without a level coarse enough to read in
        ``MAX_THUMBNAIL_STRIPS`` strips is refused (SlideError) rather than read for hours.
        Returns the image and its exact µm/px (along x).
        """
        w0, h0 = self.dimensions
        mpp = max(mpp, self.mpp * math.sqrt(w0 * h0 / MAX_THUMBNAIL_PX))
        scale = self.mpp / mpp
        out_w, out_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        level = self.level_for_mpp(mpp)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        rows_per_strip = max(1, int(_STRIP_PIXELS / lw * out_h / lh))
        if lw * lh > MAX_THUMBNAIL_STRIPS * _STRIP_PIXELS:
            raise SlideError(
                f"{self.path}: no pyramid level coarse enough for a thumbnail: level {level} ({lw} × {lh} px) "
                f"would take {math.ceil(lw * lh / _STRIP_PIXELS):,} strip reads of 16 Mpx (at most "
                f"{MAX_THUMBNAIL_STRIPS}); {_CONVERT_HINT}"
            )
        reduced = self._jpeg_thumbnail(level, (out_w, out_h))
        if reduced is not None:
            return reduced, self.mpp * w0 / out_w
        out = np.empty((out_h, out_w, 3), np.uint8)
        for oy in range(0, out_h, rows_per_strip):
            oy1 = min(out_h, oy + rows_per_strip)
            ly0, ly1 = math.floor(oy * lh / out_h), min(lh, math.ceil(oy1 * lh / out_h))
            strip = self.read_rgb((0, int(ly0 * ds)), level, (lw, max(1, ly1 - ly0)))
            img = Image.fromarray(strip).resize((out_w, oy1 - oy), Image.Resampling.BOX)
            out[oy:oy1] = np.asarray(img)
        return out, self.mpp * w0 / out_w

    def _jpeg_thumbnail(self, level: int, out_size_px: tuple[int, int]) -> np.ndarray | None:
        """The thumbnail from ``level``'s raw JPEG tiles decoded at 1/2, 1/4 or 1/8 scale
        (libjpeg skips most of the work), when the level is plain JPEG tiles of a TIFF at
        least twice finer than the thumbnail; else None (read through OpenSlide)."""
        from wsi_seg.slide.decode.reduced import dct_reduction, read_region
        from wsi_seg.slide.decode.tiff_jpeg import TileFile, find_jpeg_level

        lw, lh = self.level_dimensions[level]
        reduce = dct_reduction(lw / out_size_px[0])
        if reduce == 1 or self.plain_image is not None or self.reader != "openslide" or not _is_tiff(self.path):
            return None
        jpeg, _ = find_jpeg_level(self.path, (lw, lh))
        if jpeg is None:
            return None
        tiles = TileFile(self.path)
        try:
            return read_region(tiles, jpeg, (0.0, 0.0, float(lw), float(lh)), out_size_px, reduce)
        except SlideError as exc:  # a damaged tile: OpenSlide's path says it in its own words
            log.debug("%s: reduced JPEG thumbnail failed (%s); reading through OpenSlide", self.path, exc)
            return None
        finally:
            tiles.close()

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

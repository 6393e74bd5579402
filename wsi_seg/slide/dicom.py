"""DICOM whole-slide images (VL Whole Slide Microscopy): which files make up the slide, and
the reader that opens them.

A DICOM slide is a folder of instances (one per pyramid level, label, overview…) or one
``.dcm`` file; a file given alone brings the other instances of its series (same
SeriesInstanceUID) in its folder, as OpenSlide does. OpenSlide reads it where it can
(TILED_FULL and TILED_SPARSE frames in JPEG, JPEG 2000 or uncompressed RGB); where it
refuses (another transfer syntax or colour space, a folder, an odd ImageType…) the
``wsidicom`` library reads it, behind :class:`WsiDicomHandle`, the part of OpenSlide's
API that :class:`wsi_seg.slide.slide.Slide` uses. The µm/px is the DICOM pixel spacing.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_seg.errors import SlideError

log = logging.getLogger(__name__)

VL_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_PREAMBLE, _MAGIC = 128, b"DICM"  # a DICOM Part 10 file: 128-byte preamble, then "DICM"
_HEADER_TAGS = ("SOPClassUID", "SeriesInstanceUID", "ImageType")


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a DICOM Part 10 file (by its magic bytes, whatever its name)."""
    try:
        with open(path, "rb") as f:
            f.seek(_PREAMBLE)
            return f.read(4) == _MAGIC
    except OSError:
        return False


def _folder_dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def is_dicom_slide(path: Path) -> bool:
    """True for a DICOM file, or a folder holding DICOM files (a DICOM slide to open)."""
    if path.is_dir():
        return any(p.is_file() and is_dicom_file(p) for p in path.iterdir())
    return is_dicom_file(path)


@dataclass(frozen=True)
class _Header:
    path: Path
    sop_class: str
    series: str
    flavor: str  # ImageType value 3: VOLUME, LABEL, OVERVIEW, THUMBNAIL ("" when missing)


def _header(path: Path) -> _Header:
    """The few tags that say what a DICOM file is; SlideError naming it if it is unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ValueError, …
        raise SlideError(f"{path}: damaged or unreadable DICOM file ({exc})") from exc
    image_type = list(ds.get("ImageType", []) or [])
    return _Header(path, str(ds.get("SOPClassUID", "")), str(ds.get("SeriesInstanceUID", "")),
                   str(image_type[2]).upper() if len(image_type) > 2 else "")


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name if uid else "no SOP class"


def slide_files(path: Path) -> list[Path]:
    """The DICOM files of the slide at ``path`` (a folder, or one file and its series in its folder).

    Raises SlideError (naming ``path``) for a DICOM that is not a whole-slide image, and for a
    folder that holds more than one slide.
    """
    if path.is_dir():
        headers = [h for h in map(_header, _folder_dicom_files(path))]
        wsi = [h for h in headers if h.sop_class == VL_WSI_SOP_CLASS]
        if not wsi:
            kinds = sorted({_sop_class_name(h.sop_class) for h in headers})
            raise SlideError(f"{path}: holds DICOM files but no whole-slide image ({', '.join(kinds)}); "
                             "wsi-seg reads VL Whole Slide Microscopy images")
        series = sorted({h.series for h in wsi})
        if len(series) > 1:
            raise SlideError(f"{path}: holds {len(series)} DICOM whole-slide images (series {', '.join(series)}); "
                             "put each slide's files in a folder of its own")
        return [h.path for h in wsi]
    own = _header(path)
    if own.sop_class != VL_WSI_SOP_CLASS:
        raise SlideError(f"{path}: a DICOM file, but not a whole-slide image ({_sop_class_name(own.sop_class)}); "
                         "wsi-seg reads VL Whole Slide Microscopy images")
    siblings = [path]
    for other in _folder_dicom_files(path.parent):
        if other == path:
            continue
        try:
            h = _header(other)
        except SlideError:  # a damaged neighbour that is not part of this slide is not our business
            continue
        if h.sop_class == VL_WSI_SOP_CLASS and h.series == own.series:
            siblings.append(other)
    return siblings


def _volume_file(files: list[Path]) -> Path:
    """The file to hand OpenSlide: a VOLUME instance (it finds the rest of the series itself)."""
    for f in files:
        if _header(f).flavor == "VOLUME":
            return f
    return files[0]


@dataclass
class DicomOpened:
    """An open DICOM slide: its OpenSlide-like handle, the library that reads it, and its files."""

    handle: object  # openslide.OpenSlide or WsiDicomHandle
    reader: str  # "openslide" or "wsidicom"
    files: list[Path] = field(default_factory=list)
    note: str = ""  # why OpenSlide was not used, when it was not


def open_dicom(path: Path) -> DicomOpened:
    """Open the DICOM slide at ``path`` with OpenSlide, or with wsidicom where OpenSlide refuses it."""
    import openslide

    files = slide_files(path)
    try:
        osr = openslide.OpenSlide(str(_volume_file(files)))
        return DicomOpened(osr, "openslide", files)
    except (openslide.OpenSlideError, OSError) as exc:  # OpenSlideUnsupportedFormatError is an OpenSlideError
        why = _openslide_said(exc)
        log.debug("%s: OpenSlide refuses it (%s); reading it with wsidicom", path, why)
    try:
        handle = WsiDicomHandle.open(path, files, openslide_said=why)
    except SlideError as exc:
        flavors = sorted({_header(f).flavor for f in files})
        if "VOLUME" not in flavors:  # the readers find levels by ImageType's third value
            raise SlideError(f"{exc}; none of its files is a pyramid level: ImageType value 3 is "
                             f"{'/'.join(v or 'missing' for v in flavors)}, not VOLUME") from exc
        raise
    return DicomOpened(handle, "wsidicom", files, note=f"OpenSlide cannot read it: {why}")


def _said(exc: BaseException) -> str:
    """An exception as a phrase: a KeyError's bare key says little on its own."""
    if isinstance(exc, KeyError):
        return f"missing DICOM element {exc.args[0] if exc.args else ''}".strip()
    return str(exc).strip() or type(exc).__name__


def _openslide_said(exc: BaseException) -> str:
    """OpenSlide's refusal, short: without the file it names, transfer syntaxes named."""
    from pydicom.uid import UID

    why = re.sub(r"^Reading \S+: ", "", str(exc).strip()) or type(exc).__name__
    return re.sub(r"\b1\.2\.840\.10008\.1\.2[\d.]*", lambda m: f"{m[0]} ({UID(m[0]).name})", why)


class WsiDicomHandle:
    """A DICOM slide read by wsidicom, with the part of ``openslide.OpenSlide``'s API that
    ``Slide`` uses: ``properties`` (with ``openslide.mpp-x``/``-y`` from the pixel spacing,
    as OpenSlide names them), ``dimensions``, ``level_dimensions``, ``level_downsamples``,
    ``read_region`` (RGBA; outside the image and missing sparse tiles transparent) and
    ``close``. Reads are serialised: wsidicom's frame caches are shared by the threads."""

    def __init__(self, wsi: object, path: Path) -> None:
        self._wsi = wsi
        self._path = path
        self._lock = threading.Lock()
        levels = list(wsi.levels)  # type: ignore[attr-defined]  # finest first
        self._levels = [lv.level for lv in levels]  # wsidicom's own level numbers (log2 of the scale)
        self.level_dimensions = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)
        w0, h0 = self.level_dimensions[0]
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)
        self.properties: Mapping[str, str] = self._properties(levels[0])

    @classmethod
    def open(cls, path: Path, files: list[Path], openslide_said: str = "") -> WsiDicomHandle:
        """wsidicom's view of ``files``; SlideError naming ``path`` if it cannot read them either."""
        from wsidicom import WsiDicom

        with _QuietWsidicom() as quiet:  # it logs a file it cannot open with a traceback, then skips it
            try:
                wsi = WsiDicom.open(files)
            except Exception as exc:  # wsidicom's own errors, pydicom's, ValueError, OSError …
                said = "; ".join([*quiet.problems, _said(exc)])
                also = f"; OpenSlide: {openslide_said}" if openslide_said else ""
                raise SlideError(f"{path}: cannot read this DICOM whole-slide image (wsidicom: {said}{also})") from exc
        try:
            if not list(wsi.levels):
                raise SlideError(f"{path}: a DICOM whole-slide image without pyramid levels (VOLUME images)")
            return cls(wsi, path)
        except SlideError:
            wsi.close()
            raise
        except Exception as exc:
            wsi.close()
            raise SlideError(f"{path}: cannot read this DICOM whole-slide image ({exc})") from exc

    def _properties(self, level0: object) -> dict[str, str]:
        props = {"openslide.vendor": "dicom", "wsidicom.version": _wsidicom_version()}
        spacing = getattr(level0, "pixel_spacing", None)  # mm per pixel
        if spacing is not None and float(spacing.width) > 0 and float(spacing.height) > 0:
            props["openslide.mpp-x"] = repr(float(spacing.width) * 1000.0)
            props["openslide.mpp-y"] = repr(float(spacing.height) * 1000.0)
        uids = getattr(self._wsi, "uids", None)
        if uids is not None:
            for key in ("study_instance", "series_instance", "frame_of_reference"):
                value = getattr(uids, key, None)
                if value:
                    props[f"dicom.{key}_uid"] = str(value)
        return props

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGBA region of ``level`` (an index into ``level_dimensions``) at level-0 ``location``."""
        w, h = int(size[0]), int(size[1])
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x, y = math.floor(location[0] / ds), math.floor(location[1] / ds)  # level pixels
        out = np.zeros((h, w, 4), np.uint8)  # transparent outside the image, as OpenSlide
        x0, y0, x1, y1 = max(0, x), max(0, y), min(lw, x + w), min(lh, y + h)
        if x1 > x0 and y1 > y0:
            with self._lock:
                rgb = self._wsi.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0),  # type: ignore[attr-defined]
                                            as_array=True)
            rgb = np.asarray(rgb)
            if rgb.ndim == 2:
                rgb = np.repeat(rgb[..., None], 3, axis=2)
            out[y0 - y : y1 - y, x0 - x : x1 - x, :3] = rgb[..., :3]
            out[y0 - y : y1 - y, x0 - x : x1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        self._wsi.close()  # type: ignore[attr-defined]


class _QuietWsidicom(logging.Handler):
    """Keeps wsidicom's error records (a traceback per unreadable file) off the user's
    screen while it opens a slide; their first lines become part of our one-line error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.problems: list[str] = []
        self._logger = logging.getLogger("wsidicom")

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.problems.append(_said(exc) if exc is not None else record.getMessage())

    def __enter__(self) -> _QuietWsidicom:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _wsidicom_version() -> str:
    from importlib.metadata import version

    return version("wsidicom")

"""Raw JPEG tiles of one pyramid level of a tiled TIFF (Aperio SVS, generic tiled TIFF).

tifffile says where each tile's bytes lie (``page.dataoffsets`` / ``databytecounts``)
and gives the shared ``JPEGTables``; this module turns a tile into a complete JPEG
stream that any decoder (PIL with DCT scaling, torchvision/nvJPEG) can read, and lists
the tiles under a region. Reading the bytes is ``os.pread``: no shared file position,
so threads and processes can read at once.

Colour: a TIFF JPEG tile is YCbCr unless the TIFF says RGB (PhotometricInterpretation 2)
and the stream has no JFIF marker. Aperio SVS stores such RGB-coded tiles; libjpeg would
take them for YCbCr, so they get an Adobe APP14 marker with transform 0 (= "components
are RGB, no colour transform"), the way libtiff tells libjpeg ``JCS_RGB``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

JPEG_COMPRESSION = 7  # TIFF Compression tag: "new-style" JPEG (6, old-style, is not read here)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# APP14 "Adobe", version 100, flags 0/0, transform 0: the components are RGB
ADOBE_RGB_MARKER = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
# OpenSlide vendors whose levels are plain TIFF pages of JPEG tiles without overlaps;
# others (Philips, Ventana BIF, NDPI…) have their own geometry and keep OpenSlide
JPEG_TILE_VENDORS = ("aperio", "generic-tiff")


@dataclass(frozen=True)
class JpegLevel:
    """Where one level's JPEG tiles lie in a TIFF file. Picklable (no open handles)."""

    path: str
    page: int  # tifffile page index
    size_px: tuple[int, int]  # (width, height)
    tile_px: tuple[int, int]  # (width, height)
    offsets: tuple[int, ...]  # per tile, row-major
    byte_counts: tuple[int, ...]
    tables: bytes | None  # JPEGTables (SOI … EOI), shared by all tiles
    rgb_coded: bool  # the Aperio case: RGB components without a marker saying so

    @property
    def tiles_shape(self) -> tuple[int, int]:
        """Tiles (rows, cols)."""
        return math.ceil(self.size_px[1] / self.tile_px[1]), math.ceil(self.size_px[0] / self.tile_px[0])

    def tiles_in(self, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
        """(row, col) of the tiles overlapping the level-pixel box [x0, x1) × [y0, y1)."""
        tw, th = self.tile_px
        rows, cols = self.tiles_shape
        r0, r1 = max(0, y0 // th), min(rows, -(-y1 // th))
        c0, c1 = max(0, x0 // tw), min(cols, -(-x1 // tw))
        return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]

    def stream(self, raw: bytes) -> bytes:
        """A complete JPEG stream from a tile's stored bytes (tables merged, colour marked)."""
        if not raw.startswith(_SOI):
            raise ValueError("tile does not start with a JPEG SOI marker")
        body = raw[2:]
        if self.tables is not None and len(self.tables) > 4:
            # abbreviated tables-only stream: SOI, DQT/DHT…, EOI
            body = self.tables[2:-2] + body
        if self.rgb_coded:
            body = ADOBE_RGB_MARKER + body
        return _SOI + body


def find_jpeg_level(path: str | Path, size_px: tuple[int, int]) -> tuple[JpegLevel | None, str]:
    """The tiled-JPEG TIFF page of size (W, H) in ``path``, or None and why not."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            for index, page in enumerate(tif.pages):
                if not isinstance(page, tifffile.TiffPage) or (page.imagewidth, page.imagelength) != tuple(size_px):
                    continue
                if not page.is_tiled:
                    continue
                why = _unsupported(page)
                if why:
                    return None, why
                return JpegLevel(
                    path=str(path),
                    page=index,
                    size_px=(page.imagewidth, page.imagelength),
                    tile_px=(page.tilewidth, page.tilelength),
                    offsets=tuple(int(o) for o in page.dataoffsets),
                    byte_counts=tuple(int(c) for c in page.databytecounts),
                    tables=bytes(page.jpegtables) if page.jpegtables else None,
                    rgb_coded=page.photometric == 2 and not page.is_jfif,
                ), ""
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        return None, f"tifffile cannot read it ({exc})"
    return None, f"no tiled TIFF page of {size_px[0]}×{size_px[1]} px"


def _unsupported(page: object) -> str:
    """Why a tiled page's tiles are not plain 8-bit 3-channel JPEG, or "" when they are."""
    checks = (
        (page.compression == JPEG_COMPRESSION, f"compression {int(page.compression)} is not JPEG"
                                               + (" but JPEG 2000" if "2000" in getattr(page.compression, "name", "") else "")),
        (page.bitspersample == 8 and page.samplesperpixel == 3 and not page.extrasamples,
         "not 8-bit 3-channel"),
        (page.planarconfig == 1, "planar (separate) channels"),
        (page.photometric in (2, 6), f"photometric {int(page.photometric)} is not RGB or YCbCr"),
        (page.imagedepth == 1 and page.tiledepth == 1, "3-D tiles"),
        (len(page.dataoffsets) == math.prod(
            (math.ceil(page.imagelength / page.tilelength), math.ceil(page.imagewidth / page.tilewidth))),
         "unexpected tile count"),
    )
    return next((why for ok, why in checks if not ok), "")


class TileFile:
    """Reads tiles' bytes from a TIFF; opened lazily, so one per process after pickling."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd: int | None = None
        self._opening = threading.Lock()

    def read(self, level: JpegLevel, row: int, col: int) -> bytes | None:
        """The complete JPEG stream of tile (row, col), or None for a tile not stored
        (byte count 0: OpenSlide shows those as transparent, i.e. glass)."""
        k = row * level.tiles_shape[1] + col
        offset, count = level.offsets[k], level.byte_counts[k]
        if count == 0 or offset == 0:
            return None
        raw = os.pread(self._descriptor(), count, offset)
        if len(raw) != count:
            raise OSError(f"tile ({row}, {col}) is truncated: {len(raw)} of {count} bytes")
        return level.stream(raw)

    def _descriptor(self) -> int:
        # pread needs no shared file position, so reading threads share one descriptor
        with self._opening:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _opening=threading.Lock())

    def __del__(self) -> None:
        self.close()

"""Slide fingerprints: a fast content hash that tells two slides apart.

Used to resume an interrupted run only into a run of the same slide, and to skip slides
a cohort already segmented; recorded in every result's provenance. Slides are GB, so
the hash reads a bounded sample, chosen so that two different scans cannot share it:

- every TIFF directory (pyramid levels, label, macro): its shape, compression and tiling,
  and its whole tile index (offsets and byte counts of every tile: compressed tiles of
  different images differ in size);
- the bytes of every tile of the small directories (the coarse levels, which show the
  whole slide), and of ``SAMPLE_TILES`` tiles spread evenly through each large one;
- the slide's own metadata (OpenSlide properties such as ``aperio.ImageID``, scan date,
  scanner serial), without the ``openslide.*`` keys OpenSlide derives itself;
- a DICOM slide (``wsi_seg.slide.dicom``): each of its files, as below;
- formats that are not TIFF (MIRAX with its companion folder, plain images): every
  file whole up to ``WHOLE_FILE_BYTES``, else ``SAMPLE_CHUNKS`` chunks spread through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

FINGERPRINT_VERSION = 2
SAMPLE_TILES = 64  # tiles hashed per large TIFF directory
WHOLE_LEVEL_BYTES = 16 << 20  # TIFF directories with at most this much tile data are hashed whole
MAX_TILE_BYTES = 1 << 20  # at most this much of one sampled tile
WHOLE_FILE_BYTES = 64 << 20  # non-TIFF files up to this size are hashed whole
SAMPLE_CHUNKS = 256
CHUNK_BYTES = 64 << 10


def slide_fingerprint(path: Path, properties: Mapping[str, str] | None = None,
                      files: list[Path] | None = None) -> str:
    """``v2:`` + 32 hex digits identifying the slide at ``path`` (a file, or a ``.mrxs`` with its
    folder); ``files``: the files that make up a slide of several (a DICOM slide's instances)."""
    path = Path(path)
    h = hashlib.sha256(f"wsi-seg slide fingerprint v{FINGERPRINT_VERSION}\0".encode())
    for key in sorted(properties or {}):
        if not key.startswith("openslide."):
            h.update(f"{key}={properties[key]}\0".encode("utf-8", "surrogateescape"))
    if files:
        _hash_files(sorted(Path(f) for f in files), h)
    elif not _hash_tiff(path, h):
        _hash_files(_slide_files(path), h)
    return f"v{FINGERPRINT_VERSION}:{h.hexdigest()[:32]}"


def _slide_files(path: Path) -> list[Path]:
    """The file and, for MIRAX, the files of its companion folder (``scan.mrxs`` + ``scan/``)."""
    files = [path]
    companion = path.with_suffix("")
    if path.suffix.lower() == ".mrxs" and companion.is_dir():
        files += sorted(p for p in companion.rglob("*") if p.is_file())
    return files


def _hash_tiff(path: Path, h: hashlib._Hash) -> bool:
    """Hash a TIFF-family slide into ``h``; False if it is not a TIFF."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError):
        return False
    with tif, open(path, "rb") as f:
        h.update(str(path.stat().st_size).encode())
        for page in tif.pages:
            h.update(repr((page.shape, page.dtype.str if page.dtype is not None else "", int(page.compression),
                           page.tilewidth, page.tilelength)).encode())
            offsets = np.asarray(page.dataoffsets, np.uint64)
            counts = np.asarray(page.databytecounts, np.uint64)
            h.update(offsets.tobytes())
            h.update(counts.tobytes())
            if counts.size == 0:
                continue
            if int(counts.sum()) <= WHOLE_LEVEL_BYTES:
                picks: Iterable[int] = range(counts.size)
            else:
                picks = np.unique(np.linspace(0, counts.size - 1, SAMPLE_TILES).round().astype(np.int64))
            for i in picks:
                if counts[i]:
                    f.seek(int(offsets[i]))
                    h.update(f.read(min(int(counts[i]), MAX_TILE_BYTES)))
    return True


def _hash_files(files: list[Path], h: hashlib._Hash) -> None:
    base = files[0].parent
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.relative_to(base) if path.is_relative_to(base) else path.name}\0{size}\0".encode(
            "utf-8", "surrogateescape"))
        with open(path, "rb") as f:
            if size <= WHOLE_FILE_BYTES:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                continue
            for offset in np.linspace(0, size - CHUNK_BYTES, SAMPLE_CHUNKS).astype(np.int64):
                f.seek(int(offset))
                h.update(f.read(CHUNK_BYTES))

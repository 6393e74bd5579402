"""Tiny DICOM whole-slide images (VL Whole Slide Microscopy) for the tests, written offline.

wsidicom writes them: an RGB array becomes a tiled level-0 instance (``ImageData`` over the
array, with its pixel spacing), and ``WsiDicom.save`` writes it, with the dyadic levels
below it when ``pyramid`` is set. wsidicom only writes TILED_FULL frames, so a sparse
slide is made from that with pydicom: every frame gets its position
(PerFrameFunctionalGroupsSequence → PlanePositionSlideSequence) and the all-glass frames
are dropped, as scanners do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import JPEGBaseline8Bit, RLELossless, generate_uid
from wsidicom import WsiDicom, WsiInstance
from wsidicom.geometry import Point, Size, SizeMm
from wsidicom.instance import NumpyImageData
from wsidicom.metadata import (
    Equipment,
    Image,
    Label,
    Patient,
    Pyramid,
    Series,
    Slide,
    SlideSample,
    Study,
    WsiMetadata,
)
from wsidicom.metadata.image import ImageType
from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema
from wsidicom.source import Source

# transfer syntaxes the tests write: JPEG (OpenSlide reads it) and RLE (OpenSlide refuses it)
SYNTAXES = {"jpeg": (JPEGBaseline8Bit, "YBR_FULL_422"), "rle": (RLELossless, "RGB")}


class _TiledArray(NumpyImageData):
    """An RGB array as the tiles of one level; edge tiles padded with glass."""

    def __init__(self, rgb: np.ndarray, tile_px: int, mpp: float, syntax: str) -> None:
        self._tile, self._mpp = tile_px, mpp
        self._syntax, self._photometric = SYNTAXES[syntax]
        super().__init__(rgb)

    @property
    def transfer_syntax(self):  # type: ignore[override]
        return self._syntax

    @property
    def photometric_interpretation(self) -> str:
        return self._photometric

    @property
    def tile_size(self) -> Size:
        return Size(self._tile, self._tile)

    @property
    def pixel_spacing(self) -> SizeMm:
        return SizeMm(self._mpp / 1000.0, self._mpp / 1000.0)

    @property
    def lossy_compression(self):  # type: ignore[override]
        return None

    def get_decoded_tile(self, tile_point: Point, z: float, path: str, cache: bool = True) -> np.ndarray:
        t = self._tile
        out = np.full((t, t, 3), 255, np.uint8)
        part = self._pixels[tile_point.y * t : (tile_point.y + 1) * t, tile_point.x * t : (tile_point.x + 1) * t]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        return self.encoder.encode(self.get_decoded_tile(tile, z, path))


class _ArraySource(Source):
    """A wsidicom source of one level instance built in memory."""

    def __init__(self, instance: WsiInstance) -> None:
        super().__init__()
        self._instance = instance

    base_dataset = property(lambda self: self._instance.dataset)
    level_instances = property(lambda self: [self._instance])
    label_instances = property(lambda self: [])
    overview_instances = property(lambda self: [])
    thumbnail_instances = property(lambda self: [])
    annotation_instances = property(lambda self: [])

    def close(self) -> None:
        pass


def _base_dataset():
    md = WsiMetadata(
        study=Study(uid=generate_uid()), series=Series(uid=generate_uid(), number=1), patient=Patient(),
        equipment=Equipment(),
        slide=Slide(identifier="S1", samples=[SlideSample(identifier="A", uid=generate_uid())]),
        pyramid=Pyramid(image=Image(), optical_paths=[], uid=generate_uid()), label=Label(),
        frame_of_reference_uid=generate_uid(), dimension_organization_uids=[generate_uid()],
    )
    return WsiMetadataDicomSchema().dump(md, ImageType.VOLUME, require_icc_profile=True)


def write_dicom_wsi(folder: Path, rgb: np.ndarray, mpp: float = 0.5, tile_px: int = 64, pyramid: bool = False,
                    sparse: bool = False, syntax: str = "jpeg") -> list[Path]:
    """Write ``rgb`` as a DICOM WSI into ``folder`` (created); returns its files, level 0 first.

    ``pyramid``: add the dyadic levels down to one tile; ``sparse``: TILED_SPARSE frames,
    all-glass ones left out; ``syntax``: "jpeg" or "rle" (see ``SYNTAXES``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = _TiledArray(np.ascontiguousarray(rgb), tile_px, mpp, syntax)
    instance = WsiInstance.create_instance(data, _base_dataset(), ImageType.VOLUME, 0)
    with WsiDicom(_ArraySource(instance)) as wsi:
        files = [Path(str(f)) for f in wsi.save(folder, add_missing_levels=pyramid, workers=1)]
    files.sort(key=lambda f: -_columns(f))
    if sparse:
        for f in files:
            make_sparse(f)
    return files


def _columns(path: Path) -> int:
    import pydicom

    return int(pydicom.dcmread(path, stop_before_pixels=True).TotalPixelMatrixColumns)


def make_sparse(path: Path, glass_at_least: int = 225) -> int:
    """Rewrite a TILED_FULL file as TILED_SPARSE without its all-glass frames; returns the frames kept."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.sequence import Sequence
    from wsidicom import WsiDicom as _Wsi

    ds = pydicom.dcmread(path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    across = -(-int(ds.TotalPixelMatrixColumns) // cols)
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    with _Wsi.open([path]) as wsi:  # decode each tile to tell glass from tissue
        level = wsi.levels[0]
        keep = [k for k in range(n)
                if np.asarray(level.get_tile(Point(k % across, k // across), None, None)).min() < glass_at_least]
    if not keep:
        keep = [0]
    items = []
    for k in keep:
        pos = Dataset()
        pos.ColumnPositionInTotalImagePixelMatrix = (k % across) * cols + 1
        pos.RowPositionInTotalImagePixelMatrix = (k // across) * rows + 1
        pos.XOffsetInSlideCoordinateSystem = 0.0
        pos.YOffsetInSlideCoordinateSystem = 0.0
        pos.ZOffsetInSlideCoordinateSystem = 0.0
        item = Dataset()
        item.PlanePositionSlideSequence = Sequence([pos])
        items.append(item)
    ds.DimensionOrganizationType = "TILED_SPARSE"
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.NumberOfFrames = len(keep)
    ds.PixelData = encapsulate([frames[k] for k in keep])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return len(keep)

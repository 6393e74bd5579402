"""DICOM whole-slide images: a folder of instances or one .dcm file opens, tiles and
segments, TILED_FULL and TILED_SPARSE, one level or a pyramid; OpenSlide reads what it
can, wsidicom the rest; damaged or foreign DICOM stops with one line naming the file.

The slides are written by the tests themselves (``dicom_wsi``: wsidicom's writer, pydicom
for the sparse frames), 512 × 512 px in 64-px tiles at 1 µm/px.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import blob_image
from dicom_wsi import write_dicom_wsi
from test_cli import assert_one_line_error as one_line_error
from test_cli import run_cli

from wsi_seg.errors import SlideError
from wsi_seg.result.format import is_complete, read_provenance
from wsi_seg.slide.slide import Slide

RGB = blob_image(512, seed=3)
# layout: (write_dicom_wsi keywords, levels, the reader that opens it)
LAYOUTS = {
    "single-level": ({}, 1, "openslide"),
    "pyramid": ({"pyramid": True}, 4, "openslide"),
    "sparse-pyramid": ({"pyramid": True, "sparse": True}, 4, "openslide"),
    "rle": ({"syntax": "rle"}, 1, "wsidicom"),  # a transfer syntax OpenSlide does not read
    "rle-sparse-pyramid": ({"syntax": "rle", "pyramid": True, "sparse": True}, 4, "wsidicom"),
}


@pytest.fixture(scope="module")
def dicom_slides(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicom")
    return {name: write_dicom_wsi(root / name, RGB, mpp=1.0, tile_px=64, **kw)[0].parent
            for name, (kw, _, _) in LAYOUTS.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opens_reads_and_says_which_reader(dicom_slides, layout):
    _, levels, reader = LAYOUTS[layout]
    folder = dicom_slides[layout]
    files = sorted(folder.iterdir())
    if "sparse" in layout:  # the all-glass frames are really left out
        ds = pydicom.dcmread(max(files, key=lambda f: f.stat().st_size), stop_before_pixels=True)
        assert ds.DimensionOrganizationType == "TILED_SPARSE" and int(ds.NumberOfFrames) < 64
    prints = set()
    for target in (folder, files[0]):  # the folder, or one file of it (its series comes along)
        with Slide(target) as slide:
            assert slide.reader == reader and slide.vendor == "dicom"
            assert slide.mpp == pytest.approx(1.0)  # from the DICOM pixel spacing
            assert slide.dimensions == (512, 512) and len(slide.level_dimensions) == levels
            assert slide.level_downsamples[-1] == pytest.approx(2 ** (levels - 1), rel=0.02)
            rgb = slide.read_rgb((0, 0), 0, (512, 512))
            glass = RGB.min(axis=2) > 225  # left out of a sparse slide: reads as white glass
            assert np.abs(rgb[~glass].astype(int) - RGB[~glass]).mean() < 12  # JPEG or lossless
            assert rgb[glass].mean() > 225
            thumb, thumb_mpp = slide.thumbnail(8.0)
            assert thumb.shape == (64, 64, 3) and thumb_mpp == pytest.approx(8.0)
            assert slide.read_rgb((480, 480), levels - 1, (64, 64)).shape == (64, 64, 3)  # past the edge: glass
            info = slide.info()
            assert info.reader == reader
            prints.add(info.fingerprint)
    assert len(prints) == 1  # the same slide either way


def test_info_names_the_reader(dicom_slides, capsys):
    code, out, err = run_cli(capsys, "info", dicom_slides["rle-sparse-pyramid"])
    assert code == 0, err
    assert re.search(r"^vendor:\s+dicom$", out, re.MULTILINE) and "1.0000 (metadata)" in out and "level 3:" in out
    assert re.search(r"^reader:\s+wsidicom \(OpenSlide cannot read it: .*\(RLE Lossless\)\)$", out, re.MULTILINE), out
    tissue = re.search(r"^tissue:\s+([\d.]+)% of the slide", out, re.MULTILINE)
    assert tissue and 15 < float(tissue.group(1)) < 40, out  # the blob: π · 0.35 · 0.25 of the square
    code, out, err = run_cli(capsys, "info", dicom_slides["pyramid"])
    assert code == 0 and re.search(r"^reader:\s+openslide$", out, re.MULTILINE), out


@pytest.mark.parametrize("layout", ["sparse-pyramid", "rle-sparse-pyramid"])
def test_segments(dicom_slides, tmp_path, capsys, checkpoints, layout):
    out = tmp_path / "d.zarr"
    code, stdout, err = run_cli(capsys, "segment", dicom_slides[layout], "--out", out, "--model", checkpoints[2],
                                "--device", "cpu", "--workers", "0", "--no-progress")
    assert code == 0, err
    assert is_complete(out) and "patches run" in stdout
    prov = read_provenance(out)
    assert prov["slide"]["reader"] == LAYOUTS[layout][2] and prov["slide"]["vendor"] == "dicom"
    assert prov["slide"]["mpp"] == pytest.approx(1.0) and prov["slide"]["mpp_source"] == "metadata"
    assert prov["stats"]["patches_run"] > 0
    if LAYOUTS[layout][2] == "wsidicom":  # the run's reader plan says through what it read
        assert "wsidicom reads" in prov["inference"]["reader"]["reason"]


def test_different_slides_differ(dicom_slides):
    with Slide(dicom_slides["pyramid"]) as a, Slide(dicom_slides["sparse-pyramid"]) as b:
        assert a.fingerprint() != b.fingerprint()


def test_damaged_dicom_is_one_line(tmp_path, capsys, caplog, dicom_slides):
    src = sorted(dicom_slides["single-level"].iterdir())[0]
    cut = tmp_path / "cut" / "slide.dcm"
    cut.parent.mkdir()
    cut.write_bytes(src.read_bytes()[:2000])  # header cut short, no pixels
    line = one_line_error(*run_cli(capsys, "info", cut)[::2])
    assert f"{cut}: cannot read this DICOM whole-slide image (wsidicom: " in line and "OpenSlide: " in line
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # wsidicom's tracebacks stay off the screen
    garbled = tmp_path / "garbled" / "slide.dcm"
    garbled.parent.mkdir()
    data = bytearray(src.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # frames zeroed
    garbled.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "segment", garbled, "--out", tmp_path / "g.zarr", "--device", "cpu",
                           "--workers", "0", "--no-progress")
    assert str(garbled) in one_line_error(code, err)


def test_foreign_dicom_is_one_line(tmp_path, capsys):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID, generate_uid()
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(32)
    ct = tmp_path / "ct" / "slice.dcm"
    ct.parent.mkdir()
    ds.save_as(ct, enforce_file_format=True)
    for target in (ct, ct.parent):
        line = one_line_error(*run_cli(capsys, "info", target)[::2])
        assert str(target) in line and re.search(r"(not a|no) whole-slide image \(CT Image Storage\)", line), line
    with pytest.raises(SlideError, match="is a directory"):
        Slide(tmp_path)  # no DICOM in it, no slide


def test_two_slides_in_one_folder_is_one_line(tmp_path, capsys):
    for k, part in enumerate((RGB[:256, :256], RGB[256:, 256:])):
        for f in write_dicom_wsi(tmp_path / f"slide{k}", part):
            f.rename((tmp_path / "mixed").mkdir(exist_ok=True) or tmp_path / "mixed" / f.name)
    line = one_line_error(*run_cli(capsys, "info", tmp_path / "mixed")[::2])
    assert "2 DICOM whole-slide images" in line and "folder of its own" in line


def test_no_pyramid_level_is_one_line(tmp_path, capsys):
    src = write_dicom_wsi(tmp_path / "s", RGB[:128, :128])[0]
    ds = pydicom.dcmread(src)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]  # no flavour: OpenSlide "Couldn't get image flavor", wsidicom no level
    ds.save_as(src)
    line = one_line_error(*run_cli(capsys, "info", src.parent)[::2])
    assert str(src.parent) in line and "ImageType value 3 is missing, not VOLUME" in line

"""Slide decoders: raw JPEG tiles (DCT-scaled on the CPU, batched on the device) against
OpenSlide, the choice between them, and their provenance and failures."""

import io
import json
import struct

import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import blob_image, write_slide
from PIL import Image

from wsi_seg.errors import ConfigError, SlideError
from wsi_seg.inference.reader import plan_reader
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.model import load_checkpoint
from wsi_seg.slide.decode.device import TileDecoder
from wsi_seg.slide.decode.device_seed import background_seed as seed_on_device
from wsi_seg.slide.decode.device_seed import remove_small_objects
from wsi_seg.slide.decode.reduced import JpegRegionReader, dct_reduction
from wsi_seg.slide.decode.tiff_jpeg import TileFile, find_jpeg_level
from wsi_seg.slide.slide import Slide
from wsi_seg.slide.tissue import BackgroundSeedParams
from wsi_seg.synthetic import write_demo_slide

CPU = torch.device("cpu")


def split_jpeg(data: bytes) -> tuple[bytes, bytes]:
    """(tables-only stream, the stream without its tables and APPn markers), as Aperio
    stores tiles: shared JPEGTables, tiles with neither a JFIF nor an Adobe marker, and
    component ids 1, 2, 3 (libjpeg reads such a stream as YCbCr)."""
    pos, tables, rest = 2, [], []
    while True:
        marker, n = data[pos : pos + 2], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        seg = bytearray(data[pos : pos + 2 + n])
        if marker == b"\xff\xc0":  # SOF0: components at 10, 13, 16
            seg[10], seg[13], seg[16] = 1, 2, 3
        if marker == b"\xff\xda":  # SOS: components at 5, 7, 9; entropy-coded data follows
            seg[5], seg[7], seg[9] = 1, 2, 3
            rest.append(bytes(seg) + data[pos + 2 + n :])
            break
        if marker in (b"\xff\xdb", b"\xff\xc4"):
            tables.append(bytes(seg))
        elif not 0xE0 <= marker[1] <= 0xEF:
            rest.append(bytes(seg))
        pos += 2 + n
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"\xff\xd8" + b"".join(rest)


def write_aperio_rgb_slide(path, rgb, mpp=0.25, tile_px=128):
    """An SVS-like TIFF: RGB-coded JPEG tiles (PhotometricInterpretation RGB, no colour
    transform, no marker saying so) sharing JPEGTables; a 4× reduced second level."""
    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile_px}x{tile_px}) JPEG/RGB Q=90|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        for k, f in enumerate((1, 4)):
            img = rgb[::f, ::f]
            lh, lw = img.shape[:2]
            pad = np.full((-(-lh // tile_px) * tile_px, -(-lw // tile_px) * tile_px, 3), 255, np.uint8)
            pad[:lh, :lw] = img
            tiles = []
            for y in range(0, pad.shape[0], tile_px):
                for x in range(0, pad.shape[1], tile_px):
                    buf = io.BytesIO()
                    Image.fromarray(pad[y : y + tile_px, x : x + tile_px]).save(buf, "JPEG", quality=90, keep_rgb=True)
                    tables, tile = split_jpeg(buf.getvalue())
                    tiles.append(tile)
            tw.write(iter(tiles), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile_px, tile_px), photometric="rgb",
                     compression="jpeg", jpegtables=tables, compressionargs={"outcolorspace": "RGB"},
                     subsampling=(1, 1), description=desc if k == 0 else None, metadata=None,
                     subfiletype=0 if k == 0 else 1)
    return path


@pytest.fixture(scope="module")
def demo_jpeg(tmp_path_factory):
    """A small YCbCr-JPEG demo slide at 0.25 µm/px (tifffile's encoding, with JFIF)."""
    return write_demo_slide(tmp_path_factory.mktemp("demo") / "demo.tif", size_px=(1200, 1100), seed=1).path


@pytest.fixture(scope="module")
def aperio_rgb(tmp_path_factory, demo_jpeg):
    rgb = tifffile.imread(demo_jpeg)
    return write_aperio_rgb_slide(tmp_path_factory.mktemp("aperio") / "rgb.svs", rgb)


BOXES = [((-40, -30, 600, 580), (320, 305)), ((700, 650, 1300, 1180), (300, 265)), ((10.5, 20.25, 400.75, 300.5), (195, 140))]


@pytest.mark.parametrize("slide_name", ["demo_jpeg", "aperio_rgb"])
def test_full_scale_tiles_decode_exactly_as_openslide(request, slide_name):
    path = request.getfixturevalue(slide_name)
    with Slide(path) as slide:
        level, why = find_jpeg_level(path, slide.level_dimensions[0])
        assert level is not None, why
        assert level.rgb_coded == (slide_name == "aperio_rgb")
        assert (level.tables is not None) == (slide_name == "aperio_rgb")
        reader = JpegRegionReader(level, 1.0, 1)
        for box, out in BOXES:
            w, h = round(box[2] - box[0]), round(box[3] - box[1])
            a = slide.read_at_mpp(box, (w, h))
            b = reader.read_at_mpp(box, (w, h))
            assert np.abs(a.astype(int) - b).max() <= 1, box  # same libjpeg; glass outside the slide


def test_rgb_coded_tiles_need_the_colour_marker(aperio_rgb):
    """Without the Adobe marker libjpeg takes Aperio's RGB components for YCbCr."""
    from dataclasses import replace

    with Slide(aperio_rgb) as slide:
        level, _ = find_jpeg_level(aperio_rgb, slide.level_dimensions[0])
        ref = slide.read_at_mpp((0, 0, 512, 512), (512, 512)).astype(int)
    wrong = JpegRegionReader(replace(level, rgb_coded=False), 1.0, 1).read_at_mpp((0, 0, 512, 512), (512, 512))
    assert np.abs(ref - wrong).mean() > 20


@pytest.mark.parametrize("reduce", [2, 4])
def test_dct_scaled_regions_match_a_bilinear_reduction(demo_jpeg, reduce):
    """What the OpenSlide path does when it reduces a level r× (PIL bilinear)."""
    with Slide(demo_jpeg) as slide:
        level, _ = find_jpeg_level(demo_jpeg, slide.level_dimensions[0])
        reader = JpegRegionReader(level, 1.0, reduce)
        for box in [(-48, -32, 592, 576), (704, 640, 1296, 1184)]:
            size = (box[2] - box[0], box[3] - box[1])
            out = (size[0] // reduce, size[1] // reduce)
            full = Image.fromarray(slide.read_rgb(box[:2], 0, size))
            a = np.asarray(full.resize(out, Image.Resampling.BILINEAR)).astype(int)
            b = reader.read_at_mpp(box, out)
            assert b.shape == a.shape
            assert np.abs(a - b)[2:-2, 2:-2].mean() < 1.5, box


@pytest.mark.parametrize("reduce", [2, 4, 8])
def test_integer_blur_is_within_a_grey_level_of_pils_kernel(reduce):
    """The blur after DCT scaling, in integers, against PIL's float 3 × 3 kernel of the same
    weights: edges kept, no value off by more than one grey level."""
    from PIL import ImageFilter

    from wsi_seg.slide.decode.reduced import _BILINEAR_MATCH, bilinear_match_blur

    rng = np.random.default_rng(reduce)
    noise = Image.fromarray((rng.random((60, 50, 3)) * 255).astype(np.uint8))
    rgb = np.asarray(noise.resize((203, 157), Image.Resampling.BILINEAR))  # texture and noise, odd sizes
    rgb = np.concatenate([rgb, np.full((20, 203, 3), 255, np.uint8), np.zeros((20, 203, 3), np.uint8)])
    a = _BILINEAR_MATCH[reduce]
    k = (a, 1 - 2 * a, a)
    ref = np.asarray(Image.fromarray(rgb).filter(ImageFilter.Kernel((3, 3), [u * v for u in k for v in k], scale=1)))
    out = bilinear_match_blur(rgb, reduce)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.3
    assert np.array_equal(out[[0, -1]], rgb[[0, -1]]) and np.array_equal(out[:, [0, -1]], rgb[:, [0, -1]])
    assert (out[1:-1, 1:-1] != rgb[1:-1, 1:-1]).any()  # it does blur


def test_dct_reduction_is_the_largest_power_of_two_not_above_the_factor():
    assert [dct_reduction(f) for f in (1.0, 1.5, 1.995, 2.0, 3.9, 4.0, 7.0, 8.0, 16.0)] == [1, 1, 2, 2, 2, 4, 4, 8, 8]


def test_tiles_not_in_jpeg_are_refused_with_the_reason(tmp_path):
    path = write_slide(tmp_path / "zlib.tif", blob_image(512), mpp=0.25, compression="zlib")
    level, why = find_jpeg_level(path, (512, 512))
    assert level is None and "compression 8 is not JPEG" in why
    with Slide(path) as slide:
        plan = plan_reader("auto", slide, 0.5, CPU)
        assert plan.used == "openslide" and "not JPEG" in plan.provenance()["reason"]
        with pytest.raises(ConfigError, match="zlib.tif: --reader jpeg-cpu needs pyramid level 0 in JPEG tiles"):
            plan_reader("jpeg-cpu", slide, 0.5, CPU)
        with pytest.raises(ConfigError, match="unknown reader"):
            plan_reader("libjpeg", slide, 0.5, CPU)


def test_auto_picks_by_device_and_records_the_scale(demo_jpeg):
    with Slide(demo_jpeg) as slide:
        cpu = plan_reader("auto", slide, 0.5, CPU)
        assert cpu.provenance() == {"requested": "auto", "used": "jpeg-cpu", "level": 0, "dct_reduction": 2, "tiff_page": 0}
        assert plan_reader("auto", slide, 1.0, CPU).provenance()["level"] == 1  # level 1 is 1.0 µm/px
        assert plan_reader("auto", slide, 0.5, torch.device("cuda")).used == "jpeg-device"
        assert plan_reader("openslide", slide, 0.5, CPU).used == "openslide"


def test_device_decoder_falls_back_per_tile_and_counts(demo_jpeg, monkeypatch):
    import torchvision.io

    with Slide(demo_jpeg) as slide:
        level, _ = find_jpeg_level(demo_jpeg, slide.level_dimensions[0])
    tiles = TileFile(demo_jpeg)
    where = [(0, 0), (0, 1), (1, 1)]
    streams = [tiles.read(level, r, c) for r, c in where]
    reference = TileDecoder(CPU).decode(level, streams, where)
    real = torchvision.io.decode_jpeg

    def picky(data, **kw):  # rejects the second tile, as nvJPEG rejects some variants
        if isinstance(data, list):
            return [picky(d, **kw) for d in data]
        if torch.equal(data, torch.frombuffer(bytearray(streams[1]), dtype=torch.uint8)):
            raise RuntimeError("unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    decoder = TileDecoder(CPU)
    out = decoder.decode(level, streams, where)
    assert decoder.tiles == 3 and decoder.fallbacks == 1
    for a, b in zip(out, reference):
        assert (a.int() - b.int()).abs().max() <= 1


def test_device_decoder_checks_rgb_colour_once_per_level(aperio_rgb, monkeypatch):
    """A device decoder that ignores the Adobe marker is caught and that level decoded on the CPU."""
    import torchvision.io

    with Slide(aperio_rgb) as slide:
        level, _ = find_jpeg_level(aperio_rgb, slide.level_dimensions[0])
    tiles = TileFile(aperio_rgb)
    where = [(1, 1), (1, 2)]
    streams = [tiles.read(level, r, c) for r, c in where]
    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda data, **kw: [real(d, **kw) // 2 for d in data])
    decoder = TileDecoder(CPU)
    out = decoder.decode(level, streams, where)
    assert decoder.fallbacks == 2
    again = decoder.decode(level, streams[:1], where[:1])
    assert decoder.fallbacks == 3 and torch.equal(again[0], out[0])


def test_tensor_small_object_removal_equals_skimage():
    from skimage.morphology import remove_small_objects as skimage_rso

    rng = np.random.default_rng(0)
    for p in (0.3, 0.55, 0.7):
        m = rng.random((67, 91)) < p
        assert np.array_equal(remove_small_objects(torch.from_numpy(m), 12).numpy(), skimage_rso(m, max_size=11))
    rgb = np.asarray(Image.open(io.BytesIO(_demo_png())))
    params = BackgroundSeedParams(min_size_px=50)
    ours = seed_on_device(torch.from_numpy(rgb.copy()).permute(2, 0, 1), params).numpy()
    assert (ours == params.seed(rgb)).mean() > 0.999


def _demo_png() -> bytes:
    rng = np.random.default_rng(3)
    img = np.full((120, 140, 3), 230, np.uint8)
    img[20:90, 30:120] = (150, 80, 140)
    img[rng.random((120, 140)) < 0.08] = 250  # white specks inside tissue: removed
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_at_half_um(tmp_path_factory):
    """A demo slide scanned at 0.5 µm/px: the 1.0 µm/px demo model reads level 0 at 1/2."""
    return write_demo_slide(tmp_path_factory.mktemp("demo05") / "d.tif", size_px=(1000, 1000), mpp=0.5, seed=2).path


@pytest.mark.slow
def test_masks_agree_across_readers_and_the_choice_is_recorded(tmp_path, demo_at_half_um):
    from wsi_seg.model.default import default_model_path

    model = load_checkpoint(default_model_path())  # trained; seeds background on the block
    masks, readers = {}, {}
    for reader in ("openslide", "jpeg-cpu", "jpeg-device"):
        res = segment_slide(demo_at_half_um, tmp_path / f"{reader}.zarr", model,
                            SegmentOptions(device="cpu", workers=0, progress=False, reader=reader))
        g = zarr.open_group(str(res.out), mode="r")
        masks[reader] = g["labels/mask/0"][:]
        readers[reader] = g.attrs["wsi_seg"]["inference"]["reader"]
    assert readers["jpeg-cpu"]["dct_reduction"] == 2 and readers["openslide"]["used"] == "openslide"
    assert readers["jpeg-device"]["device_tiles"] > 0 and readers["jpeg-device"]["cpu_fallbacks"] == 0
    assert json.dumps(readers)
    assert (masks["openslide"] > 0).mean() > 0.3
    # the DCT-scaled image differs from the bilinear reduction by ~0.5 grey levels, which
    # flips ~1 % of this model's pixels on a slide this small (0.4 % on the 1400² demo)
    assert (masks["jpeg-cpu"] == masks["openslide"]).mean() >= 0.98
    assert (masks["jpeg-device"] == masks["openslide"]).mean() >= 0.995


def test_undecodable_tile_is_one_slide_error(tmp_path, demo_jpeg):
    path = tmp_path / "broken.tif"
    data = bytearray(demo_jpeg.read_bytes())
    with tifffile.TiffFile(demo_jpeg) as tif:
        off = tif.pages[0].dataoffsets[0]
    data[off : off + 2] = b"\x00\x00"  # not a JPEG stream any more
    path.write_bytes(bytes(data))
    level, _ = find_jpeg_level(path, (1200, 1100))
    with pytest.raises(SlideError, match=r"broken.tif: cannot decode JPEG tile \(0, 0\) of TIFF page 0"):
        JpegRegionReader(level, 1.0, 2).read_at_mpp((0, 0, 256, 256), (128, 128))
    decoder = TileDecoder(CPU)
    with pytest.raises(SlideError, match=r"broken.tif: cannot decode JPEG tile \(0, 0\)"):
        decoder.decode(level, [bytes(data[off : off + 500])], [(0, 0)])


def test_prefetched_items_keep_order_raise_errors_and_stop_early():
    import threading

    from wsi_seg.inference.reader import prefetched

    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise SlideError("x.svs: cannot decode")

    it = prefetched(failing())
    assert next(it) == 1
    with pytest.raises(SlideError, match="cannot decode"):
        next(it)
    before = threading.active_count()
    it = prefetched(iter(range(1000)), depth=1)
    assert next(it) == 0
    it.close()  # the consumer stops: the thread ends
    assert threading.active_count() <= before


def test_ordered_map_keeps_order_raises_errors_and_stops_early():
    import threading
    import time

    from wsi_seg.inference.reader import ordered_map

    def slow_first(i):  # later items finish first; they still come in order
        time.sleep(0.02 if i == 0 else 0)
        return i * i

    assert list(ordered_map(slow_first, 12, threads=3)) == [i * i for i in range(12)]

    def failing(i):
        if i == 2:
            raise SlideError("x.svs: cannot decode")
        return i

    it = ordered_map(failing, 10, threads=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(SlideError, match="cannot decode"):
        next(it)
    started = []
    before = threading.active_count()
    it = ordered_map(lambda i: started.append(i) or i, 1000, threads=2, depth=3)
    assert next(it) == 0
    it.close()  # the consumer stops: nothing more starts, the threads end
    assert len(started) <= 4 and threading.active_count() <= before


def test_reading_threads_give_the_blocks_one_thread_gives(demo_jpeg):
    """Several threads read a slide's blocks at once (one TIFF descriptor, pread): the
    items, in order, are those of one thread; reader processes hand theirs over in
    shared memory."""
    from wsi_seg.inference.reader import BlockReader
    from wsi_seg.inference.segment import plan as plan_run

    with Slide(demo_jpeg) as slide:
        grid, tissue = plan_run(slide, 0.5, 224, SegmentOptions(chunk_px=512))  # several blocks
        reader_plan = plan_reader("auto", slide, 0.5, CPU)
        mpp = slide.mpp
    assert reader_plan.used == "jpeg-cpu" and reader_plan.parallel_reads
    blocks = grid.blocks(tissue)
    seed = BackgroundSeedParams()

    def items(workers, threads):
        return list(BlockReader(reader_plan, str(demo_jpeg), mpp, grid, blocks, seed, CPU, workers, threads))

    one, three, procs = items(0, 1), items(0, 3), items(1, 1)
    assert len(one) == len(blocks) > 1
    for a, b, c in zip(one, three, procs):
        assert a["block"] == b["block"] == c["block"]
        for key in ("patches", "background"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    assert all(c["patches"].is_shared() for c in procs)  # made in shared memory by the reader process
    assert one[0]["patches"].shape[1:] == (3, 224, 224) and one[0]["patches"].is_contiguous()


def test_slides_whose_library_is_not_known_thread_safe_are_read_on_one_thread(tmp_path, demo_jpeg):
    """OpenSlide's PNG reader broke when two threads read at once: plain images (and
    DICOM through wsidicom) are read by one thread, TIFF slides by several."""
    png = tmp_path / "image.png"
    Image.fromarray(blob_image(300)).save(png)
    with Slide(png, mpp=0.5) as slide:
        assert not plan_reader("auto", slide, 0.5, CPU).parallel_reads
        assert not plan_reader("openslide", slide, 0.5, CPU).parallel_reads
    with Slide(demo_jpeg) as slide:
        assert plan_reader("openslide", slide, 0.5, CPU).parallel_reads


def test_a_sparse_block_cuts_its_patches_where_they_lie(blob_slide):
    """A block reads the box around its patches only; each patch is the slide's pixels
    under its own window (the slide is at the model's µm/px: no resampling)."""
    from wsi_seg.inference.reader import BlockDataset
    from wsi_seg.inference.tiling import make_grid

    with Slide(blob_slide) as slide:
        grid = make_grid(slide.dimensions, slide.mpp, slide.mpp, 224, 32)
        full = slide.read_at_mpp((0, 0, *slide.dimensions), slide.dimensions)
        mpp = slide.mpp
    selected = np.zeros(grid.grid_shape, bool)
    selected[1, 2] = selected[3, 1] = True
    [block] = grid.blocks(selected)
    item = BlockDataset(str(blob_slide), mpp, grid, [block])[0]
    for k, (i, j) in enumerate(block.patches):
        y0, x0, y1, x1 = grid.patch_window(i, j)
        assert np.array_equal(item["patches"][k].numpy(), full[y0:y1, x0:x1].transpose(2, 0, 1)), (i, j)

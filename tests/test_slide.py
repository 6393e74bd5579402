import numpy as np
import pytest
from conftest import blob_image, write_slide

from wsi_seg.errors import MissingMppError, SlideError
from wsi_seg.slide.slide import Slide


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    rgb = blob_image(2048)
    return write_slide(tmp_path_factory.mktemp("s") / "p.tif", rgb, mpp=0.25, downsamples=(4, 16)), rgb


def test_levels_and_mpp(pyramid):
    path, _ = pyramid
    with Slide(path) as s:
        assert s.mpp == pytest.approx(0.25)
        assert s.level_downsamples == pytest.approx((1, 4, 16))
        info = s.info()
        assert info.vendor == "aperio" and info.mpp_source == "metadata"


@pytest.mark.parametrize("target,level", [(0.25, 0), (0.5, 0), (0.99, 0), (1.0, 1), (2.0, 1), (4.0, 2), (50.0, 2)])
def test_level_for_mpp_is_nearest_not_coarser(pyramid, target, level):
    with Slide(pyramid[0]) as s:
        assert s.level_for_mpp(target) == level


def test_read_at_mpp_resizes_from_the_nearest_level(pyramid, monkeypatch):
    path, rgb = pyramid
    with Slide(path) as s:
        calls = []
        orig = s.read_rgb
        monkeypatch.setattr(s, "read_rgb", lambda xy, level, size: calls.append(level) or orig(xy, level, size))
        out = s.read_at_mpp((512, 512, 1536, 1536), (256, 256))  # 1.0 µm/px → level 1, no resize
        assert calls == [1] and out.shape == (256, 256, 3)
        same = s.read_at_mpp((0, 0, 1024, 1024), (1024, 1024))
        assert np.array_equal(same, rgb[:1024, :1024])


def test_outside_the_slide_reads_as_glass(pyramid):
    with Slide(pyramid[0]) as s:
        out = s.read_rgb((-100, -100), 0, (50, 50))
        assert (out == 255).all()


def test_thumbnail(pyramid):
    with Slide(pyramid[0]) as s:
        thumb, mpp = s.thumbnail(8.0)
        assert thumb.shape == (64, 64, 3) and mpp == pytest.approx(8.0)


def test_missing_mpp(tmp_path):
    path = write_slide(tmp_path / "nompp.tif", blob_image(512), mpp=None)
    with Slide(path) as s:
        with pytest.raises(MissingMppError, match="--mpp"):
            _ = s.mpp
    with Slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.info().mpp_source == "user"


def test_unsupported_and_missing_files(tmp_path):
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    with pytest.raises(SlideError, match="notes.svs"):
        Slide(bad)
    with pytest.raises(SlideError, match="not found"):
        Slide(tmp_path / "missing.svs")


def test_a_slide_cut_short_reads_as_damaged_not_unsupported(tmp_path, blob_slide):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(blob_slide.read_bytes()[:3000])  # a copy that stopped early: its directories are gone
    with pytest.raises(SlideError, match=r"cut.svs: damaged or cut-short TIFF slide: .*copy the slide again"):
        Slide(cut)
    half = tmp_path / "half.tif"  # directories whole, tiles missing: not to be read as a plain TIFF
    data = blob_slide.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"half.tif: damaged or cut-short TIFF slide: its image data runs to byte "
                                         r"[\d,]+, past the end of the file"):
        Slide(half)
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="unsupported or unreadable slide format"):
        Slide(text)


def test_thumbnail_of_jpeg_tiles_is_decoded_at_reduced_scale_and_matches_openslide(tmp_path, monkeypatch):
    """Tissue detection's thumbnail comes from the level's JPEG tiles at 1/8 scale (libjpeg
    skips most of the work), close to OpenSlide's full decode and box resize."""
    from wsi_seg.slide.tissue import tissue_mask
    from wsi_seg.synthetic import write_demo_slide

    demo = write_demo_slide(tmp_path / "two.tif", size_px=(4096, 4096), mpp=0.25, seed=1, levels=2)
    with Slide(demo.path) as slide:
        assert slide.level_dimensions[1] == (1024, 1024)
        fast, mpp = slide.thumbnail(8.0)  # level 1 is 1 µm/px: 1/8 scale gives 8 µm/px
        assert slide._jpeg_thumbnail(1, (128, 128)) is not None
        monkeypatch.setattr(slide, "_jpeg_thumbnail", lambda *a: None)
        slow, mpp_slow = slide.thumbnail(8.0)
    assert fast.shape == slow.shape == (128, 128, 3) and mpp == mpp_slow == 8.0
    assert np.abs(fast.astype(int) - slow).mean() < 4
    assert (tissue_mask(fast, mpp) == tissue_mask(slow, mpp)).mean() > 0.99

import numpy as np
import pytest

from wsi_seg.slide.tissue import TissueParams, background_seed, tissue_mask


def test_background_seed_drops_small_white_regions():
    rgb = np.full((100, 100, 3), 150, np.uint8)
    rgb[:, 60:] = 245  # glass
    rgb[10:14, 10:14] = 250  # a 16-px lumen inside tissue
    seed = background_seed(rgb, gray_threshold=200, min_size_px=20)
    assert seed[:, 60:].all()
    assert not seed[10:14, 10:14].any()
    assert background_seed(rgb, min_size_px=0)[10:14, 10:14].all()


def test_tissue_mask_sizes_hold_across_resolutions():
    params = TissueParams(min_tissue_um2=400.0, max_hole_um2=400.0)
    for mpp, scale in [(8.0, 1), (4.0, 2)]:
        rgb = np.full((60 * scale, 60 * scale, 3), 240, np.uint8)
        rgb[5 * scale : 45 * scale, 5 * scale : 45 * scale] = (170, 90, 150)  # 320 µm square of tissue
        rgb[50 * scale : 52 * scale, 50 * scale : 52 * scale] = (120, 60, 110)  # 16 µm speck: too small
        rgb[20 * scale : 21 * scale, 20 * scale : 21 * scale] = 245  # 8 µm hole: filled
        mask = tissue_mask(rgb, mpp, params)
        assert mask[5 * scale : 45 * scale, 5 * scale : 45 * scale].all()
        assert not mask[50 * scale : 52 * scale, 50 * scale : 52 * scale].any()
        assert mask.sum() == (40 * scale) ** 2


def test_pale_but_stained_tissue_is_tissue():
    rgb = np.full((40, 40, 3), 240, np.uint8)
    rgb[:20] = (235, 200, 225)  # bright eosin: gray > 220 but saturated
    mask = tissue_mask(rgb, 8.0, TissueParams(min_tissue_um2=0, max_hole_um2=0))
    assert mask[:20].all() and not mask[20:].any()


@pytest.mark.parametrize("threshold", [200, 220, 0, 254.5, 128.25, 210.3])
def test_the_integer_gray_threshold_agrees_with_rgb2gray_on_every_colour(threshold):
    """Background seeding compares gray values in integers where that is exact: the same
    map as skimage's float path for all 2²⁴ colours (210.3 takes the float path)."""
    from wsi_seg.slide.tissue import _brighter_than, _gray_uint8

    rg = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(256, 256, 2)
    for blue in range(0, 256, 1 if threshold == 200 else 5):
        rgb = np.concatenate([rg, np.full((256, 256, 1), blue)], -1).astype(np.uint8)
        assert np.array_equal(_brighter_than(rgb, threshold), _gray_uint8(rgb) > threshold), blue

import numpy as np
import pytest

from wsi_seg.errors import ConfigError
from wsi_seg.inference.tiling import make_grid


@pytest.mark.parametrize("size,overlap", [((1000, 700), 0), ((1000, 700), 32), ((224, 224), 48), ((900, 1301), 31)])
def test_owned_squares_partition_the_output(size, overlap):
    grid = make_grid(size, slide_mpp=0.5, model_mpp=0.5, patch_px=224, overlap_px=overlap)
    h, w = grid.out_shape
    assert (h, w) == (size[1], size[0])
    cover = np.zeros((h, w), int)
    every_patch = np.ones(grid.grid_shape, bool)
    for block in grid.blocks(every_patch):
        assert (block.y1 - block.y0) <= grid.block_px and (block.x1 - block.x0) <= grid.block_px
        for i, j in block.patches:
            y, x = block.y0 + i * grid.stride_px, block.x0 + j * grid.stride_px
            assert y < block.y1 and x < block.x1
            cover[y : min(y + grid.stride_px, block.y1), x : min(x + grid.stride_px, block.x1)] += 1
    assert (cover == 1).all()


def test_patch_window_centres_owned_square():
    grid = make_grid((2000, 2000), 0.5, 0.5, 224, 32)
    assert grid.stride_px == 192 and grid.margin_px == 16
    assert grid.patch_window(0, 0) == (-16, -16, 208, 208)
    assert grid.patch_window(2, 1) == (368, 176, 592, 400)


def test_scale_from_mpp():
    grid = make_grid((8192, 4096), slide_mpp=0.25, model_mpp=0.5, patch_px=224, overlap_px=0)
    assert grid.out_shape == (2048, 4096)
    assert grid.scale == 0.5


def test_block_read_window_covers_its_patches():
    grid = make_grid((1000, 1000), 0.5, 0.5, 224, 32)
    blocks = grid.blocks(np.ones(grid.grid_shape, bool))
    for block in blocks:
        y0, x0, y1, x1 = grid.block_read_window(block)
        for i, j in block.patches:
            wy0, wx0, wy1, wx1 = grid.patch_window(block.index[0] * grid.block_patches + i, block.index[1] * grid.block_patches + j)
            assert y0 <= wy0 and x0 <= wx0 and wy1 <= y1 and wx1 <= x1


def test_tissue_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    tissue = rng.random((50, 70)) > 0.6
    grid = make_grid((700 * 4, 500 * 4), 0.5, 0.5, 224, 32)  # thumbnail is 1/40 of the output
    frac = grid.tissue_fractions(tissue)
    fy, fx = tissue.shape[0] / grid.out_shape[0], tissue.shape[1] / grid.out_shape[1]
    for r, c in [(0, 0), (3, 4), (frac.shape[0] - 1, frac.shape[1] - 1)]:
        y0, x0, y1, x1 = grid.patch_window(r, c)
        sub = tissue[max(0, int(np.floor(y0 * fy))) : int(np.ceil(y1 * fy)), max(0, int(np.floor(x0 * fx))) : int(np.ceil(x1 * fx))]
        expected = sub.sum() / ((y1 - y0) * fy * (x1 - x0) * fx)
        assert frac[r, c] == pytest.approx(min(expected, 1.0), rel=1e-5)


def test_only_blocks_with_tissue_run():
    grid = make_grid((2000, 2000), 0.5, 0.5, 224, 0)
    tissue_patches = np.zeros(grid.grid_shape, bool)
    tissue_patches[0, 0] = tissue_patches[5, 7] = True
    blocks = grid.blocks(tissue_patches)
    assert sum(len(b.patches) for b in blocks) == 2
    assert len(blocks) == 2


def test_bad_overlap():
    with pytest.raises(ConfigError):
        make_grid((1000, 1000), 0.5, 0.5, 224, 224)


def test_a_block_reads_only_the_box_around_its_patches():
    grid = make_grid((3000, 3000), 0.5, 0.5, 224, 32)
    selected = np.zeros(grid.grid_shape, bool)
    selected[1, 2] = selected[3, 3] = True  # two patches of the first block, the rest glass
    [block] = grid.blocks(selected)
    assert block.first_patch == (1, 2)
    y0, x0, y1, x1 = grid.block_read_window(block)
    assert (y0, x0) == grid.patch_window(1, 2)[:2] and (y1, x1) == grid.patch_window(3, 3)[2:]
    s = grid.stride_px
    assert grid.patch_corners(block) == [(0, 0), (2 * s, s)]  # where each patch lies in that window

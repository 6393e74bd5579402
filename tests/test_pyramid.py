"""The pyramid built while inference runs equals the one built from the finished level 0."""

import numpy as np
import pytest
import zarr

from wsi_seg.output import ResultStore
from wsi_seg.pyramid import StreamingPyramid, halve, level_shapes


def test_level_shapes_halve_until_one_chunk():
    assert level_shapes((1000, 3001), 256) == [(1000, 3001), (500, 1500), (250, 750), (125, 375), (62, 187)]
    assert level_shapes((200, 100), 256) == [(200, 100)]


def test_halve_rounds_the_mean_and_keeps_top_left_labels():
    acts = np.array([[[0, 1, 9], [1, 1, 9], [7, 7, 7]]], np.uint8)  # (1, 3, 3): odd edges dropped
    mask = np.array([[3, 1, 2], [1, 1, 2], [5, 5, 5]], np.uint8)
    a, m = halve(acts, mask)
    assert a.tolist() == [[[1]]] and m.tolist() == [[3]]  # (0+1+1+1)/4 = 0.75 → 1
    a, _ = halve(np.full((1, 2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8))
    assert a.tolist() == [[[255]]]  # no uint8 overflow


@pytest.mark.parametrize("shape", [(700, 1000), (513, 257)])
def test_streaming_pyramid_equals_the_pass_over_level_0(tmp_path, shape):
    rng = np.random.default_rng(0)
    chunk, classes = 64, 3
    grid = (-(-shape[0] // chunk), -(-shape[1] // chunk))
    chunks = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    written = [c for c in chunks if rng.random() < 0.7]  # the others stay glass (fill 0)
    shapes = level_shapes(shape, chunk)
    assert len(shapes) >= 4

    stores = {}
    for name in ("streamed", "posthoc"):
        stores[name] = ResultStore.create(tmp_path / f"{name}.zarr", shape, classes, chunk, {})
        stores[name].open_for_writing()
    streamed = stores["streamed"]
    streamed.create_levels(shapes)
    pyramid = StreamingPyramid(shapes, chunk, classes, written, streamed.write_level_chunk)
    for n in rng.permutation(len(written)):  # any arrival order
        i, j = written[n]
        h, w = min(chunk, shape[0] - i * chunk), min(chunk, shape[1] - j * chunk)
        acts = rng.integers(0, 256, (classes, h, w), dtype=np.uint8)
        mask = rng.integers(0, classes + 1, (h, w), dtype=np.uint8)
        for store in stores.values():
            store.write_block((i, j), i * chunk, j * chunk, acts, mask)
        pyramid.add((i, j), acts, mask)
    assert pyramid.pending == 0
    assert stores["posthoc"].build_pyramid(chunk, progress=False) == pyramid.levels == len(shapes)
    a = zarr.open_group(str(tmp_path / "streamed.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "posthoc.zarr"), mode="r")
    for level in range(1, len(shapes)):
        for name in (str(level), f"labels/mask/{level}"):
            assert a[name].shape == b[name].shape
            assert np.array_equal(a[name][:], b[name][:]), name


def test_odd_chunks_are_refused():
    with pytest.raises(ValueError, match="even"):
        StreamingPyramid([(100, 100), (50, 50)], 33, 2, [(0, 0)], lambda *a: None)

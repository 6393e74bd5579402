"""The pyramid: one halving, streamed while inference runs or replayed from level 0, same result."""

import numpy as np
import pytest
import zarr

from wsi_seg.result.pyramid import StreamingPyramid, halve, halve_levels, level_shapes
from wsi_seg.result.store import ResultStore


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


@pytest.mark.parametrize("shape", [(300, 450), (513, 257)])
def test_streamed_resumed_and_posthoc_pyramids_are_equal(tmp_path, shape):
    """The store's three ways to its pyramid: streamed as chunks arrive, streamed after an
    interruption (finished chunks replayed from level 0), halved from level 0 at the end."""
    rng = np.random.default_rng(0)
    chunk, classes = 64, 3
    grid = (-(-shape[0] // chunk), -(-shape[1] // chunk))
    chunks = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    written = [c for c in chunks if rng.random() < 0.7]  # the others stay glass (fill 0)
    assert len(level_shapes(shape, chunk)) >= 4
    contents = {}
    for i, j in written:
        h, w = min(chunk, shape[0] - i * chunk), min(chunk, shape[1] - j * chunk)
        contents[(i, j)] = (rng.integers(0, 256, (classes, h, w), dtype=np.uint8),
                            rng.integers(0, classes + 1, (h, w), dtype=np.uint8))
    order = [written[n] for n in rng.permutation(len(written))]  # any arrival order
    prov = {"mpp": 0.5, "class_names": ["a", "b", "c"], "class_colors": [[1, 2, 3]] * 3}

    def write(store, indices):
        for i, j in indices:
            store.write_block((i, j), i * chunk, j * chunk, *contents[(i, j)])

    streamed = ResultStore.create(tmp_path / "streamed.partial", shape, classes, chunk, prov)
    streamed.open_for_writing(expected=written)
    write(streamed, order)
    assert streamed._pyramid.pending == 0  # every parent was written while chunks came

    interrupted = ResultStore.create(tmp_path / "resumed.partial", shape, classes, chunk, prov)
    interrupted.open_for_writing(expected=written)
    write(interrupted, order[: len(order) // 2])
    interrupted.close()
    resumed = ResultStore(tmp_path / "resumed.partial")
    assert resumed.done_blocks() == set(order[: len(order) // 2])
    resumed.open_for_writing(expected=written)
    write(resumed, order[len(order) // 2 :])
    assert resumed._pyramid.pending == 0

    posthoc = ResultStore.create(tmp_path / "posthoc.partial", shape, classes, chunk, prov)
    posthoc.open_for_writing()  # no expected chunks: halved from level 0 in finish
    write(posthoc, order)
    assert posthoc._pyramid is None

    levels = {name: store.finish(tmp_path / f"{name}.zarr", progress=False)
              for name, store in (("streamed", streamed), ("resumed", resumed), ("posthoc", posthoc))}
    assert set(levels.values()) == {len(level_shapes(shape, chunk))}
    a = zarr.open_group(str(tmp_path / "posthoc.zarr"), mode="r")
    for name in ("streamed", "resumed"):
        b = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
        for level in range(levels[name]):
            for arr in (str(level), f"labels/mask/{level}"):
                assert a[arr].shape == b[arr].shape
                assert np.array_equal(a[arr][:], b[arr][:]), (name, arr)


def test_halve_levels_equals_halving_the_whole_image_for_odd_chunks():
    rng = np.random.default_rng(1)
    acts = rng.integers(0, 256, (2, 77, 53), dtype=np.uint8)
    mask = rng.integers(0, 5, (77, 53), dtype=np.uint8)
    shapes = level_shapes(mask.shape, 9)
    levels = [(acts, mask)] + [(np.zeros((2, h, w), np.uint8), np.zeros((h, w), np.uint8)) for h, w in shapes[1:]]

    def write(level, y0, x0, a, m):
        levels[level][0][:, y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = a
        levels[level][1][y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m

    halve_levels(levels, 9, write)
    want_a, want_m = acts, mask
    for level in range(1, len(shapes)):
        want_a, want_m = halve(want_a, want_m)
        assert np.array_equal(levels[level][0], want_a) and np.array_equal(levels[level][1], want_m), level


def test_odd_chunks_are_refused():
    with pytest.raises(ValueError, match="even"):
        StreamingPyramid([(100, 100), (50, 50)], 33, 2, [(0, 0)], lambda *a: None)

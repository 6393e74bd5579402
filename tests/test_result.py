"""Reading results back: ``wsi_seg.result.reader.Result`` over stores written by ``ResultStore``."""

import json
import shutil

import numpy as np
import pytest

from wsi_seg.errors import DatasetError, ResultError
from wsi_seg.result.format import is_partial, partial_path, result_name
from wsi_seg.result.pyramid import halve
from wsi_seg.result.reader import Result, finest_level_within
from wsi_seg.result.store import ResultStore

NAMES = ["TE", "NEC", "LYM"]
COLORS = [[205, 51, 51], [0, 128, 0], [0, 0, 255]]


def write_result(root, shape, chunk, seed=0, complete=True, stream=True):
    """A result of random content, written chunk by chunk; returns (path, acts, mask).

    ``stream``: the store knows the chunks to come and streams the pyramid (even chunks)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    acts = rng.integers(0, 256, (len(NAMES), h, w), dtype=np.uint8)
    mask = rng.integers(0, len(NAMES) + 1, (h, w), dtype=np.uint8)
    prov = {"slide": {"path": "/slides/s.svs", "mpp": 0.25, "fingerprint": "abc"}, "model": {"sha256": "f00"},
            "mpp": 0.5, "class_names": NAMES, "class_colors": COLORS, "patch_size_px": 224}
    tmp = partial_path(root)
    store = ResultStore.create(tmp, shape, len(NAMES), chunk, prov)
    rows, cols = -(-h // chunk), -(-w // chunk)
    store.open_for_writing(expected=[(i, j) for i in range(rows) for j in range(cols)] if stream else None)
    for i in range(rows):
        for j in range(-(-w // chunk)):
            ys, xs = slice(i * chunk, (i + 1) * chunk), slice(j * chunk, (j + 1) * chunk)
            store.write_block((i, j), i * chunk, j * chunk, acts[:, ys, xs], mask[ys, xs])
    store.close()
    if not complete:
        return tmp, acts, mask
    store.finish(root, progress=False)
    return root, acts, mask


@pytest.mark.parametrize("shape, chunk, stream", [((100, 150), 16, True), ((97, 131), 16, False),
                                                  ((97, 131), 15, True), ((64, 33), 7, True)])
def test_levels_equal_the_in_memory_pyramid_for_any_chunk_size(tmp_path, shape, chunk, stream):
    path, acts, mask = write_result(tmp_path / "r.zarr", shape, chunk, stream=stream)
    result = Result.open(path)
    assert result.complete and result.levels[0] == 0 and len(result.levels) > 1
    for level in result.levels:
        assert np.array_equal(result.mask(level)[:], mask), level
        assert np.array_equal(result.activations(level)[:], acts), level
        assert result.level_shape(level) == mask.shape
        assert result.level_mpp(level) == 0.5 * 2**level
        acts, mask = halve(acts, mask)


def test_provenance_classes_and_level_choice(tmp_path):
    path, _, _ = write_result(tmp_path / "slide.zarr", (300, 200), 32)
    result = Result.open(str(path) + "/")
    assert result.name == "slide" and result.path == path
    assert result.class_names == ("TE", "NEC", "LYM") and result.class_colors[0] == (205, 51, 51)
    prov = result.provenance
    assert result.mpp == prov.mpp == 0.5 and prov.complete and prov.patch_size_px == 224
    assert prov.slide.mpp == 0.25 and prov.slide.fingerprint == "abc" and str(prov.slide.path) == "/slides/s.svs"
    assert prov.model.sha256 == "f00" and prov.raw["class_names"] == NAMES
    assert result.levels == (0, 1, 2, 3, 4)  # 300 → 150 → 75 → 37 → 18 px: halved until within a 32-px chunk
    assert result.pick_level(300) == 0 and result.pick_level(299) == 1 and result.pick_level(75) == 2
    assert result.pick_level(1) == 4  # nothing fits: the coarsest
    assert result.level_for_mpp(0.5) == 0 and result.level_for_mpp(1.9) == 1 and result.level_for_mpp(100) == 4
    assert result.level_for_mpp(0.1) == 0  # finer than any level: level 0
    placement = result.placement()
    assert placement.scale_um == (0.5, 0.5) and placement.translation_um == (0.0, 0.0)


def test_level_choice_over_shapes_reads_only_what_it_needs():
    read = []

    def shapes():
        for shape in [(3, 900, 400), (3, 450, 200), (3, 225, 100)]:  # (C, H, W) counts its last two axes
            read.append(shape)
            yield shape

    assert finest_level_within(shapes(), 450) == 1 and len(read) == 2  # stops at the level chosen
    assert finest_level_within([(900, 400), (450, 200)], 10) == 1  # nothing fits: the coarsest
    with pytest.raises(ValueError, match="at least one level"):
        finest_level_within([], 10)


def test_result_names_with_and_without_partial(tmp_path):
    out = tmp_path / "slide.zarr"
    assert is_partial(partial_path(out)) and not is_partial(out)
    assert result_name(out) == result_name(partial_path(out)) == "slide"


def test_partial_and_incomplete_results_are_refused_unless_asked(tmp_path):
    path, _, mask = write_result(tmp_path / "run.zarr", (64, 64), 16, complete=False, stream=False)
    assert path.name == "run.zarr.partial"
    with pytest.raises(ResultError, match="incomplete .*rerun the same `wsi-seg segment`") as err:
        Result.open(path)
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
    partial = Result.open(path, allow_incomplete=True)
    assert not partial.complete and partial.name == "run" and partial.levels == (0,)
    assert np.array_equal(partial.mask(0)[:], mask)
    assert partial.placement().scale_um == (0.5, 0.5)  # no OME metadata yet: µm/px of level 0
    # a complete flag inside a folder still named .partial (renamed by hand, copied mid-run)
    done, _, _ = write_result(tmp_path / "done.zarr", (64, 64), 16)
    copy = partial_path(tmp_path / "copy.zarr")
    shutil.copytree(done, copy)
    with pytest.raises(ResultError, match="incomplete"):
        Result.open(copy)


def test_not_a_result_missing_labels_and_bad_levels(tmp_path):
    import zarr

    for bad, why in ((tmp_path / "missing.zarr", "no such folder"), (tmp_path / "plain", "no 'wsi_seg' attributes")):
        if bad.name == "plain":
            zarr.open_group(str(bad), mode="w").create_array("0", shape=(4,), dtype="uint8")
        with pytest.raises(ResultError, match=f"not a wsi-seg result \\({why}") as err:
            Result.open(bad)
        assert str(bad) in str(err.value)
    path, _, _ = write_result(tmp_path / "r.zarr", (64, 64), 16)
    with pytest.raises(ResultError, match="no mask level 7; the result has levels 0–2"):
        Result.open(path).mask(7)
    shutil.rmtree(path / "labels")
    with pytest.raises(ResultError, match="r.zarr: cannot read the result's arrays"):
        Result.open(path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["wsi_seg"]["class_colors"] = COLORS[:2]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="3 classes, 2 colours"):  # ResultError is a DatasetError
        Result.open(path)

"""Saving corrections to labels/corrected: touched chunks only, pyramid, provenance, crash safety, bad input."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import zarr
from conftest import write_result

import wsi_seg.result.corrections as corrections
from wsi_seg.errors import ConfigError, OutputError, WsiSegError
from wsi_seg.result.corrections import (
    corrections_history,
    pending_chunks,
    save_corrections,
)
from wsi_seg.result.format import pending_corrections
from wsi_seg.result.reader import Result

CHUNK = 16


def base_mask() -> np.ndarray:
    """64 × 80 px: TE everywhere but a NEC square and a 1-px LYM checkerboard row."""
    m = np.ones((64, 80), np.uint8)
    m[8:24, 40:56] = 2
    m[60, ::2] = 3
    return m


@pytest.fixture
def result(tmp_path):
    return write_result(tmp_path / "r.zarr", base_mask(), chunk_px=CHUNK)


def files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pyramid_is_consistent(res: Result, labels: str) -> bool:
    return all(
        np.array_equal(res.mask(lv, labels)[:], res.mask(lv - 1, labels)[:][: 2 * res.level_shape(lv)[0] : 2,
                                                                           : 2 * res.level_shape(lv)[1] : 2])
        for lv in res.levels[1:]
    )


def test_save_writes_touched_chunks_only_and_keeps_the_mask(result):
    mask_files = files(result / "labels" / "mask")
    before = Result.open(result).mask(0)[20:30, 30:40]
    after = before.copy()
    after[2:6, 1:9] = 3  # level-0 rows 22–25, cols 31–38: chunks (1, 1) and (1, 2)
    rec = save_corrections(result, (20, 30), before, after, author="tester")
    assert rec.chunks == [(1, 1), (1, 2)] and rec.pixels_changed == 32 and rec.author == "tester"
    res = Result.open(result)
    assert res.label_names == ("mask", "corrected") and res.current_labels == "corrected"
    expected = base_mask()
    expected[22:26, 31:39] = 3
    assert np.array_equal(res.mask(0, "corrected")[:], expected)
    assert np.array_equal(res.mask(0)[:], base_mask()) and files(result / "labels" / "mask") == mask_files
    assert pyramid_is_consistent(res, "corrected")
    (entry,) = corrections_history(res)
    assert entry["author"] == "tester" and entry["chunks"] == [[1, 1], [1, 2]] and entry["utc"].endswith("+00:00")

    # a second save rewrites only its own chunk files (level 0) and their parents
    snap = files(result / "labels" / "corrected")
    cur = res.mask(0, "corrected")[0:4, 0:4]
    new = cur.copy()
    new[1, 1] = 0
    save_corrections(result, (0, 0), cur, new)
    changed = {k for k, v in files(result / "labels" / "corrected").items() if snap.get(k) != v}
    level0 = {k for k in changed if k.startswith("0/")}
    assert level0 == {"0/c/0/0"}, changed
    assert all(k.split("/")[0] in ("0", "1", "2", "zarr.json") for k in changed)
    assert len(corrections_history(Result.open(result))) == 2


def test_edit_painted_at_a_coarse_level_keeps_untouched_detail(result):
    res = Result.open(result)
    before = res.mask(1)[:]  # 32 × 40; the LYM checkerboard row is lost at this level
    after = before.copy()
    after[0:2, 0:2] = 2  # 2 × 2 level-1 px = 4 × 4 level-0 px
    save_corrections(result, (0, 0), before, after, level=1)
    got = Result.open(result).mask(0, "corrected")[:]
    expected = base_mask()
    expected[0:4, 0:4] = 2
    assert np.array_equal(got, expected)  # row 60's 1-px LYM detail survives


def test_crash_mid_save_leaves_chunks_old_or_new_and_the_next_save_heals_the_pyramid(result, monkeypatch):
    res = Result.open(result)
    full = res.mask(0)[:]
    after = full.copy()
    after[:, :] = 4 - full  # swap classes 1↔3, 2↔2: many chunks change
    after[full == 0] = 0
    real = corrections._write_chunks

    def write_two_then_die(array, edits, values):
        keep = dict(list(edits.items())[:2])
        real(array, keep, {k: values[k] for k in keep})
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corrections, "_write_chunks", write_two_then_die)
    with pytest.raises(OutputError, match="saving corrections failed.*save again"):
        save_corrections(result, (0, 0), full, after)
    assert pending_corrections(result)
    group = zarr.open_group(str(result / "labels" / "corrected"), mode="r")
    got = group["0"][:]  # readable
    for i in range(0, 64, CHUNK):
        for j in range(0, 80, CHUNK):
            block = got[i : i + CHUNK, j : j + CHUNK]
            assert np.array_equal(block, full[i : i + CHUNK, j : j + CHUNK]) or np.array_equal(
                block, after[i : i + CHUNK, j : j + CHUNK])
    assert len(group.attrs["wsi_seg_corrections"]["pending"]["chunks"]) == 20

    monkeypatch.setattr(corrections, "_write_chunks", real)


@pytest.mark.parametrize("then", ["empty save", "report"])
def test_an_interrupted_save_is_finished_by_the_next_save_or_read(result, monkeypatch, caplog, then):
    """An empty save ("save again to finish" with nothing new) and any reader (report,
    export, napari) rebuild the coarse levels an interrupted save left stale."""
    res = Result.open(result)
    full = res.mask(0)[:]
    after = np.where(full > 0, 4 - full, 0).astype(np.uint8)
    real = corrections._write_chunks

    def write_all_then_die(array, edits, values):  # level 0 written, the pyramid above it not
        real(array, edits, values)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corrections, "_write_chunks", write_all_then_die)
    with pytest.raises(OutputError):
        save_corrections(result, (0, 0), full, after)
    monkeypatch.setattr(corrections, "_write_chunks", real)
    assert pending_corrections(result)
    with caplog.at_level("WARNING"):
        if then == "empty save":
            cur = full[:4, :4]
            assert save_corrections(result, (0, 0), cur, cur).chunks == []
        res = Result.open(result)
    assert "finished an interrupted corrections save" in caplog.text
    assert not pending_corrections(result) and pending_chunks(res) == []
    assert pyramid_is_consistent(res, "corrected")
    assert np.array_equal(res.mask(0, "corrected")[:], after)  # level 0 was all written


def test_interrupted_first_copy_leaves_no_corrected_labels(result, monkeypatch):
    def copy_fails(src, dst, **kw):
        os.makedirs(dst)
        (dst / "half").write_text("x")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(corrections.shutil, "copytree", copy_fails)
    m = Result.open(result).mask(0)[0:2, 0:2]
    with pytest.raises(OutputError, match="cannot create labels/corrected"):
        save_corrections(result, (0, 0), m, m + 1)
    assert Result.open(result).label_names == ("mask",)
    assert not list((result / "labels").glob(".corrected-*"))


def test_bad_label_value_partial_and_read_only_results(result, tmp_path):
    m = Result.open(result).mask(0)[0:4, 0:4]
    bad = m.copy()
    bad[0, 0] = 9
    with pytest.raises(ConfigError, match=r"label value 9 is not a class .*0 = background, 1 = TE, 2 = NEC, 3 = LYM"):
        save_corrections(result, (0, 0), m, bad)
    assert Result.open(result).label_names == ("mask",)  # nothing written

    partial = write_result(tmp_path / "p.zarr", base_mask(), complete=False)
    with pytest.raises(OutputError, match=r"p.zarr.partial: the segmentation run is unfinished"):
        save_corrections(partial, (0, 0), m, m + 1)

    mode = result.stat().st_mode
    os.chmod(result, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with pytest.raises(OutputError, match=r"r.zarr: the result is read-only") as info:
            save_corrections(result, (0, 0), m, m + 1)
        assert "\n" not in str(info.value)
    finally:
        os.chmod(result, mode)
    assert Result.open(result).label_names == ("mask",)


def test_no_change_writes_nothing(result):
    m = Result.open(result).mask(0)[0:4, 0:4]
    rec = save_corrections(result, (0, 0), m, m.copy())
    assert rec.pixels_changed == 0 and Result.open(result).label_names == ("mask",)
    with pytest.raises(WsiSegError, match="shape"):
        save_corrections(result, (0, 0), m, m[:2])

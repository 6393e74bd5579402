"""The CLI: summaries, and one clear line + non-zero exit for every bad input."""

import numpy as np
import pytest
import tifffile
from conftest import blob_image, write_slide

from wsi_seg.cli.main import main
from wsi_seg.result.format import is_complete, partial_path


def run_cli(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def segment(capsys, slide, out, model, *extra):
    return run_cli(capsys, "segment", slide, "--out", out, "--model", model, "--device", "cpu", "--workers", "0", "--no-progress", *extra)


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("wsi-seg: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in lines[0]
    return lines[0]


def test_segment_prints_a_summary(tmp_path, capsys, blob_slide, checkpoints):
    code, out, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1])
    assert code == 0, err
    assert "patches run" in out and "skipped" in out and "patches/s" in out
    assert is_complete(tmp_path / "o.zarr")


def test_info(capsys, blob_slide):
    code, out, _ = run_cli(capsys, "info", blob_slide)
    assert code == 0
    assert "aperio" in out and "0.5000" in out and "tissue:" in out and "level 1" in out


def test_unsupported_file(tmp_path, capsys, checkpoints):
    bad = tmp_path / "scan.svs"
    bad.write_bytes(b"\x00" * 1000)
    code, _, err = segment(capsys, bad, tmp_path / "o.zarr", checkpoints[1])
    assert_one_line_error(code, err, bad, "unsupported")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_tiles_that_fail_to_decode(tmp_path, capsys, checkpoints, workers):
    path = write_slide(tmp_path / "corrupt.tif", blob_image(1024), mpp=0.5, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    data = bytearray(path.read_bytes())
    for off, cnt in zip(offsets, counts):
        data[off + cnt // 3 : off + cnt - 2] = bytes(cnt - 2 - cnt // 3)
    path.write_bytes(bytes(data))
    out = tmp_path / "o.zarr"
    code, _, err = run_cli(capsys, "segment", path, "--out", out, "--model", checkpoints[1], "--device", "cpu", "--workers", workers, "--no-progress")
    assert_one_line_error(code, err, path, "decode")
    assert not out.exists()
    assert not is_complete(partial_path(out))


def test_missing_mpp_needs_flag(tmp_path, capsys, checkpoints):
    path = write_slide(tmp_path / "nompp.tif", blob_image(1024), mpp=None)
    code, _, err = segment(capsys, path, tmp_path / "o.zarr", checkpoints[1])
    assert_one_line_error(code, err, path, "--mpp")
    code, _, err = segment(capsys, path, tmp_path / "o.zarr", checkpoints[1], "--mpp", "0.5")
    assert code == 0, err


def test_slide_smaller_than_a_patch(tmp_path, capsys, checkpoints):
    path = write_slide(tmp_path / "tiny.tif", blob_image(200), mpp=0.5, tile_px=64)
    code, _, err = segment(capsys, path, tmp_path / "o.zarr", checkpoints[1])
    assert_one_line_error(code, err, path, "smaller than one")


def test_slide_without_tissue(tmp_path, capsys, checkpoints):
    path = write_slide(tmp_path / "glass.tif", np.full((512, 512, 3), 242, np.uint8), mpp=0.5)
    code, _, err = segment(capsys, path, tmp_path / "o.zarr", checkpoints[1])
    assert_one_line_error(code, err, path, "no tissue")
    assert not (tmp_path / "o.zarr").exists() and not partial_path(tmp_path / "o.zarr").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys, blob_slide, checkpoints):
    out = tmp_path / "o.zarr"
    assert segment(capsys, blob_slide, out, checkpoints[1])[0] == 0
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1])
    assert_one_line_error(code, err, out, "--overwrite")
    assert "(a complete wsi-seg result)" in err and is_complete(out)
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    assert code == 0, err
    other = tmp_path / "user_data"
    other.mkdir()
    code, _, err = segment(capsys, blob_slide, other, checkpoints[1])
    assert_one_line_error(code, err, other, "not a wsi-seg result")


def test_partial_run_of_another_model_is_refused(tmp_path, capsys, blob_slide, checkpoints, monkeypatch):
    import wsi_seg.inference.segment as segment_mod

    out = tmp_path / "o.zarr"

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_mod.ResultStore, "write_block", boom)
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1])
    assert code == 130 and "resume" in err
    monkeypatch.undo()
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2])
    assert_one_line_error(code, err, "another model", checkpoints[1], checkpoints[2])
    code, out_text, err = segment(capsys, blob_slide, out, checkpoints[1])
    assert code == 0 and is_complete(out), err


def test_missing_and_incompatible_checkpoints(tmp_path, capsys, blob_slide, checkpoints):
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", tmp_path / "nope")
    assert_one_line_error(code, err, tmp_path / "nope", "not found")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((checkpoints[1] / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((checkpoints[2] / "model.safetensors").read_bytes())
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", bad)
    assert_one_line_error(code, err, bad, "do not match")
    assert not (tmp_path / "o.zarr").exists()


def test_bad_option_values(tmp_path, capsys, blob_slide, checkpoints):
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1], "--overlap", "300")
    assert_one_line_error(code, err, "overlap")
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1], "--batch-size", "0")
    assert_one_line_error(code, err, "batch size")
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1], "--streams", "0")
    assert_one_line_error(code, err, "streams")
    for chunk in ("0", "5000"):
        code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1], "--chunk-px", chunk)
        assert_one_line_error(code, err, "--chunk-px", chunk)
        assert not (tmp_path / "o.zarr").exists()
    code, _, err = run_cli(capsys, "segment", blob_slide, "--out", tmp_path / "o.zarr", "--model", checkpoints[1], "--device", "cuda:7")
    assert_one_line_error(code, err, "cuda")



def test_read_only_output_folder(tmp_path, capsys, blob_slide, checkpoints, monkeypatch):
    import errno
    import os

    import zarr

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate what a read-only folder does
        def denied(store, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(store))

        monkeypatch.setattr(zarr, "open_group", denied)
    else:
        ro.chmod(0o555)
    try:
        code, _, err = segment(capsys, blob_slide, ro / "o.zarr", checkpoints[1])
        assert_one_line_error(code, err, ro, "Permission denied")
    finally:
        ro.chmod(0o755)
    assert not (ro / "o.zarr").exists()


def test_disk_full_during_write(tmp_path, capsys, blob_slide, checkpoints, monkeypatch):
    import errno

    import zarr

    real_setitem = zarr.Array.__setitem__

    def full(self, key, value):
        if self.ndim == 2:  # the mask array
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    out = tmp_path / "o.zarr"
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1])
    assert_one_line_error(code, err, "No space left on device")
    assert not out.exists() and not is_complete(partial_path(out))

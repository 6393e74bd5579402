"""The bad-input matrix of issue 15: each misuse ends in one line and exit 2 (or works, for
plain images with --mpp), before any heavy work, leaving nothing that looks like a result."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import blob_image, edited_checkpoint, sparse_tiff
from PIL import Image
from test_cli import assert_one_line_error, run_cli, segment

from wsi_seg.result.format import is_complete, partial_path
from wsi_seg.slide.fingerprint import slide_fingerprint

CLI = [sys.executable, "-c", "import sys; from wsi_seg.cli.main import main; sys.exit(main())"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the CLI gets as far as loading the model."""
    import wsi_seg.model.checkpoint as ckpt

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(ckpt, "load_checkpoint", loaded)


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"backbone": "no_such_net_224"}, ["cannot build its network from backbone 'no_such_net_224'", "Unknown model"]),
        ({"class_names": None}, ["config.json", "does not state class_names"]),
        ({"mpp": None}, ["config.json", "does not state mpp"]),
        ({"patch_size_px": 0}, ["config.json", "patch_size_px must be a positive multiple of 32, got 0"]),
    ],
    ids=["unknown-backbone", "no-class-names", "no-mpp", "patch-size-0"],
)
def test_bad_checkpoint_configs(tmp_path, capsys, blob_slide, checkpoints, changes, needles):
    ckpt = edited_checkpoint(checkpoints[1], tmp_path / "ckpt", **changes)
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", ckpt)
    assert_one_line_error(code, err, ckpt, *needles)
    assert not (tmp_path / "o.zarr").exists() and not partial_path(tmp_path / "o.zarr").exists()


def test_the_bundled_demo_model_states_what_checkpoints_must():
    from wsi_seg.model.checkpoint import REQUIRED_KEYS, read_config
    from wsi_seg.model.default import default_model_path

    data = json.loads((default_model_path() / "config.json").read_text())
    assert all(key in data for key in REQUIRED_KEYS)
    assert read_config(default_model_path()).mpp == data["mpp"]


@pytest.mark.parametrize("mpp", ["inf", "nan", "-1", "0"])
def test_mpp_must_be_a_positive_number(tmp_path, capsys, blob_slide, checkpoints, no_model_load, mpp):
    code, _, err = segment(capsys, blob_slide, tmp_path / "o.zarr", checkpoints[1], "--mpp", mpp)
    assert_one_line_error(code, err, "--mpp must be a positive number")
    code, _, err = run_cli(capsys, "info", blob_slide, "--mpp", mpp)
    assert_one_line_error(code, err, blob_slide, "--mpp must be a positive number")


def test_broken_pipe_is_not_an_error(blob_slide):
    """`wsi-seg info … | head -1`: the reader went away; exit like `cat` would, silently."""
    proc = subprocess.Popen([*CLI, "info", str(blob_slide)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has started: its first write finds the pipe closed
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert err == ""


def test_long_output_name_is_refused_before_the_model_loads(tmp_path, capsys, blob_slide, checkpoints, no_model_load):
    out = tmp_path / ("r" * 245 + ".zarr")
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1])
    assert_one_line_error(code, err, "output name is 250 bytes", "choose a shorter --out")
    assert list(tmp_path.iterdir()) == []


def test_mrxs_without_its_companion_folder(tmp_path, capsys, checkpoints):
    path = tmp_path / "scan.mrxs"
    path.write_bytes(b"\0" * 2000)
    code, _, err = segment(capsys, path, tmp_path / "o.zarr", checkpoints[1])
    assert_one_line_error(code, err, path, "companion folder scan/", "Slidedat.ini")


@pytest.mark.parametrize("ext", ["png", "jpg", "strips.tif"])
def test_plain_images_are_single_level_slides_with_mpp(tmp_path, capsys, checkpoints, ext):
    path = tmp_path / f"image.{ext}"
    if ext.endswith("tif"):
        tifffile.imwrite(path, blob_image(1024), photometric="rgb", rowsperstrip=64, metadata=None)
    else:
        Image.fromarray(blob_image(1024)).save(path, quality=95)
    out = tmp_path / "o.zarr"
    code, _, err = segment(capsys, path, out, checkpoints[1])
    assert_one_line_error(code, err, path, "a plain", "image, not a whole-slide image", "pass --mpp", "vips tiffsave")
    assert not out.exists() and not partial_path(out).exists()
    code, stdout, err = segment(capsys, path, out, checkpoints[1], "--mpp", "0.5")
    assert code == 0, err
    assert "planned output 1024 × 1024 px" in stdout and is_complete(out)
    code, stdout, _ = run_cli(capsys, "info", path, "--mpp", "0.5")
    assert code == 0 and "plain " in stdout and "tissue:" in stdout


def test_implausible_resolution_tag_names_the_fix(tmp_path, capsys, checkpoints):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, blob_image(320)[:250, :300], tile=(64, 64), photometric="rgb",
                     resolution=(72, 72), resolutionunit="INCH", metadata=None)
    out = tmp_path / "o.zarr"
    code, _, err = segment(capsys, path, out, checkpoints[1])
    assert_one_line_error(code, err, path, "352.778 µm/px", "outside the 0.05–50 µm/px", "pass --mpp")
    assert not out.exists() and not partial_path(out).exists()
    code, stdout, _ = run_cli(capsys, "info", path)
    assert code == 0 and "352.7778 (metadata); implausible" in stdout


def test_absurd_mpp_is_bounded(tmp_path, capsys, blob_slide, checkpoints):
    out = tmp_path / "o.zarr"
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1], "--mpp", "1000")
    assert_one_line_error(code, err, blob_slide, "2000× upsampling", "--allow-upsampling")
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1], "--mpp", "1000", "--allow-upsampling")
    assert_one_line_error(code, err, blob_slide, "2048000 × 2048000 px", "--max-output-px")
    assert not out.exists() and not partial_path(out).exists()
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1], "--max-output-px", "1e5")
    assert_one_line_error(code, err, "over --max-output-px 1e+05")


def test_huge_sparse_slide(tmp_path, capsys, checkpoints):
    """A valid TIFF declaring 10⁶ × 10⁶ px: `info` answers without a thumbnail; `segment`
    is refused by its planned output size, and by the thumbnail's read cap when that is raised."""
    path = sparse_tiff(tmp_path / "huge.tif", 1_000_000)
    assert path.stat().st_size < 2_000_000
    code, stdout, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "1000000 × 1000000 px" in stdout and "tissue:      not measured (no pyramid level coarse enough" in stdout
    out = tmp_path / "o.zarr"
    code, _, err = segment(capsys, path, out, checkpoints[1])
    assert_one_line_error(code, err, path, "1000000 × 1000000 px (1e+03 Gpx)", "--max-output-px")
    code, _, err = segment(capsys, path, out, checkpoints[1], "--max-output-px", "1e13")
    assert_one_line_error(code, err, path, "no pyramid level coarse enough for a thumbnail", "vips tiffsave")
    assert not out.exists() and not partial_path(out).exists()


def _twin_slides(tmp_path):
    """Two uncompressed slides of one size with the same first and last MiB (the old
    fingerprint) and the same coarse level, differing in the middle of level 0."""
    img_a = blob_image(1024, seed=1)
    img_b = img_a.copy()
    img_b[400:620, 150:900] = (60, 20, 90)
    level1 = np.ascontiguousarray(img_a[::4, ::4])
    paths = []
    for name, img in (("a.tif", img_a), ("b.tif", img_b)):
        desc = "Aperio Image Library v12.0.0\n1024x1024 [0,0 1024x1024] (128x128) RGB|AppMag = 20|MPP = 0.5"
        with tifffile.TiffWriter(tmp_path / name) as tw:
            tw.write(img, tile=(128, 128), photometric="rgb", compression=None, description=desc,
                     metadata=None, subfiletype=0)
            tw.write(level1, tile=(128, 128), photometric="rgb", compression=None, metadata=None, subfiletype=1)
        paths.append(tmp_path / name)
    a, b = (p.read_bytes() for p in paths)
    mib = 1 << 20
    assert len(a) == len(b) and a[:mib] == b[:mib] and a[-mib:] == b[-mib:] and a != b
    return paths


def test_fingerprint_tells_twin_slides_apart(tmp_path):
    a, b = _twin_slides(tmp_path)
    assert slide_fingerprint(a) != slide_fingerprint(b)
    copy = tmp_path / "copy.tif"
    shutil.copy(a, copy)
    assert slide_fingerprint(copy) == slide_fingerprint(a)
    props = {"aperio.ImageID": "1", "openslide.vendor": "aperio"}
    assert slide_fingerprint(a, props) != slide_fingerprint(a, {**props, "aperio.ImageID": "2"})
    assert slide_fingerprint(a, props) == slide_fingerprint(a, {**props, "openslide.vendor": "x"})


def test_resume_refuses_another_slide_naming_both(tmp_path, capsys, checkpoints, monkeypatch):
    import wsi_seg.inference.segment as segment_mod

    a, b = _twin_slides(tmp_path)
    out = tmp_path / "o.zarr"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_mod.ResultStore, "write_block", interrupted)
    assert segment(capsys, a, out, checkpoints[1])[0] == 130
    monkeypatch.undo()
    code, _, err = segment(capsys, b, out, checkpoints[1])
    prov = json.loads((partial_path(out) / "zarr.json").read_text())["attributes"]["wsi_seg"]
    assert prov["slide"]["fingerprint"].startswith("v2:")
    assert_one_line_error(code, err, "another slide", a, b, prov["slide"]["fingerprint"])
    assert not out.exists()


def test_a_second_cohort_on_one_out_dir_is_refused(tmp_path, capsys, blob_slide, checkpoints, no_model_load):
    from wsi_seg.result.ownership import cohort_lock

    out_dir = tmp_path / "cohort"
    with cohort_lock(out_dir):
        code, _, err = run_cli(capsys, "segment", blob_slide, "--out-dir", out_dir, "--model", checkpoints[1])
    assert_one_line_error(code, err, out_dir, "in use by pid")


def test_cohort_names_both_slides_when_a_result_is_of_another_slide(tmp_path, capsys, checkpoints):
    a, b = _twin_slides(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    b = b.rename(other / "a.tif")  # same name, other content: its output path is a's result
    out_dir = tmp_path / "results"
    argv = ["segment", "--out-dir", out_dir, "--model", checkpoints[1], "--device", "cpu", "--no-progress"]
    code, _, err = run_cli(capsys, *argv[:1], a, *argv[1:])
    assert code == 0, err
    fp_a = json.loads((out_dir / "a.zarr" / "zarr.json").read_text())["attributes"]["wsi_seg"]["slide"]["fingerprint"]
    code, stdout, err = run_cli(capsys, *argv[:1], b, *argv[1:])
    assert code == 2 and "1 failed" in stdout
    assert "holds a complete result of another slide" in err and str(a) in err and str(b) in err and fp_a in err
    assert is_complete(out_dir / "a.zarr")
    meta = out_dir / "a.zarr" / "zarr.json"
    data = json.loads(meta.read_text())
    data["attributes"]["wsi_seg"]["slide"]["fingerprint"] = "0123456789abcdef0123456789abcdef"  # version 1
    meta.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, *argv[:1], a, *argv[1:])
    assert code == 2 and "predates this version's; pass --overwrite" in err

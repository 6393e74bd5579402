"""Every ``wsi-seg segment`` flag reaches the engine: each is set to a value other than its
default and the run record (provenance) shows it, or the run shows its effect.

The flags are read from the parser itself, so a new flag without a check here fails
``test_every_flag_is_walked`` (``--streams`` once went nowhere, and figures compared the
wrong configurations because nothing like this existed).
"""

from __future__ import annotations

import argparse
import json

import pytest
from test_cli import assert_one_line_error, run_cli

from wsi_seg.cli.main import build_parser
from wsi_seg.inference.runtime import resolve_precision
from wsi_seg.result.reader import Result

pytestmark = pytest.mark.slow

# flags proven elsewhere, with the test that does it (a cluster takes ~10 s to start)
ELSEWHERE = {
    "--scheduler": "test_cohort_distributed.py (a scheduler address runs the cohort on it)",
    "--local-cluster": "test_cohort_distributed.py (a local cluster runs the cohort, workers record it)",
}


def _segment_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seg = sub.choices["segment"]
    return {s for a in seg._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _record(out) -> dict:
    return json.loads((out / "zarr.json").read_text())["attributes"]["wsi_seg"]


@pytest.fixture
def run(tmp_path, capsys, blob_slide, checkpoints):
    def segment(*flags, out="s.zarr", model=None):
        target = tmp_path / out
        code, stdout, err = run_cli(capsys, "segment", blob_slide, "--out", target, "--model",
                                    model or checkpoints[2], "--workers", "0", *flags)
        return code, stdout, err, target

    return segment


def _check_runtime(run):
    code, _, err, out = run("--batch-size", "3", "--streams", "1", "--threads", "2", "--no-progress")
    assert code == 0, err
    inference = _record(out)["inference"]
    # two threads would give two streams by default: --streams 1 must arrive as 1
    assert (inference["batch_size"], inference["streams"], inference["torch_threads"]) == (3, 1, 2)
    code, _, err, out = run("--threads", "1", "--no-progress", out="t.zarr")
    assert code == 0 and (_record(out)["inference"]["streams"], _record(out)["inference"]["torch_threads"]) == (1, 1)
    code, _, err, out = run("--workers", "1", "--no-progress", out="w.zarr")
    assert code == 0 and _record(out)["inference"]["reader_workers"] == 1, err


def _check_device_and_precision(run):
    other = "fp32" if resolve_precision(__import__("torch").device("cpu"), "auto") != "fp32" else "bf16"
    code, _, err, out = run("--device", "cpu", "--precision", other, "--no-progress", out="d.zarr")
    assert code == 0, err
    assert (_record(out)["inference"]["device"], _record(out)["inference"]["precision"]) == ("cpu", other)
    code, _, err, _ = run("--device", "cuda:7", "--no-progress", out="c.zarr")
    assert code == 2 and "cuda:7" in err  # not the default: it reaches the device check


def _check_grid_and_tissue(run):
    code, _, err, out = run("--overlap", "16", "--tissue-threshold", "0.3", "--mpp", "0.55", "--reader", "openslide",
                            "--chunk-px", "400", "--no-progress", out="g.zarr")
    assert code == 0, err
    record = _record(out)
    assert record["overlap_px"] == 16 and record["tissue"]["min_tissue_fraction"] == 0.3
    # 400 px rounds to two strides of 208 px (224 − 16); the default would be five
    assert record["block_px"] == 416 and Result.open(out).mask(0).chunks == (416, 416)
    assert record["slide"]["mpp"] == 0.55 and record["inference"]["reader"]["requested"] == "openslide"


def _check_bounds(run):
    code, _, err, _ = run("--mpp", "2", "--no-progress", out="u.zarr")
    assert_one_line_error(code, err, "--allow-upsampling")
    code, _, err, _ = run("--mpp", "2", "--allow-upsampling", "--max-output-px", "1000", "--no-progress", out="u.zarr")
    assert_one_line_error(code, err, "--max-output-px")  # past the upsampling bound, stopped by the output bound


def _check_outputs(run, tmp_path, capsys, blob_slide, checkpoints):
    from wsi_seg.result.corrections import save_corrections

    code, _, err, out = run("--preview", tmp_path / "p.png", out="p.zarr")
    assert code == 0 and (tmp_path / "p.png").is_file(), err
    assert "patch/s" in err or "patch" in err  # a progress bar without --no-progress
    code, _, err, out = run("--no-progress", out="q.zarr")
    assert code == 0 and "patch/s" not in err
    mask = Result.open(out).mask(0)[:8, :8]
    save_corrections(out, (0, 0), mask, (mask % 2) + 1)
    code, _, err, _ = run("--no-progress", out="q.zarr")
    assert code == 2 and "--overwrite" in err
    code, _, err, _ = run("--no-progress", "--overwrite", "--discard-corrections", out="q.zarr", model=checkpoints[1])
    assert code == 0, err
    result = Result.open(out)
    assert result.current_labels == "mask" and result.provenance.model.path == str(checkpoints[1])
    code, _, err = run_cli(capsys, "segment", blob_slide, "--out-dir", tmp_path / "cohort", "--model", checkpoints[2],
                           "--workers", "0", "--no-progress")
    assert code == 0 and Result.open(tmp_path / "cohort" / f"{blob_slide.stem}.zarr").complete, err


def test_every_flag_is_walked(run, tmp_path, capsys, blob_slide, checkpoints):
    walked = {"--out", "--model", "--batch-size", "--streams", "--threads", "--workers", "--no-progress",
              "--device", "--precision", "--overlap", "--chunk-px", "--tissue-threshold", "--mpp", "--reader",
              "--allow-upsampling", "--max-output-px", "--preview", "--overwrite", "--discard-corrections", "--out-dir"}
    assert _segment_flags() == walked | set(ELSEWHERE), "a segment flag has no check in this file"
    _check_runtime(run)
    _check_device_and_precision(run)
    _check_grid_and_tissue(run)
    _check_bounds(run)
    _check_outputs(run, tmp_path, capsys, blob_slide, checkpoints)


def test_every_option_is_declared_with_its_flag():
    """SegmentOptions is where a segment setting is declared: each field carries its flag
    (the tissue detector's tuning stays a library setting, deliberately)."""
    from wsi_seg.cli.flags import config_fields
    from wsi_seg.inference.options import SegmentOptions

    fields = {key: f.metadata.get("flag") for key, f, _ in config_fields(SegmentOptions)}
    flagless = {key for key, flag in fields.items() if not flag}
    assert flagless == {"tissue.thumbnail_mpp", "tissue.gray_threshold", "tissue.min_saturation",
                        "tissue.min_tissue_um2", "tissue.max_hole_um2"}
    assert {flag for flag in fields.values() if flag} <= _segment_flags()

"""The method benchmark (``wsi-seg benchmark-method``) and the end-to-end example script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from wsi_seg_training import experiment

from wsi_seg.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-train", "16", "--n-test", "4", "--preset", "tiny", "--epochs", "1", "--stage2-epochs", "1",
        "--stage1-batch-size", "4", "--stage2-batch-size", "4"]
# each stage-1 model twice: predicted classes (the reference protocols), then the oracle
ROWS = [f"{name}, {how}" for name, _ in experiment.STAGE1_VARIANTS
        for how in ("predicted classes", "oracle (gt classes)")] + [name for name, _ in experiment.STAGE2_LOSSES]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    assert main(["benchmark-method", "--work", str(work), *TINY]) == 0
    return work


def _checkpoints(work: Path) -> dict[str, float]:
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in work.glob("*/checkpoint/model.safetensors")}


@pytest.mark.slow
def test_benchmark_trains_every_model_and_prints_thesis_tables(bench_dir, capsys):
    assert set(_checkpoints(bench_dir)) == {"s1_baseline", "s1_pscl", "s1_pscl_nobkg", "s2_ce", "s2_nr"}
    # stage 2 learns from the PSCL-with-background model's pseudo-labels
    manifest = json.loads((bench_dir / "pseudo_labels" / "pseudo_labels.json").read_text())
    assert "s1_pscl/checkpoint" in json.dumps(manifest) and "nobkg" not in json.dumps(manifest)
    results = json.loads((bench_dir / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ROWS
    for row in results["rows"]:
        assert set(row["scores"]) == {"mlps", "tpro"}
        miou = row["scores"]["mlps"]["miou"]
        assert miou is not None and 0.0 <= miou <= 1.0
    table = (bench_dir / "results.txt").read_text()
    assert "protocol mlps" in table and "protocol tpro" in table
    header = next(line for line in table.splitlines() if line.startswith("Model"))
    assert header.split()[1:] == ["TE", "NEC", "LYM", "TAS", "mIoU", "fwIoU", "train", "s"]
    assert all(name in table for name in ROWS)
    markdown = (bench_dir / "results.md").read_text()
    assert "Protocol mlps:" in markdown and "Protocol tpro:" in markdown
    assert all(f"| {name} |" in markdown for name in ROWS)


@pytest.mark.slow
def test_benchmark_rerun_reuses_finished_runs(bench_dir, capsys):
    before = _checkpoints(bench_dir)
    assert main(["benchmark-method", "--work", str(bench_dir), *TINY]) == 0
    assert _checkpoints(bench_dir) == before
    assert "Stage 2, NR" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_refuses_a_work_folder_with_other_settings(bench_dir, capsys):
    args = [*TINY]
    args[args.index("--stage1-batch-size") + 1] = "8"
    assert main(["benchmark-method", "--work", str(bench_dir), *args]) == 2
    err = capsys.readouterr().err
    assert "s1_baseline" in err and "different settings" in err and len(err.strip().splitlines()) == 1


def test_thesis_table_format_handles_missing_classes():
    import numpy as np

    from wsi_seg.reports.metrics import ConfusionMatrix

    cm = ConfusionMatrix(("TE", "NEC"))
    cm.update(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
    row = experiment.Row("only TE", {p: cm.scores(p) for p in ("mlps", "tpro")}, 12.0)
    text = experiment.format_thesis_tables(experiment.MethodBenchmark(rows=[row]))
    mlps = text.split("\n\n")[0].splitlines()
    assert mlps[1].split() == ["Model", "TE", "NEC", "mIoU", "fwIoU", "train", "s"]
    assert mlps[3].split()[2:] == ["50.00", "n/a", "50.00", "50.00", "12"]
    md = experiment.format_markdown(experiment.MethodBenchmark(rows=[row]))
    assert md.splitlines()[2] == "| only TE | 50.00 | n/a | 50.00 | 50.00 |"
    assert not math.isnan(row.scores["tpro"].miou)


@pytest.mark.slow
def test_end_to_end_example_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "end_to_end.py"), "--work", str(tmp_path), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "pretrain" / "encoder.safetensors").is_file()
    assert "stage 2: test mIoU" in proc.stdout and "slide mIoU over tissue" in proc.stdout
    assert (tmp_path / "slide.zarr").is_dir()

"""Stage 1 under torchrun: DistributedDataParallel, 2 CPU processes on gloo."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsi_seg.model import load_checkpoint

from wsi_seg_training.synthetic_dataset import write_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_run(tmp_path):
    data = write_dataset(tmp_path / "luad", n_train=8, n_val=2, n_test=0, seed=2)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wsi_seg_training", "train", "--stage", "1", "--data", str(data), "--out", str(run),
           "--preset", "tiny", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "world_size\": 2" in (run / "run.json").read_text()
    loaded = load_checkpoint(run / "checkpoint")
    assert loaded.config.stage == 1
    assert proc.stdout.count("stage 1: 2 epochs") == 1  # only rank 0 reports

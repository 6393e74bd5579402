"""``benchmarks/gpu_check.py --quick`` runs on the CPU and prints every section."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_quick_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(SCRIPT.parents[1])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--work", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "model-only vs end-to-end" in out and "reading alone" in out and "null model" in out
    header = out.splitlines()[0]
    assert "; malloc " in header and "malloc glibc default" not in header  # thresholds set as the CLI sets them
    for reader in ("openslide", "jpeg-cpu", "jpeg-device"):
        assert reader in out
    assert "jpeg-cpu/openslide" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio end_to_end/model_only = ")
    assert float(last.split("=")[1].split()[0]) > 0

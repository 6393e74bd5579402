"""Pinned malloc thresholds: our executables keep freed memory for reuse; users' settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wsi_seg.inference.allocator import OFF_VARIABLE, USER_VARIABLES, is_glibc

glibc = pytest.mark.skipif(not is_glibc(), reason="glibc's malloc only")

# a free that moves glibc's threshold to 20 MiB, then three 15 MiB buffers at a time: their
# 45 MiB at the heap's top are over glibc's moving trim threshold (40 MiB), so by default
# every round gives them back to the kernel and faults them in again
_PROBE = """
import json, resource, sys
import numpy as np
from wsi_seg.inference.allocator import malloc_state, pin_malloc_thresholds
state = pin_malloc_thresholds() if sys.argv[1] == "pin" else malloc_state()
np.ones(20 << 20, np.uint8)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        buffers = [np.ones(15 << 20, np.uint8) for _ in range(3)]
        del buffers
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(json.dumps({"state": state, "faults": faults()}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in (*USER_VARIABLES, OFF_VARIABLE)}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_pinned_thresholds_stop_the_page_fault_churn():
    default, pinned = _probe("default"), _probe("pin")
    assert default["state"] == "glibc default"
    assert pinned["state"].startswith("pinned: mmap threshold 32 MiB")
    assert default["faults"] > 10_000  # 45 MiB faulted in again every round
    assert pinned["faults"] < default["faults"] / 20


@glibc
@pytest.mark.parametrize("env, state", [
    ({"MALLOC_TRIM_THRESHOLD_": "4096"}, "set by the user (MALLOC_TRIM_THRESHOLD_)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}, "set by the user (GLIBC_TUNABLES)"),
    ({OFF_VARIABLE: "default"}, f"glibc default ({OFF_VARIABLE}=default)"),
])
def test_the_users_settings_are_left_alone(env, state):
    probe = _probe("pin", **env)
    assert probe["state"] == state
    assert probe["faults"] > 10_000  # glibc still trims as it would


@glibc
def test_tunables_for_other_parts_of_glibc_do_not_count():
    assert _probe("pin", GLIBC_TUNABLES="glibc.rtld.optional_static_tls=512")["state"].startswith("pinned")


def test_the_cli_pins_and_the_result_records_it(tmp_path, blob_slide, checkpoints, capsys):
    """``wsi-seg segment`` runs with the thresholds set and says how in the provenance."""
    from wsi_seg.cli.main import main
    from wsi_seg.inference.allocator import malloc_state
    from wsi_seg.result.reader import Result

    out = tmp_path / "mask.zarr"
    assert main(["segment", str(blob_slide), "--out", str(out), "--model", str(checkpoints[1]),
                 "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    recorded = Result.open(out).provenance.inference["malloc"]
    assert recorded == malloc_state() != "glibc default"  # the CLI set it, once for the process

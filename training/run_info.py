"""Provenance of a run: software versions, git state, the command, written as run.json."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RUN_INFO_FORMAT_VERSION = 1


def git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the source tree this code runs from (None outside git)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def software_versions() -> dict[str, str]:
    import numpy
    import pytorch_metric_learning
    import timm
    import torch

    import wsi_seg

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "numpy": numpy.__version__,
        "wsi_seg": wsi_seg.__version__,
    }


def _runtime_facts() -> dict[str, Any]:
    """Torch threads and the CPUs this process may use (``wsi_seg.inference.runtime``)."""
    import torch

    from wsi_seg.inference.runtime import available_cpus

    cpus = available_cpus()
    return {"torch_threads": torch.get_num_threads(), "cpus": cpus.cpus, "cpus_source": cpus.source}


def write_run_json(run_dir: Path, facts: dict[str, Any]) -> Path:
    """``RUN_DIR/run.json``: start time, command, versions, git state, plus ``facts``."""
    payload = {
        "format_version": RUN_INFO_FORMAT_VERSION,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "software": software_versions(),
        "git": git_state(),
        "runtime": _runtime_facts(),
        **facts,
    }
    path = run_dir / "run.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def update_run_json(run_dir: Path, facts: dict[str, Any]) -> Path:
    """``RUN_DIR/run.json`` with ``facts`` added to what it holds (a run that stopped says why)."""
    path = run_dir / "run.json"
    payload = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**payload, **facts}, indent=2, default=str) + "\n", encoding="utf-8")
    return path

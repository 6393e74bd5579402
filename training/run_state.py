"""The resumable state of a training run, written after every epoch.

``RUN_DIR/state/`` holds ``model.safetensors`` (network weights),
``optimizer.safetensors`` (optimizer tensors, e.g. SGD momentum buffers),
``rng.safetensors`` (torch RNG states) and ``trainer.json`` (epoch, step, optimizer
hyper-parameters, scheduler and grad-scaler state, Python/NumPy RNG, metric history,
settings fingerprint, the epoch total the run trains toward and the totals it was given). Only safetensors and JSON: nothing is ever unpickled. The folder
is replaced atomically (write ``state.tmp/``, then swap), so a crash mid-write leaves
the previous epoch's state usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_seg.errors import CheckpointError

STATE_DIR = "state"
STATE_FORMAT_VERSION = 2  # 2: fingerprint without epochs; epochs, epochs_history


@dataclass
class RunState:
    """What a resumed run needs besides the weights."""

    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    fingerprint: str  # of the settings, epochs left out (format 1: epochs in)
    epochs: int = 0  # the total the run trains toward (its LR schedule's); 0: format 1, unknown
    # each total the run was given and the epoch it started from: [{"epochs": 2, "from_epoch": 0}, ...]
    epochs_history: list[dict[str, int]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    optimizer_meta: dict[str, Any] = field(default_factory=dict)
    rng_values: dict[str, Any] = field(default_factory=dict)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of the settings a run's results depend on."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        meta_state[str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{key}"] = value.detach().cpu().contiguous()
                meta_state[str(pid)][key] = {"tensor": f"{pid}/{key}"}
            else:
                meta_state[str(pid)][key] = {"value": value}
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in meta["state"].items():
        state[int(pid)] = {
            key: tensors[v["tensor"]] if "tensor" in v else v["value"] for key, v in entries.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def save_run_state(
    run_dir: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    rng_tensors: dict[str, torch.Tensor],
) -> Path:
    """Write ``RUN_DIR/state/`` atomically."""
    from safetensors.torch import save_file

    final = run_dir / STATE_DIR
    tmp = run_dir / (STATE_DIR + ".tmp")
    old = run_dir / (STATE_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
    state.optimizer_meta = opt_meta
    payload = {"format_version": STATE_FORMAT_VERSION, **state.__dict__}
    (tmp / "trainer.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_json(path: Path) -> dict[str, Any]:
    """The ``trainer.json`` of the state folder ``path`` (epoch, step, fingerprint, …)."""
    try:
        return json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the run state to resume ({exc}); use --overwrite to start over") from exc


def find_run_state(run_dir: Path) -> Path | None:
    """The state folder of a run (or the previous one a crash left behind), if any."""
    for name in (STATE_DIR, STATE_DIR + ".old"):
        path = run_dir / name
        if (path / "trainer.json").is_file():
            return path
    return None


def load_run_state(
    path: Path, net: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[RunState, dict[str, torch.Tensor]]:
    """Load weights and optimizer state into ``net``/``optimizer``; (state, RNG tensors)."""
    from safetensors.torch import load_file

    payload = read_trainer_json(path)
    payload.pop("format_version", None)
    try:
        state = RunState(**payload)
        weights = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
    except Exception as exc:  # json / safetensors errors of a corrupt state folder
        raise CheckpointError(f"{path}: cannot read the run state to resume ({exc}); use --overwrite to start over") from exc
    try:
        net.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(_join_optimizer(opt_tensors, state.optimizer_meta))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: run state does not match this network ({first}); use --overwrite") from exc
    return state, rng

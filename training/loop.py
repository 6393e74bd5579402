"""The pieces :class:`wsi_seg_training.trainer.Trainer` runs a training with: device and torchrun
setup, autocast, the run directory (create, check the settings fingerprint, refuse a
finished run, resume or continue its state), the seeded (distributed) train loader, the per-epoch
``metrics.csv`` and the one-line error of a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from wsi_seg_training.distributed import DistInfo, barrier, init_distributed
from wsi_seg_training.reproducibility import seed_worker, set_rng_state
from wsi_seg_training.run_state import find_run_state, load_run_state, read_trainer_json

from wsi_seg.errors import ConfigError, OutputError, WsiSegError

log = logging.getLogger(__name__)

# what every run directory holds besides its result (checkpoint / weights file)
RUN_FILES = ("state", "state.tmp", "state.old", "metrics.csv", "config.yaml", "run.json")


def device_and_dist(device_name: str) -> tuple[torch.device, DistInfo]:
    """The device to train on and the torchrun process group (if any) joined."""
    import os

    from wsi_seg.inference.runtime import available_cpus, resolve_device

    device = resolve_device(device_name)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if device.type == "cpu":  # the CPUs this process may use, shared by torchrun's local ranks
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(max(1, available_cpus().cpus // max(1, local_ranks)))
    if not info.is_main:  # rank 0 reports for everyone
        logging.getLogger("wsi_seg_training").setLevel(logging.WARNING)
    return device, info


def autocast_for(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager, bool]:
    """(autocast context, needs a grad scaler) of ``precision`` (auto | fp32 | bf16 | fp16),
    resolved as for inference by :mod:`wsi_seg.inference.runtime` (``auto``: bf16 where native)."""
    from wsi_seg.inference.runtime import autocast, needs_grad_scaler

    return autocast(device, precision), needs_grad_scaler(device, precision)


def write_metrics_csv(path: Path, history: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write one row per epoch (missing values empty), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)


def worker_error(exc: Exception) -> Exception:
    """A WsiSegError re-raised by a DataLoader worker carries the worker's traceback in
    its message; give back an error whose message is the original one line."""
    text = str(exc)
    if isinstance(exc, WsiSegError) and text.startswith("Caught "):
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        _, _, message = last.partition(": ")
        return type(exc)(message or last)
    return exc


@dataclass(frozen=True)
class SavedRun:
    """What a run folder's state says about the run in it (see :func:`prepare_run_dir`)."""

    state_dir: Path
    epochs_done: int
    epochs_planned: int  # the total its LR schedule was set for
    epochs_history: list[dict[str, int]]  # each total it was given and the epoch it started from
    finished: bool  # its result is written, with every planned epoch done


def read_saved_run(run_dir: Path, finished: Path, legacy_fp: Callable[[int], str] | None = None,
                   epochs: int | None = None) -> tuple[SavedRun, str] | None:
    """(the run in ``run_dir``, its settings fingerprint) or None when it holds no state.

    A format-1 state hashed its settings with ``epochs`` in: ``legacy_fp(e)`` (the
    fingerprint of these settings at ``e`` epochs) tells which total it was planned for
    (``epochs`` or the epochs it did); its fingerprint then reads as the current one."""
    state_dir = find_run_state(run_dir)
    if state_dir is None:
        return None
    saved = read_trainer_json(state_dir)
    done, planned, fp = int(saved.get("epoch", 0)), int(saved.get("epochs") or 0), saved.get("fingerprint")
    history = list(saved.get("epochs_history") or [])
    if not planned:  # format 1
        planned = done
        for total in dict.fromkeys(e for e in (epochs, done) if e is not None):
            if legacy_fp is not None and fp == legacy_fp(total):
                planned, fp = total, None
                break
        history = history or [{"epochs": planned, "from_epoch": 0}]
    is_finished = finished.is_file() and done >= planned
    return SavedRun(state_dir, done, planned, history, is_finished), fp


def prepare_run_dir(
    run_dir: Path,
    fp: str,
    epochs: int,
    overwrite: bool,
    info: DistInfo,
    result: str = "checkpoint",
    finished: Path | None = None,
    legacy_fp: Callable[[int], str] | None = None,
) -> SavedRun | None:
    """Create or check a run directory; the run to resume or continue, if any.

    ``fp`` fingerprints the settings without ``epochs``: the same settings with more
    epochs continue the run (to the new total); fewer than it did, or a finished run at
    its own total, are refused. ``result`` is the name of the run's final output inside
    ``run_dir`` (removed with ``overwrite``); ``finished`` the file whose presence, with
    every planned epoch done, marks the run finished (default
    ``run_dir/result/model.safetensors``). ``legacy_fp``: see :func:`read_saved_run`.
    """
    finished = finished or run_dir / result / "model.safetensors"
    if info.is_main and overwrite and run_dir.exists():
        for name in (*RUN_FILES, result):
            remove_result(run_dir, name)
    barrier(info)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a directory")
    read = read_saved_run(run_dir, finished, legacy_fp, epochs)
    if read is None:
        if (run_dir / result).exists():
            raise OutputError(f"{run_dir}: holds {result}/ but no run state; use --overwrite or another --out"
                              if (run_dir / result).is_dir() else
                              f"{run_dir}: holds {result} but no run state; use --overwrite or another --out")
        return None
    saved, saved_fp = read
    if saved_fp is not None and saved_fp != fp:
        raise ConfigError(
            f"{run_dir}: holds a run with different settings (see its config.yaml); use the same settings "
            "(only --epochs may grow) to resume, --overwrite to start over, or another --out"
        )
    if epochs < saved.epochs_done:
        raise ConfigError(f"{run_dir}: already trained {saved.epochs_done} epochs, more than --epochs {epochs}; "
                          f"give --epochs {saved.epochs_done} or more, --overwrite to start over, or another --out")
    if saved.finished and epochs == saved.epochs_done:
        raise OutputError(f"{run_dir}: already holds a finished run ({saved.epochs_done} epochs); "
                          "raise --epochs to continue it, --overwrite to start over, or another --out")
    return saved


def remove_result(run_dir: Path, result: str) -> None:
    """Remove ``run_dir / result`` (a folder or a file) if it is there: a run's result, or one of RUN_FILES."""
    target = run_dir / result
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def run_finished(run_dir: Path, epochs: int, finished: Path | None = None) -> bool:
    """Whether ``run_dir`` holds a finished run (result ``finished``, default
    ``run_dir/checkpoint/model.safetensors``, written with every planned epoch done)
    with at least ``epochs`` epochs: rerunning it with ``epochs`` is not training."""
    read = read_saved_run(run_dir, finished or run_dir / "checkpoint" / "model.safetensors", epochs=epochs)
    return read is not None and read[0].finished and read[0].epochs_done >= epochs


def epochs_done(run_dir: Path) -> int:
    """The epochs a run folder's state has done (0 without a state)."""
    state_dir = find_run_state(run_dir)
    if state_dir is None:
        return 0
    return int(read_trainer_json(state_dir).get("epoch", 0))


def resume_run(
    saved: SavedRun | None,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: Any = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Restore a run from ``saved`` (from :func:`prepare_run_dir`) into the weights,
    optimizer, grad scaler, scheduler and RNGs; (history, epochs done, steps done)."""
    if saved is None:
        return [], 0, 0
    state, rng_tensors = load_run_state(saved.state_dir, net, optimizer)
    if scheduler is not None:  # a LambdaLR; format-1 states hold a PolynomialLR's state, without lr_lambdas
        scheduler.load_state_dict({"lr_lambdas": [None] * len(scheduler.lr_lambdas), **state.scheduler})
    if state.scaler:
        scaler.load_state_dict(state.scaler)
    set_rng_state(rng_tensors, state.rng_values)
    return list(state.history), state.epoch, state.step


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    """The patches each torchrun process takes a step; ConfigError if they do not split."""
    if batch_size % info.world_size:
        raise ConfigError(f"batch size {batch_size} does not split over {info.world_size} processes")
    return batch_size // info.world_size


def loader_workers(workers: int) -> int:
    """``workers`` capped at the CPUs this process may use (affinity, cgroup, SLURM):
    more DataLoader processes than CPUs only compete (and PyTorch warns about them)."""
    import os

    from wsi_seg.inference.runtime import available_cpus

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # threads per process, not processes
    cpus = available_cpus(env).cpus
    if workers > cpus:
        log.info("DataLoader workers %d → %d (the CPUs available)", workers, cpus)
        return cpus
    return workers


def train_loader(
    dataset: Dataset,
    batch_size: int,
    info: DistInfo,
    seed: int,
    workers: int,
    device: torch.device,
) -> tuple[DataLoader, DistributedSampler | None, torch.Generator]:
    """A shuffling, last-batch-dropping loader of ``batch_size / world_size`` samples a
    step; (loader, sampler or None, generator). Reseed the generator (and ``set_epoch``
    the sampler) at each epoch's start so a resumed run draws the same batches."""
    per_rank = per_rank_batch(batch_size, info)
    workers = loader_workers(workers)
    sampler = (
        DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                           shuffle=True, seed=seed, drop_last=True)
        if info.enabled else None
    )
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    return loader, sampler, generator

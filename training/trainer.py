"""One training loop for stage 1, stage 2 and NT-Xent pre-training.

In the manner of pytorch-metric-learning's ``BaseTrainer``: :class:`Trainer` owns what
every run does — device and torchrun, the run folder (fingerprint, refusal of a finished
or foreign run, continuation to more epochs, ``config.yaml``, ``run.json``), seeding (one
formula, :func:`epoch_seed`), autocast and the grad scaler, DistributedDataParallel, the
epoch loop with its progress bar, the per-epoch ``metrics.csv`` row, the resumable state
(weights, optimizer, scaler, scheduler, RNGs) and the final result. A trainer supplies
the parts that differ:

* :meth:`Trainer.prepare` — open and check its inputs before the run folder is touched;
* :meth:`Trainer.build` — network, optimizer, train dataset (and LR schedule), once seeded;
* :meth:`Trainer.step` — one batch → a dict of losses (``"loss"`` is optimised);
* :meth:`Trainer.validate` — the val columns of an epoch's row;
* :meth:`Trainer.save_result` — the checkpoint or weights file a finished run leaves.

:meth:`Trainer.train_step` (step, backward, optimizer, scaler, scheduler) is what the
epoch loop and ``benchmarks/training_steps.py`` both call.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsi_seg.errors import ConfigError, WsiSegError
from wsi_seg.lock import folder_lock

from wsi_seg_training.config import RunConfig, SupervisedRunConfig, dump_yaml
from wsi_seg_training.datasets import DatasetIndex, PatchDataset, BackgroundSeedParams
from wsi_seg_training.distributed import DistInfo, barrier, mean_across_ranks, shutdown
from wsi_seg_training.loop import (
    SavedRun,
    autocast_for,
    device_and_dist,
    loader_workers,
    per_rank_batch,
    prepare_run_dir,
    remove_result,
    resume_run,
    train_loader,
    worker_error,
    write_metrics_csv,
)
from wsi_seg_training.reproducibility import rng_state, seed_everything
from wsi_seg_training.run_info import git_state, software_versions, update_run_json, write_run_json
from wsi_seg_training.run_state import STATE_DIR, RunState, fingerprint, save_run_state

log = logging.getLogger(__name__)

LossValues = dict[str, "torch.Tensor | float"]
EpochCallback = Callable[[int, dict[str, Any]], None]  # (epochs done, the epoch's metrics row)


@dataclass
class RunResult:
    """What a training run leaves: its folder, its result (``checkpoint`` folder of a
    stage, encoder ``weights`` file of pre-training; None on ranks other than 0), the
    metrics history and the epoch it resumed after."""

    run_dir: Path
    output: Path | None
    history: list[dict[str, Any]]
    resumed_from_epoch: int

    @property
    def checkpoint(self) -> Path | None:
        return self.output

    @property
    def weights(self) -> Path | None:
        return self.output


def epoch_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """The seed of an epoch: of the batch order (``rank`` None, the same on every rank so
    the processes split one shuffle) or of a rank's loss noise (PSCL pixel sampling,
    Gumbel softmax). A resumed run reseeds from it, so it draws what an uninterrupted
    run would."""
    base = seed * 1_000_003
    return base + epoch if rank is None else base + epoch * 101 + rank


@dataclass
class TrainingParts:
    """What :meth:`Trainer.build` makes: the network whose weights the run saves, what a
    step calls (DDP-wrapped under torchrun; default the network), the optimizer, the
    train dataset, and the LR schedule: ``lr_factor(step, total_steps)`` multiplies each
    group's initial LR (None: constant). A closed form of the step, so a run continued to
    more epochs follows the schedule of its new total from the step it reached."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    forward: nn.Module | None = None
    lr_factor: Callable[[int, int], float] | None = None


LAST_GOOD_DIR = "last_good"  # a diverged run's last finished epoch, as a result


class Diverged(ConfigError):
    """The loss became non-finite at ``step`` (of ``epoch``, both from 1)."""

    def __init__(self, loss: float, step: int, epoch: int) -> None:
        super().__init__(f"loss became {loss} at step {step} (epoch {epoch}); lower --lr")
        self.loss, self.step, self.epoch = loss, step, epoch


class Trainer(ABC):
    """A training run of ``cfg`` into ``cfg.out``; see the module doc for who does what.

    Attributes a subclass' ``step`` uses once :meth:`setup` ran: ``net``, ``forward``,
    ``optimizer``, ``device``, ``dist`` and ``autocast`` (the context the forward runs in).
    """

    metrics_columns: ClassVar[tuple[str, ...]]  # metrics.csv columns, in order
    decimals: ClassVar[dict[str, int]] = {}  # rounding of a column's epoch mean (default 6)
    result_name: ClassVar[str] = "checkpoint"  # what a finished run leaves in RUN_DIR

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.device = torch.device("cpu")
        self.dist = DistInfo()
        self.epoch = 0  # the epoch running (from 0)
        self.steps_done = 0
        self.epochs_history: list[dict[str, int]] = []  # each total given and the epoch it started from
        self.result_root = self.run_dir  # where save_result writes (last_good/ after a divergence)
        self.diverged: dict[str, Any] | None = None  # the step a non-finite loss stopped the run at

    # --- what a trainer supplies -------------------------------------------------------

    def prepare(self) -> None:
        """Open and check the inputs; runs before the run folder is touched."""

    def fingerprint_facts(self) -> dict[str, Any]:
        """Facts besides the settings that make two runs the same (input file hashes)."""
        return {}

    @abstractmethod
    def build(self) -> TrainingParts:
        """Network, optimizer and train dataset; the global RNG is seeded before."""

    @abstractmethod
    def step(self, batch: dict[str, torch.Tensor]) -> LossValues:
        """The losses of one batch: ``"loss"`` is optimised; all are averaged per epoch."""

    def start_epoch(self, noise_seed: int) -> None:
        """Reseed a loss' own random draws for the epoch about to run."""

    def validation_due(self, epochs_done: int) -> bool:
        return False

    def validate(self) -> dict[str, Any]:
        """The val columns of the row of the epoch just trained."""
        return {}

    def run_facts(self) -> dict[str, Any]:
        """What ``run.json`` records about the inputs and the network."""
        return {}

    @abstractmethod
    def save_result(self) -> Path:
        """Write the finished run's result (rank 0 only); its path."""

    def result_file(self) -> Path:
        """The file whose presence (with all epochs done) marks the run finished."""
        return self.run_dir / self.result_name / "model.safetensors"

    # --- the run ---------------------------------------------------------------------

    def run(self, overwrite: bool = False, on_epoch_end: EpochCallback | None = None) -> RunResult:
        """Train, resuming an interrupted run in ``cfg.out``; a :class:`RunResult`.

        ``on_epoch_end(epoch, row)`` is called after each epoch's state is saved (epochs
        count from 1); raising in it stops the run like an interruption would.
        """
        self.cfg.validate()
        device, dist = device_and_dist(self.cfg.device)
        try:
            with folder_lock(self.run_dir) if dist.is_main else nullcontext():  # one writer per run folder
                return self._run(device, dist, overwrite, on_epoch_end)
        except WsiSegError as exc:
            raise worker_error(exc) from exc
        finally:
            shutdown(dist)

    def setup(self, device: torch.device, dist: DistInfo | None = None) -> None:
        """Seed, build the parts, wrap them for torchrun, make the loader, scheduler,
        autocast and grad scaler. (:meth:`prepare` first.)"""
        cfg = self.cfg
        self.device, self.dist = device, dist or DistInfo()
        seed_everything(cfg.seed)
        parts = self.build()
        self.net, self.optimizer = parts.net, parts.optimizer
        forward = parts.forward or parts.net
        if self.dist.enabled:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = forward
        self.loader, self.sampler, self.loader_generator = train_loader(
            parts.dataset, cfg.batch_size, self.dist, cfg.seed, cfg.data.workers, device)
        self.scheduler = None
        if parts.lr_factor is not None:
            total, factor = cfg.epochs * len(self.loader), parts.lr_factor
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: factor(step, total))
        self.autocast, self.use_scaler = autocast_for(device, cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_scaler)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch``; the step's loss values."""
        losses = self.step(batch)
        values = {k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in losses.items()}
        if not math.isfinite(values["loss"]) and not self.use_scaler:
            raise Diverged(values["loss"], self.steps_done + 1, self.epoch + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps_done += 1
        return values

    def _run(self, device: torch.device, dist: DistInfo, overwrite: bool,
             on_epoch_end: EpochCallback | None) -> RunResult:
        cfg = self.cfg
        self.device, self.dist = device, dist
        per_rank_batch(cfg.batch_size, dist)
        self.prepare()
        settings = {**cfg.result_settings(), **self.fingerprint_facts()}
        fp = fingerprint({k: v for k, v in settings.items() if k != "epochs"})  # more epochs continue a run
        saved = prepare_run_dir(self.run_dir, fp, cfg.epochs, overwrite, dist, result=self.result_name,
                                finished=self.result_file(),
                                legacy_fp=lambda epochs: fingerprint({**settings, "epochs": epochs}))
        self.setup(device, dist)
        history, start_epoch, self.steps_done = resume_run(saved, self.net, self.optimizer, self.scaler,
                                                           self.scheduler)
        self.epochs_history = list(saved.epochs_history) if saved else []
        if not self.epochs_history or self.epochs_history[-1]["epochs"] != cfg.epochs:
            self.epochs_history.append({"epochs": cfg.epochs, "from_epoch": start_epoch})
        if saved is not None:
            self._report_resume(saved)
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
            write_run_json(self.run_dir, {"resumed_after_epoch": start_epoch, "epochs_history": self.epochs_history,
                                          "device": str(device), "world_size": dist.world_size, **self.run_facts()})
            if saved is not None and saved.finished:  # continued: its result no longer matches its state
                remove_result(self.run_dir, self.result_name)
        barrier(dist)
        for epoch in range(start_epoch, cfg.epochs):
            try:
                row = self._train_epoch(epoch)
            except Diverged as exc:
                raise (self._keep_last_good(exc, bool(history)) if dist.is_main else exc) from None
            history.append(row)
            if dist.is_main:
                self._save_state(fp, history)
            barrier(dist)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
        output = None
        if dist.is_main:
            output = self.save_result()
            log.info("%s written to %s", self.result_name, output)
        barrier(dist)
        return RunResult(self.run_dir, output, history, start_epoch)

    def _keep_last_good(self, exc: Diverged, epoch_saved: bool) -> ConfigError:
        """After a non-finite loss: the weights of the last finished epoch written as this
        run's result under ``last_good/`` (never where a finished run's result goes), and the
        step recorded in run.json; the one-line error that says both."""
        where = None
        if epoch_saved:  # state/ holds the last finished epoch's weights
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(str(self.run_dir / STATE_DIR / "model.safetensors")))
            self.diverged = {"loss": str(exc.loss), "step": exc.step, "epoch": exc.epoch}
            self.result_root = self.run_dir / LAST_GOOD_DIR
            self.result_root.mkdir(exist_ok=True)
            where = self.save_result()
        update_run_json(self.run_dir, {"diverged": {
            "loss": str(exc.loss), "step": exc.step, "epoch": exc.epoch,
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "last_good": str(where) if where else None}})
        kept = (f"the weights after epoch {exc.epoch - 1} are in {where}" if where else "no epoch had finished")
        return ConfigError(f"{self.run_dir}: loss became {exc.loss} at step {exc.step} (epoch {exc.epoch}); "
                           f"{kept} (run.json records the step); lower --lr and rerun with --overwrite")

    def _report_resume(self, saved: SavedRun) -> None:
        """Follow the schedule of this run's total from the step reached, and say how the
        run goes on: resumed (same total) or continued (another total)."""
        before = self.lr
        if self.scheduler is not None:  # closed form of the step: the new total's value when it changed
            for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                           self.scheduler.lr_lambdas):
                group["lr"] = base * factor(self.scheduler.last_epoch)
        if saved.epochs_planned == self.cfg.epochs:
            log.info("%s: resuming after epoch %d of %d", self.run_dir, saved.epochs_done, self.cfg.epochs)
            return
        lr = (f"LR schedule recomputed for {self.cfg.epochs} epochs: {before:.3g} → {self.lr:.3g} at step {self.steps_done}"
              if self.scheduler is not None else f"constant LR {self.lr:.3g}")
        log.info("%s: continuing from epoch %d to %d (it was set for %d; %s)", self.run_dir, saved.epochs_done,
                 self.cfg.epochs, saved.epochs_planned, lr)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        self.epoch = epoch
        t0 = time.perf_counter()
        self.loader_generator.manual_seed(epoch_seed(cfg.seed, epoch))
        self.start_epoch(epoch_seed(cfg.seed, epoch, self.dist.rank))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and self.dist.is_main), leave=False)
        for batch in bar:
            values = self.train_step(batch)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{self.lr:.3g}")
        means = mean_across_ranks({k: v / len(self.loader) for k, v in sums.items()}, self.dist, self.device)
        row: dict[str, Any] = dict.fromkeys(self.metrics_columns)
        row.update({k: round(v, self.decimals.get(k, 6)) for k, v in means.items()})
        row.update(epoch=epoch + 1, lr=self.lr, seconds=round(time.perf_counter() - t0, 3))  # training only
        if self.validation_due(epoch + 1):
            t_val = time.perf_counter()
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # its loader draws a seed: training's RNG stays as it was
                row.update(self.validate())
            row["val_seconds"] = round(time.perf_counter() - t_val, 3)
        if self.dist.is_main:
            self._log_epoch(row, means)
        return row

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _log_epoch(self, row: dict[str, Any], means: dict[str, float]) -> None:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        score = val_score(row)
        val = f", {val_words(score[0])} {100 * score[1]:.2f} %" if score is not None else ""
        log.info("epoch %d/%d: loss %.4f%s, lr %.3g, %.1f s%s", row["epoch"], self.cfg.epochs, row["loss"],
                 f" ({parts})" if parts else "", row["lr"], row["seconds"], val)

    def _save_state(self, fp: str, history: list[dict[str, Any]]) -> None:
        rng_tensors, rng_values = rng_state()
        save_run_state(
            self.run_dir, self.net, self.optimizer,
            RunState(epoch=self.epoch + 1, step=self.steps_done, fingerprint=fp, history=history,
                     epochs=self.cfg.epochs, epochs_history=self.epochs_history,
                     scheduler=self.scheduler.state_dict() if self.scheduler is not None else {},
                     scaler=self.scaler.state_dict() if self.use_scaler else {}, rng_values=rng_values),
            rng_tensors,
        )
        write_metrics_csv(self.run_dir / "metrics.csv", history, self.metrics_columns)

    def provenance(self) -> dict[str, Any]:
        """What every result records about the run that made it."""
        cfg = self.cfg
        return {
            "epochs": cfg.epochs,
            "epochs_history": self.epochs_history,  # more than one entry: continued with more epochs
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            **({"diverged": self.diverged} if self.diverged else {}),  # a last_good/ result: the run stopped
            # every setting that changes what the run computes, as config.yaml holds it
            "settings": cfg.result_settings(),
            "run_dir": str(self.run_dir.resolve()),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
            "git": git_state(),
        }


def val_words(column: str) -> str:
    """A val column's name in log lines: stage 1 scores with the patches' true classes."""
    return "val mIoU (oracle classes)" if column.endswith("_oracle") else "val mIoU"


def val_score(row: dict[str, Any]) -> tuple[str, float] | None:
    """(column, value) of a metrics row's val mIoU, whichever stage wrote it; None without one."""
    for column in ("val_miou", "val_miou_oracle"):
        if row.get(column) is not None:
            return column, row[column]
    return None


class ValidatedTrainer(Trainer):
    """A trainer scored on the val split's masks as it trains (stages 1 and 2): mIoU
    (mlps protocol) every ``val_every`` epochs and after the last, on rank 0."""

    cfg: SupervisedRunConfig
    val_loader: DataLoader | None = None
    val_column = "val_miou"  # its metrics.csv column

    def make_val_loader(self, index: DatasetIndex, background_seed: BackgroundSeedParams) -> DataLoader | None:
        """The val patches of ``index`` with their masks (background seeded by ``seed``),
        when they have masks and this rank validates; None otherwise."""
        if self.cfg.val_every == 0 or not self.dist.is_main or not index.has_masks("val"):
            return None
        dataset = PatchDataset(index.split("val", need_masks=True), index.num_classes, background_seed=background_seed, with_masks=True)
        return DataLoader(dataset, batch_size=max(1, self.cfg.batch_size // self.dist.world_size), shuffle=False,
                          num_workers=loader_workers(self.cfg.data.workers))

    def validation_due(self, epochs_done: int) -> bool:
        every = self.cfg.val_every
        return self.val_loader is not None and (epochs_done % every == 0 or epochs_done == self.cfg.epochs)

    def validate(self) -> dict[str, Any]:
        max_batches = None
        if self.cfg.val_max_patches is not None:
            max_batches = max(1, math.ceil(self.cfg.val_max_patches / self.val_loader.batch_size))
        return {self.val_column: round(self.val_confusion(max_batches).scores("mlps").miou, 6)}

    @abstractmethod
    def val_confusion(self, max_batches: int | None) -> Any:
        """The confusion matrix of the network on (up to ``max_batches`` of) the val loader."""

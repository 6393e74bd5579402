"""Stage 2 of PSCL: segmentation trained on the stage-1 pseudo-labels (thesis §4.4).

``train_stage2(cfg)`` runs the whole stage into ``cfg.out`` (the run directory)::

    RUN_DIR/config.yaml      the resolved Stage2Config
    RUN_DIR/run.json         software versions, git state, dataset, pseudo-labels, init
    RUN_DIR/metrics.csv      one row per epoch: mean loss, lr, training seconds, val
                             mIoU (mlps, when the val split has masks) and its seconds
    RUN_DIR/state/           resumable state after the last finished epoch
    RUN_DIR/checkpoint/      the final network (wsi_seg checkpoint, stage 2)

The network is ``PsclNet`` with the stage-1 checkpoint's config at ``stage=2``: encoder
(and, unused, classifier) weights copied from ``cfg.init``, pixel decoder and 1×1 head
fresh (seeded). Patches and pseudo-label masks are flipped jointly. The loss sees the
logits upsampled (bilinear) from 1/4 to the patch size — as ``wsi-seg segment`` does at
inference — so thin structures of the full-resolution pseudo-labels count fully:

* ``ce`` (default, the thesis' better result, table 5.23): cross-entropy over
  background + N classes;
* ``nr``: the noise-reduced loss (eq. 4.10–4.11, :class:`training.losses.NRLoss`) with
  the saved CAMs, Gumbel-softmax probabilities seeded per epoch.

AdamW at a constant learning rate (table 5.1 lists no scheduler). Resuming, seeding
and torchrun work as in stage 1 (:mod:`training.stage1`); the classifier is frozen so
DistributedDataParallel sees only parameters that get gradients.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from wsi_seg.errors import CheckpointError, ConfigError, DatasetError, WsiSegError
from wsi_seg.model import LoadedModel, PsclNet, load_checkpoint, save_checkpoint

from training.augment import flips
from training.config import Stage2Config, dump_yaml
from training.datasets import DatasetIndex, PatchDataset, SeedParams, open_checked_dataset
from training.datasets.pseudo import PseudoLabelDataset, PseudoLabels, open_pseudo_labels
from training.distributed import DistInfo, barrier, mean_across_ranks, shutdown
from training.encoder_training import parameter_groups
from training.evaluate import confusion_on_loader
from training.loop import (
    RunResult,
    autocast_for,
    device_and_dist,
    epoch_seed,
    per_rank_batch,
    prepare_run_dir,
    resume_run,
    result_settings,
    train_loader,
    worker_error,
    write_metrics_csv,
)
from training.losses import GumbelSoftmax, NRLoss
from training.reproducibility import rng_state, seed_everything
from training.run_info import git_state, software_versions, write_run_json
from training.run_state import RunState, fingerprint, save_run_state

log = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "loss", "lr", "seconds", "val_miou", "val_seconds")
_NON_RESULT_KEYS = ("out", "device", "progress", "data.workers", "val_every", "val_max_patches")


class _SegmentationForward(nn.Module):
    """``forward`` = normalise + ``forward_segmentation``, so DistributedDataParallel sees it."""

    def __init__(self, net: PsclNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.net.forward_segmentation(self.net.normalize(images_uint8))


def load_stage1_init(path: str | Path, index: DatasetIndex) -> LoadedModel:
    """The stage-1 checkpoint stage 2 starts from, checked against the dataset."""
    loaded = load_checkpoint(path)
    cfg = loaded.config
    if cfg.stage != 1:
        raise CheckpointError(f"{path}: --init needs a stage-1 checkpoint (wsi-seg train --stage 1); this one is stage {cfg.stage}")
    if tuple(cfg.class_names) != tuple(index.class_names):
        raise CheckpointError(
            f"{path}: stage-1 checkpoint of classes {', '.join(cfg.class_names)} but the dataset "
            f"{index.root} has {', '.join(index.class_names)}"
        )
    h, w = index.patch_hw["train"]
    if (h, w) != (cfg.patch_size_px, cfg.patch_size_px):
        raise DatasetError(
            f"{index.root}: train patches are {w}×{h} px but the stage-1 checkpoint {path} was "
            f"trained on {cfg.patch_size_px} px patches"
        )
    return loaded


def stage2_network(init: LoadedModel) -> PsclNet:
    """A stage-2 PsclNet of the stage-1 config, encoder and classifier copied from it.

    The decoder and head are initialised from the global torch RNG (seed it first).
    """
    cfg = init.config.replace(stage=2, provenance={})
    net = PsclNet(cfg)
    net.encoder.load_state_dict(init.net.encoder.state_dict())
    net.cam_head.load_state_dict(init.net.cam_head.state_dict())
    return net


def segmentation_loss(
    name: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], device: torch.device, nr: NRLoss | None
) -> torch.Tensor:
    """The stage-2 loss of (B, N+1, h, w) logits against a batch of pseudo-labels.

    Logits are upsampled bilinearly to the patch size (float32) before the loss.
    """
    mask = batch["mask"].to(device, non_blocking=True)
    logits = F.interpolate(logits.float(), size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    if name == "ce":
        return F.cross_entropy(logits, mask.long())
    if name != "nr" or nr is None:
        raise ConfigError(f"unknown stage-2 loss {name!r} (or nr without its NRLoss); use ce or nr")
    return nr(logits, mask, batch["cams"].to(device, non_blocking=True))


def train_stage2(
    cfg: Stage2Config,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train stage 2 into ``cfg.out``, resuming an interrupted run; see the module doc.

    ``on_epoch_end(epoch, row)`` is called after each epoch's state is saved (epochs
    count from 1); raising in it stops the run like an interruption would.
    """
    cfg.validate()
    device, dist_info = device_and_dist(cfg.device)
    try:
        return _train(cfg, device, dist_info, overwrite, on_epoch_end)
    except WsiSegError as exc:
        raise worker_error(exc) from exc
    finally:
        shutdown(dist_info)


def _train(
    cfg: Stage2Config,
    device: torch.device,
    dist_info: DistInfo,
    overwrite: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> RunResult:
    from tqdm import tqdm

    run_dir = Path(cfg.out)
    per_rank_batch(cfg.batch_size, dist_info)
    index = open_checked_dataset(cfg.data.path, cfg.data.format)
    init = load_stage1_init(cfg.init, index)
    labels = open_pseudo_labels(cfg.data.pseudo_labels, index, need_cams=cfg.loss.name == "nr")
    _check_pseudo_label_origin(labels, init, index)
    if len(labels.records) < cfg.batch_size:
        raise ConfigError(
            f"{index.root}: {len(labels.records)} train patches, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    fp = fingerprint({
        **result_settings(cfg.to_dict(), _NON_RESULT_KEYS),
        "init_sha256": init.sha256,  # same paths, other contents: not the same run
        "pseudo_labels_by": (labels.manifest.get("checkpoint") or {}).get("sha256"),
    })
    state_dir = prepare_run_dir(run_dir, fp, cfg.epochs, overwrite, dist_info)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")

    seed_everything(cfg.seed)
    net = stage2_network(init).to(device)
    net.cam_head.requires_grad_(False)  # not used by the segmentation forward
    net.train()
    groups = parameter_groups(net, cfg.optim.lr, cfg.encoder)  # freezes before DDP sees the parameters
    forward: nn.Module = _SegmentationForward(net)
    if dist_info.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    dataset = PseudoLabelDataset(labels.records, index.num_classes, transform=flips(), with_cams=cfg.loss.name == "nr")
    loader, sampler, loader_gen = train_loader(dataset, cfg.batch_size, dist_info, cfg.seed, cfg.data.workers, device)
    steps_per_epoch = len(loader)
    autocast, use_scaler = autocast_for(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    gumbel = GumbelSoftmax(tau=cfg.loss.gumbel_tau)
    nr_loss = NRLoss(probabilities=gumbel) if cfg.loss.name == "nr" else None
    val_loader = _val_loader(cfg, index, dist_info)

    history, start_epoch, step = resume_run(state_dir, cfg.epochs, net, optimizer, scaler)
    if dist_info.is_main:
        write_run_json(run_dir, {
            "resumed_after_epoch": start_epoch,
            "device": str(device),
            "world_size": dist_info.world_size,
            "dataset": {
                "path": str(index.root.resolve()),
                "format": index.info.name,
                "splits": {k: len(v) for k, v in index.splits.items()},
                "patch_size_px": init.config.patch_size_px,
            },
            "pseudo_labels": {"path": str(labels.root.resolve()), "patches": len(labels.records)},
            "init": {"path": str(Path(cfg.init).resolve()), "sha256": init.sha256},
            "model": net.cfg.to_dict(),
        })

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
        gumbel.reseed(cfg.seed * 1_000_003 + epoch * 101 + dist_info.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        total_loss = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and dist_info.is_main), leave=False)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            with autocast:
                logits = forward(images)
            loss = segmentation_loss(cfg.loss.name, logits, batch, device, nr_loss)
            loss_value = loss.item()
            if not math.isfinite(loss_value) and not use_scaler:
                raise ConfigError(f"loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            total_loss += loss_value
            bar.set_postfix(loss=f"{loss_value:.4f}")
        means = mean_across_ranks({"loss": total_loss / steps_per_epoch}, dist_info, device)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": round(means["loss"], 6),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),  # training only
            "val_miou": None,
            "val_seconds": None,
        }
        if val_loader is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            max_batches = None
            if cfg.val_max_patches is not None:
                max_batches = max(1, math.ceil(cfg.val_max_patches / val_loader.batch_size))
            t_val = time.perf_counter()
            cm = confusion_on_loader(net, val_loader, device, max_batches=max_batches)
            row["val_miou"] = round(cm.scores("mlps").miou, 6)
            row["val_seconds"] = round(time.perf_counter() - t_val, 3)
        history.append(row)
        if dist_info.is_main:
            rng_tensors, rng_values = rng_state()
            save_run_state(
                run_dir, net, optimizer,
                RunState(epoch=epoch + 1, step=step, fingerprint=fp, history=history,
                         scaler=scaler.state_dict() if use_scaler else {}, rng_values=rng_values),
                rng_tensors,
            )
            write_metrics_csv(run_dir / "metrics.csv", history, METRICS_COLUMNS)
            val = f", val mIoU {100 * row['val_miou']:.2f} %" if row["val_miou"] is not None else ""
            log.info("epoch %d/%d: %s loss %.4f, %.1f s%s",
                     epoch + 1, cfg.epochs, cfg.loss.name, row["loss"], row["seconds"], val)
        barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    checkpoint = None
    if dist_info.is_main:
        final_cfg = net.cfg.replace(provenance=_provenance(cfg, index, labels, init, run_dir))
        checkpoint = save_checkpoint(net, run_dir / "checkpoint", config=final_cfg)
        log.info("stage-2 checkpoint written to %s", checkpoint)
    barrier(dist_info)
    return RunResult(run_dir=run_dir, checkpoint=checkpoint, history=history, resumed_from_epoch=start_epoch)


def _check_pseudo_label_origin(labels: PseudoLabels, init: LoadedModel, index: DatasetIndex) -> None:
    """Warn (not fail) when the pseudo-labels come from another checkpoint or dataset copy."""
    made_by = (labels.manifest.get("checkpoint") or {}).get("sha256")
    if made_by and made_by != init.sha256:
        log.warning("%s: pseudo-labels were made by another checkpoint (sha256 %s…) than --init %s",
                    labels.root, made_by[:12], init.path)
    made_from = (labels.manifest.get("dataset") or {}).get("path")
    if made_from and Path(made_from) != index.root.resolve():
        log.warning("%s: pseudo-labels were made from %s, training on %s", labels.root, made_from, index.root)


def _val_loader(cfg: Stage2Config, index: DatasetIndex, info: DistInfo) -> DataLoader | None:
    """Val patches with masks, scored as ``wsi-seg evaluate`` scores stage 2 (no seeding)."""
    if cfg.val_every == 0 or not info.is_main or not index.has_masks("val"):
        return None
    dataset = PatchDataset(index.split("val", need_masks=True), index.num_classes,
                           seed=SeedParams(enabled=False), with_masks=True)
    return DataLoader(dataset, batch_size=max(1, cfg.batch_size // info.world_size), shuffle=False,
                      num_workers=cfg.data.workers)


def _provenance(
    cfg: Stage2Config, index: DatasetIndex, labels: PseudoLabels, init: LoadedModel, run_dir: Path
) -> dict[str, Any]:
    return {
        "training": {
            "stage": 2,
            "method": f"PSCL stage 2 ({'cross-entropy' if cfg.loss.name == 'ce' else 'noise-reduced loss'})",
            "loss": dataclasses.asdict(cfg.loss),
            "init": {"path": str(Path(cfg.init).resolve()), "sha256": init.sha256},
            "pseudo_labels": {
                "path": str(labels.root.resolve()),
                "rule": labels.manifest.get("rule"),
                "gating_threshold": labels.manifest.get("gating_threshold"),
                "checkpoint_sha256": (labels.manifest.get("checkpoint") or {}).get("sha256"),
            },
            "dataset": str(index.root.resolve()),
            "dataset_format": index.info.name,
            "train_patches": len(labels.records),
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "optim": {"name": "AdamW", **dataclasses.asdict(cfg.optim)},
            "encoder": dataclasses.asdict(cfg.encoder),
            "stage1": init.config.provenance.get("training"),
            "run_dir": str(run_dir.resolve()),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
            "git": git_state(),
        }
    }


"""Stage 1 of PSCL: classification (MLSM) + λ·PSCL on patch-level labels (thesis §4.3).

``train_stage1(cfg)`` runs the whole stage into ``cfg.out`` (the run directory)::

    RUN_DIR/config.yaml      the resolved Stage1Config
    RUN_DIR/run.json         software versions, git state, dataset facts, devices
    RUN_DIR/metrics.csv      one row per epoch: mean loss, mlsm, pscl; lr at the end; training
                             seconds; val mIoU (mlps, CAM pseudo-labels) and its seconds;
                             mean PSCL pixels per step
    RUN_DIR/state/           resumable state after the last finished epoch
    RUN_DIR/checkpoint/      the final network (wsi_seg checkpoint, stage 1)

Rerunning the same command after an interruption resumes after the last finished
epoch; the result equals an uninterrupted run's. Under ``torchrun`` each process
takes ``batch_size / world_size`` patches per step (DistributedDataParallel); only
rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from wsi_seg.errors import ConfigError, DatasetError, WsiSegError
from wsi_seg.model import PsclNet, cams_from_class_maps, preset_config, save_checkpoint
from wsi_seg.model.backbones import resolve_hub_backbone
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.pretrained import PretrainedWeights

from training.augment import flips
from training.config import Stage1Config, dump_yaml
from training.datasets import DatasetIndex, PatchDataset, SeedParams, open_checked_dataset
from training.distributed import DistInfo, barrier, mean_across_ranks, shutdown
from training.encoder_training import parameter_groups
from training.evaluate import confusion_on_loader
from training.losses import MLSMLoss, PSCLLoss, default_supcon
from training.pretrain import initial_weights, resolve_run_weights
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
from training.reproducibility import rng_state, seed_everything
from training.run_info import git_state, software_versions, write_run_json
from training.run_state import RunState, fingerprint, save_run_state

log = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "loss", "mlsm", "pscl", "lr", "seconds", "val_miou", "val_seconds", "pscl_pixels")
# settings that do not change a run's result: a resumed run may differ in these
_NON_RESULT_KEYS = ("out", "device", "progress", "data.workers", "val_every", "val_max_patches",
                    "model.pretrained_sha256")


class _Stage1Forward(nn.Module):
    """``forward`` = ``forward_stage1`` as a tuple, so DistributedDataParallel sees it."""

    def __init__(self, net: PsclNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net.forward_stage1(self.net.normalize(images_uint8))
        return out.logits, out.class_maps, out.features


@dataclass(frozen=True)
class ResolvedData:
    """The dataset and the defaults its format implies, after the config's overrides."""

    index: DatasetIndex
    seed: SeedParams
    mpp: float
    patch_size_px: int


def resolve_data(cfg: Stage1Config) -> ResolvedData:
    index = open_checked_dataset(cfg.data.path, cfg.data.format)
    info = index.info
    index.split("train", need_labels=True)
    enabled = info.background_seed if cfg.data.background_seed is None else cfg.data.background_seed
    min_size = info.bkg_min_size_px if cfg.data.bkg_min_size_px is None else cfg.data.bkg_min_size_px
    seed = SeedParams(enabled=enabled, gray_threshold=cfg.data.bkg_gray_threshold, min_size_px=min_size)
    mpp = cfg.data.mpp if cfg.data.mpp is not None else info.mpp
    if mpp is None:
        log.warning("%s: the patches' µm/px is unknown; assuming 0.5 (pass --mpp)", index.root)
        mpp = 0.5
    h, w = index.patch_hw["train"]
    if h != w or h % 32:
        first = index.splits["train"][0].image
        raise DatasetError(f"{first}: train patches are {w}×{h} px; the network needs square patches, a multiple of 32 px")
    return ResolvedData(index=index, seed=seed, mpp=mpp, patch_size_px=h)


def build_model_config(cfg: Stage1Config, data: ResolvedData) -> ModelConfig:
    """The stage-1 ModelConfig: preset (or backbone), dataset classes, µm/px, seeding; a
    hub backbone (``hf-hub:…``) resolved to its timm architecture, arguments, mean/std."""
    overrides: dict[str, Any] = dict(
        stage=1,
        class_names=data.index.class_names,
        class_colors=data.index.info.class_colors,
        mpp=data.mpp,
        patch_size_px=data.patch_size_px,
        background_seeding=data.seed.enabled,
        bkg_gray_threshold=int(round(cfg.data.bkg_gray_threshold)),
        bkg_min_size_px=data.seed.min_size_px,
    )
    if cfg.pscl.gating:
        overrides["cam_score_threshold"] = cfg.pscl.gating_threshold
    if cfg.model.backbone:
        overrides.update(backbone=cfg.model.backbone, backbone_kwargs={}, preset="")
    return resolve_hub_backbone(preset_config(cfg.model.preset, **overrides))[0]


def _result_settings(cfg: Stage1Config) -> dict[str, Any]:
    return result_settings(cfg.to_dict(), _NON_RESULT_KEYS)


def train_stage1(
    cfg: Stage1Config,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train stage 1 into ``cfg.out``, resuming an interrupted run; see the module doc.

    ``on_epoch_end(epoch, row)`` is called after each epoch's state is saved (epochs
    count from 1); raising in it stops the run like an interruption would.
    """
    cfg.validate()
    fp = fingerprint(_result_settings(cfg))
    device, dist_info = device_and_dist(cfg.device)
    try:
        return _train(cfg, fp, device, dist_info, overwrite, on_epoch_end)
    except WsiSegError as exc:
        raise worker_error(exc) from exc
    finally:
        shutdown(dist_info)


def _train(
    cfg: Stage1Config,
    fp: str,
    device: torch.device,
    dist_info: DistInfo,
    overwrite: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> RunResult:
    from tqdm import tqdm

    run_dir = Path(cfg.out)
    data = resolve_data(cfg)
    model_cfg = build_model_config(cfg, data)
    weights = resolve_run_weights(cfg.model, model_cfg)
    per_rank_batch(cfg.batch_size, dist_info)
    train_records = data.index.split("train", need_labels=True)
    if len(train_records) < cfg.batch_size:
        raise ConfigError(
            f"{data.index.root}: {len(train_records)} train patches, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    state_dir = prepare_run_dir(run_dir, fp, cfg.epochs, overwrite, dist_info)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")

    seed_everything(cfg.seed)
    net = PsclNet(model_cfg, pretrained=initial_weights(weights)).to(device)
    net.train()
    groups = parameter_groups(net, cfg.optim.lr, cfg.encoder)  # freezes before DDP sees the parameters
    forward: nn.Module = _Stage1Forward(net)
    if dist_info.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.SGD(
        groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    dataset = PatchDataset(train_records, data.index.num_classes, seed=data.seed, transform=flips())
    loader, sampler, loader_gen = train_loader(dataset, cfg.batch_size, dist_info, cfg.seed, cfg.data.workers, device)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=cfg.epochs * steps_per_epoch, power=cfg.optim.poly_power
    )
    autocast, use_scaler = autocast_for(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    mlsm_loss = MLSMLoss()
    pscl_loss = PSCLLoss(
        threshold=cfg.pscl.threshold,
        include_background=cfg.pscl.include_background,
        gating_threshold=cfg.pscl.gating_threshold if cfg.pscl.gating else None,
        max_pixels_per_class_per_image=cfg.pscl.max_pixels_per_class_per_image,
        max_pixels_total=cfg.pscl.max_pixels_total,
        loss=default_supcon(cfg.pscl.temperature),
    )
    val_loader = _val_loader(cfg, data, dist_info)

    history, start_epoch, step = resume_run(state_dir, cfg.epochs, net, optimizer, scaler, scheduler)
    if dist_info.is_main:
        write_run_json(run_dir, {
            "resumed_after_epoch": start_epoch,
            "device": str(device),
            "world_size": dist_info.world_size,
            "dataset": {
                "path": str(data.index.root.resolve()),
                "format": data.index.info.name,
                "splits": {k: len(v) for k, v in data.index.splits.items()},
                "patch_size_px": data.patch_size_px,
                "mpp": data.mpp,
                "background_seed": dataclasses.asdict(data.seed),
            },
            "model": model_cfg.to_dict(),
            "pretrained": weights.to_dict() if weights else None,
        })

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
        pscl_loss.reseed(cfg.seed * 1_000_003 + epoch * 101 + dist_info.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "mlsm": 0.0, "pscl": 0.0, "pscl_pixels": 0.0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and dist_info.is_main), leave=False)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with autocast:
                logits, class_maps, features = forward(images)
            mlsm = mlsm_loss(logits, labels)
            total = mlsm
            pscl_value = torch.zeros((), device=device)
            if cfg.pscl.enabled:
                cams = cams_from_class_maps(class_maps.detach().float())
                background = batch["background"].to(device) if data.seed.enabled else None
                pscl_value = pscl_loss(features.float(), cams, background, image_labels=labels, logits=logits)
                total = mlsm + cfg.pscl.weight * pscl_value
                sums["pscl_pixels"] += pscl_loss.last_stats.get("sampled_pixels", 0)
            loss_value = total.item()
            if not math.isfinite(loss_value) and not use_scaler:
                raise ConfigError(f"loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            sums["loss"] += loss_value
            sums["mlsm"] += mlsm.item()
            sums["pscl"] += pscl_value.item()
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        means = mean_across_ranks({k: v / steps_per_epoch for k, v in sums.items()}, dist_info, device)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": round(means["loss"], 6),
            "mlsm": round(means["mlsm"], 6),
            "pscl": round(means["pscl"], 6) if cfg.pscl.enabled else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),  # training only
            "val_miou": None,
            "val_seconds": None,
            "pscl_pixels": round(means["pscl_pixels"], 1) if cfg.pscl.enabled else None,
        }
        if val_loader is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            max_batches = None
            if cfg.val_max_patches is not None:
                max_batches = max(1, math.ceil(cfg.val_max_patches / val_loader.batch_size))
            t_val = time.perf_counter()
            cm = confusion_on_loader(net, val_loader, device, "gt", pscl_loss.gating_threshold, max_batches)
            row["val_miou"] = round(cm.scores("mlps").miou, 6)
            row["val_seconds"] = round(time.perf_counter() - t_val, 3)
        history.append(row)
        if dist_info.is_main:
            rng_tensors, rng_values = rng_state()
            save_run_state(
                run_dir, net, optimizer,
                RunState(epoch=epoch + 1, step=step, fingerprint=fp, history=history,
                         scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if use_scaler else {},
                         rng_values=rng_values),
                rng_tensors,
            )
            write_metrics_csv(run_dir / "metrics.csv", history, METRICS_COLUMNS)
            val = f", val mIoU {100 * row['val_miou']:.2f} %" if row["val_miou"] is not None else ""
            log.info("epoch %d/%d: loss %.4f (mlsm %.4f, pscl %s), lr %.3g, %.1f s%s",
                     epoch + 1, cfg.epochs, row["loss"], row["mlsm"],
                     f"{row['pscl']:.4f}" if row["pscl"] is not None else "off", row["lr"], row["seconds"], val)
        barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    checkpoint = None
    if dist_info.is_main:
        final_cfg = model_cfg.replace(provenance={**model_cfg.provenance, **_provenance(cfg, data, run_dir, weights)})
        checkpoint = save_checkpoint(net, run_dir / "checkpoint", config=final_cfg)
        log.info("stage-1 checkpoint written to %s", checkpoint)
    barrier(dist_info)
    return RunResult(run_dir=run_dir, checkpoint=checkpoint, history=history, resumed_from_epoch=start_epoch)


def _val_loader(cfg: Stage1Config, data: ResolvedData, info: DistInfo) -> DataLoader | None:
    if cfg.val_every == 0 or not info.is_main or not data.index.has_masks("val"):
        return None
    dataset = PatchDataset(data.index.split("val", need_masks=True), data.index.num_classes,
                           seed=data.seed, with_masks=True)
    return DataLoader(dataset, batch_size=max(1, cfg.batch_size // info.world_size), shuffle=False,
                      num_workers=cfg.data.workers)


def _provenance(
    cfg: Stage1Config, data: ResolvedData, run_dir: Path, weights: PretrainedWeights | None
) -> dict[str, Any]:
    return {
        "training": {
            "stage": 1,
            "method": "PSCL" if cfg.pscl.enabled else "CAM baseline (MLSM only)",
            "dataset": str(data.index.root.resolve()),
            "dataset_format": data.index.info.name,
            "train_patches": len(data.index.splits["train"]),
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "optim": dataclasses.asdict(cfg.optim),
            "encoder": dataclasses.asdict(cfg.encoder),
            "pscl": dataclasses.asdict(cfg.pscl),
            "background_seed": dataclasses.asdict(data.seed),
            "pretrained": weights.to_dict() if weights else None,
            "run_dir": str(run_dir.resolve()),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
            "git": git_state(),
        }
    }

"""Unsupervised pre-training of the encoder: NT-Xent, L_intra + 0.5·L_inter (thesis §4.2).

``train_pretrain(cfg)`` runs into ``cfg.out`` (the run directory)::

    RUN_DIR/config.yaml           the resolved PretrainConfig
    RUN_DIR/run.json              software versions, git state, images, devices
    RUN_DIR/metrics.csv           one row per epoch: mean loss, intra, inter, lr, seconds
    RUN_DIR/state/                resumable state after the last finished epoch
    RUN_DIR/encoder.safetensors   the encoder weights, for ``wsi-seg train --stage 1
                                  --pretrained RUN_DIR/encoder.safetensors`` (same preset)

The network is the wsi-seg encoder of the preset with two projection heads on the
backbone's own last map (``backbone_features``: stride 32 for hierarchical backbones;
for plain ViTs the last token map, stride 16, without the multi-scale adapter): a dense one (1×1 conv → ReLU → 1×1 conv) for the intra-image term and a
global one (average pool → linear → ReLU → linear) for the inter-image term; which
pairs are positives is defined in :class:`training.losses.IntraInterNTXentLoss`. The
heads are dropped at the end. Resuming, seeding and torchrun work as in stage 1 (under
torchrun each process contrasts its own share of the batch).

The weights file holds the encoder under timm's own names (the full model's
``state_dict`` keys, no classifier head), which is what ``timm.create_model(name,
features_only=True, pretrained=True, pretrained_cfg_overlay={"file": PATH})`` — the way
:class:`TimmEncoder` loads ``--pretrained`` — expects. timm loads such files
non-strictly, so after writing it the file is loaded back that way and compared.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_seg.errors import CheckpointError, ConfigError, WsiSegError
from wsi_seg.model import preset_config
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.backbones import build_encoder, resolve_hub_backbone
from wsi_seg.model.hub import is_hub_name
from wsi_seg.model.pretrained import PretrainedWeights, hub_backbone_weights, resolve_pretrained

from training.config import ModelSettings, PretrainConfig, dump_yaml
from training.datasets.unlabelled import ContrastiveViews, check_image_sizes, pretrain_images
from training.distributed import DistInfo, barrier, mean_across_ranks, shutdown
from training.loop import (
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
from training.losses import IntraInterNTXentLoss
from training.reproducibility import rng_state, seed_everything
from training.run_info import git_state, software_versions, write_run_json
from training.run_state import RunState, fingerprint, save_run_state

log = logging.getLogger(__name__)

WEIGHTS_NAME = "encoder.safetensors"
METADATA_KEY = "wsi_seg_pretrain"
WEIGHTS_FORMAT_VERSION = 1
METRICS_COLUMNS = ("epoch", "loss", "intra", "inter", "lr", "seconds")
_NON_RESULT_KEYS = ("out", "device", "progress", "data.workers", "model.pretrained_sha256")


@dataclass
class PretrainResult:
    run_dir: Path
    weights: Path | None  # None on ranks other than 0
    history: list[dict[str, Any]]
    resumed_from_epoch: int


class ContrastiveNet(nn.Module):
    """Encoder + dense and global projection heads on its last stage.

    ``forward(x, v, s)`` takes three (B, 3, P, P) uint8 batches (image, visual view,
    spatial view) and returns (dense_x, dense_v) (B, D, P/32, P/32; a ViT's stride-16
    token map average-pooled to that grid) and (global_x,
    global_s) (B, D); one encoder pass over the 3B images.
    """

    def __init__(
        self, cfg: ModelConfig, projection_dim: int = 128, pretrained: str | Path | bool | PretrainedWeights = False
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg, pretrained)
        c = self.encoder.backbone_channels
        self.dense_head = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, projection_dim, 1))
        self.global_head = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, projection_dim))
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        images = torch.cat([x, v, s]).float().div_(255.0)
        feats = self.encoder.backbone_features((images - self.mean) / self.std)
        cells = images.shape[-1] // 32
        if feats.shape[-1] > cells:  # ViT token maps (stride 16): the dense term's cost grows
            feats = nn.functional.adaptive_avg_pool2d(feats, cells)  # with cells², keep Swin-T's 7×7
        fx, fv, fs = feats.split(b)
        dense_x, dense_v = self.dense_head(torch.cat([fx, fv])).split(b)
        global_x, global_s = self.global_head(torch.cat([fx, fs]).mean(dim=(2, 3))).split(b)
        return dense_x, dense_v, global_x, global_s


def encoder_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights under the names of timm's full model (no ``model.`` prefix)."""
    model = getattr(encoder.body, "model", encoder.body)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_encoder_weights(encoder: nn.Module, path: Path, cfg: ModelConfig, provenance: dict[str, Any]) -> Path:
    """Write the encoder as a safetensors file ``--pretrained`` loads, and check it does."""
    from safetensors.torch import save_file

    meta = {
        "format_version": WEIGHTS_FORMAT_VERSION,
        "backbone": cfg.backbone,
        "backbone_kwargs": cfg.backbone_kwargs,
        "preset": cfg.preset,
        "patch_size_px": cfg.patch_size_px,
        "provenance": provenance,
    }
    weights = encoder_state_dict(encoder)
    tmp = path.with_name(path.stem + ".tmp.safetensors")  # timm picks the loader by suffix
    save_file(weights, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=str)})
    reloaded = build_encoder(cfg, pretrained=tmp)
    expected = encoder.body.state_dict()
    got = reloaded.body.state_dict()
    differing = [k for k in expected if not torch.equal(expected[k].cpu(), got[k])]
    if differing:
        tmp.unlink()
        raise CheckpointError(f"{path}: encoder weights did not load back into {cfg.backbone} ({differing[0]} differs)")
    os.replace(tmp, path)
    return path


def check_pretrained_file(path: str | Path, cfg: ModelConfig) -> None:
    """CheckpointError when a weights file of ``wsi-seg pretrain`` was made for another
    backbone than ``cfg``'s; files without its metadata (e.g. ImageNet weights) pass."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise CheckpointError(f"{path}: cannot read weights file ({exc})") from exc
    if raw is None:
        return
    meta = json.loads(raw)
    if (meta.get("backbone"), meta.get("backbone_kwargs") or {}) != (cfg.backbone, dict(cfg.backbone_kwargs)):
        made = f"preset {meta['preset']}" if meta.get("preset") else f"backbone {meta.get('backbone')}"
        wanted = f"preset {cfg.preset}" if cfg.preset else f"backbone {cfg.backbone}"
        raise CheckpointError(f"{path}: encoder pre-trained for {made}, but this run builds {wanted}; "
                              f"use the same --preset/--backbone as wsi-seg pretrain")


def resolve_run_weights(settings: ModelSettings, model_cfg: ModelConfig) -> PretrainedWeights | None:
    """The initial encoder weights of a run (``settings.pretrained``), checked against a
    ``wsi-seg pretrain`` file's backbone and the ``pretrained_sha256`` pin; the hash is
    written back into ``settings`` so the run's config.yaml records it. An ``hf-hub:``
    backbone (``model_cfg.provenance["encoder_weights"]``) starts from its own hub weights
    under ``auto``."""
    hub = model_cfg.provenance.get("encoder_weights")
    if hub and settings.pretrained == "auto":
        weights: PretrainedWeights | None = hub_backbone_weights(hub)
        if settings.pretrained_sha256 and weights.sha256 != settings.pretrained_sha256:
            raise CheckpointError(f"{weights.file}: sha256 differs from the pinned {settings.pretrained_sha256[:12]}…")
    else:
        weights = resolve_pretrained(settings.pretrained, model_cfg.backbone, dict(model_cfg.backbone_kwargs),
                                     sha256=settings.pretrained_sha256)
    if weights is not None and weights.hub_repo is None:
        check_pretrained_file(weights.file, model_cfg)
    settings.pretrained_sha256 = weights.sha256 if weights is not None else None
    return weights


def initial_weights(weights: PretrainedWeights | None) -> PretrainedWeights | str | bool:
    """What the network builders take: an ``hf-hub:`` source by name (timm's hub loading,
    which then finds the file in the cache), other resolved weights as they are."""
    if weights is None:
        return False
    return weights.spec if is_hub_name(weights.spec) else weights


def train_pretrain(
    cfg: PretrainConfig,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """Pre-train the encoder into ``cfg.out``, resuming an interrupted run; see the module doc.

    ``on_epoch_end(epoch, row)`` is called after each epoch's state is saved (epochs
    count from 1); raising in it stops the run like an interruption would.
    """
    cfg.validate()
    fp = fingerprint(result_settings(cfg.to_dict(), _NON_RESULT_KEYS))
    device, dist_info = device_and_dist(cfg.device)
    try:
        return _train(cfg, fp, device, dist_info, overwrite, on_epoch_end)
    except WsiSegError as exc:
        raise worker_error(exc) from exc
    finally:
        shutdown(dist_info)


def pretrain_model_config(cfg: PretrainConfig) -> ModelConfig:
    """The encoder's ModelConfig: the preset (or backbone) at the pre-training patch size;
    a hub backbone (``hf-hub:…``) resolved to its timm architecture."""
    overrides: dict[str, Any] = {}
    if cfg.model.backbone:
        overrides.update(backbone=cfg.model.backbone, backbone_kwargs={}, preset="")
    if cfg.data.patch_size_px is not None:
        overrides["patch_size_px"] = cfg.data.patch_size_px
    return resolve_hub_backbone(preset_config(cfg.model.preset, **overrides))[0]


def _train(
    cfg: PretrainConfig,
    fp: str,
    device: torch.device,
    dist_info: DistInfo,
    overwrite: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> PretrainResult:
    from tqdm import tqdm

    run_dir = Path(cfg.out)
    weights_path = run_dir / WEIGHTS_NAME
    per_rank_batch(cfg.batch_size, dist_info)
    model_cfg = pretrain_model_config(cfg)
    hub_weights = model_cfg.provenance.get("encoder_weights")
    images = pretrain_images(cfg.data.path, cfg.data.format)
    check_image_sizes(images, model_cfg.patch_size_px)
    if len(images) < cfg.batch_size:
        raise ConfigError(f"{cfg.data.path}: {len(images)} images, fewer than one batch of {cfg.batch_size}; lower --batch-size")
    state_dir = prepare_run_dir(run_dir, fp, cfg.epochs, overwrite, dist_info, result=WEIGHTS_NAME, finished=weights_path)
    seed_everything(cfg.seed)
    weights = resolve_run_weights(cfg.model, model_cfg)
    net = ContrastiveNet(model_cfg, cfg.contrast.projection_dim, pretrained=initial_weights(weights)).to(device)
    _check_input_size(net.encoder, model_cfg)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    net.train()
    forward: nn.Module = net
    if dist_info.enabled:
        forward = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    dataset = ContrastiveViews(images, model_cfg.patch_size_px)
    loader, sampler, loader_gen = train_loader(dataset, cfg.batch_size, dist_info, cfg.seed, cfg.data.workers, device)
    steps_per_epoch = len(loader)
    autocast, use_scaler = autocast_for(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    loss_fn = IntraInterNTXentLoss(cfg.contrast.inter_weight, cfg.contrast.temperature)

    history, start_epoch, step = resume_run(state_dir, cfg.epochs, net, optimizer, scaler)
    if dist_info.is_main:
        write_run_json(run_dir, {
            "resumed_after_epoch": start_epoch,
            "device": str(device),
            "world_size": dist_info.world_size,
            "images": {"path": str(Path(cfg.data.path).resolve()), "count": len(images)},
            "model": model_cfg.to_dict(),
        })

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "intra": 0.0, "inter": 0.0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and dist_info.is_main), leave=False)
        for batch in bar:
            views = [batch[k].to(device, non_blocking=True) for k in ("image", "visual", "spatial")]
            with autocast:
                outputs = forward(*views)
            loss = loss_fn(*(o.float() for o in outputs))
            loss_value = loss.item()
            if not math.isfinite(loss_value) and not use_scaler:
                raise ConfigError(f"loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            sums["loss"] += loss_value
            sums["intra"] += loss_fn.last_stats["intra"]
            sums["inter"] += loss_fn.last_stats["inter"]
            bar.set_postfix(loss=f"{loss_value:.4f}")
        means = mean_across_ranks({k: v / steps_per_epoch for k, v in sums.items()}, dist_info, device)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            **{k: round(v, 6) for k, v in means.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
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
            log.info("epoch %d/%d: loss %.4f (intra %.4f, inter %.4f), %.1f s",
                     epoch + 1, cfg.epochs, row["loss"], row["intra"], row["inter"], row["seconds"])
        barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    weights = None
    if dist_info.is_main:
        weights = save_encoder_weights(net.encoder, weights_path, model_cfg, _provenance(cfg, images, run_dir))
        log.info("pre-trained encoder written to %s", weights)
    barrier(dist_info)
    return PretrainResult(run_dir=run_dir, weights=weights, history=history, resumed_from_epoch=start_epoch)


def _check_input_size(encoder: nn.Module, cfg: ModelConfig) -> None:
    """ConfigError (not a traceback mid-epoch) when the backbone refuses the patch size."""
    x = torch.zeros(1, 3, cfg.patch_size_px, cfg.patch_size_px, device=next(encoder.parameters()).device)
    try:
        with torch.no_grad():
            encoder(x)
    except (AssertionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"backbone {cfg.backbone} does not take {cfg.patch_size_px} px patches ({first}); "
            "use its own size (--patch-size) or another --preset/--backbone"
        ) from exc


def cfg_hub_weights(cfg: PretrainConfig) -> str | None:
    """The hub model a run starts from when its backbone is ``hf-hub:…``."""
    backbone = cfg.model.backbone or preset_config(cfg.model.preset).backbone
    return backbone if backbone.startswith(("hf-hub:", "hf_hub:")) else None


def _provenance(cfg: PretrainConfig, images: list[Path], run_dir: Path) -> dict[str, Any]:
    return {
        "method": "NT-Xent pre-training, L_intra + λ·L_inter (thesis §4.2)",
        "images": str(Path(cfg.data.path).resolve()),
        "image_count": len(images),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "optim": {"name": "AdamW", **dataclasses.asdict(cfg.optim)},
        "contrast": dataclasses.asdict(cfg.contrast),
        "initial_weights": cfg.model.pretrained if cfg.model.pretrained != "auto" else cfg_hub_weights(cfg) or "auto",
        "initial_weights_sha256": cfg.model.pretrained_sha256,
        "run_dir": str(run_dir.resolve()),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
        "git": git_state(),
    }

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
pairs are positives is defined in :class:`wsi_seg_training.losses.IntraInterNTXentLoss`. The
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
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model import preset_config
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.backbones import build_encoder, resolve_hub_backbone
from wsi_seg.model.hub import is_hub_name
from wsi_seg.model.pretrained import PretrainedWeights, hub_backbone_weights, resolve_pretrained

from wsi_seg_training.config import ModelSettings, PretrainConfig
from wsi_seg_training.datasets.unlabelled import ContrastiveViews, check_image_sizes, pretrain_images
from wsi_seg_training.losses import IntraInterNTXentLoss
from wsi_seg_training.trainer import EpochCallback, LossValues, RunResult, Trainer, TrainingParts

log = logging.getLogger(__name__)

WEIGHTS_NAME = "encoder.safetensors"
METADATA_KEY = "wsi_seg_pretrain"
WEIGHTS_FORMAT_VERSION = 1


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


def pretrain_model_config(cfg: PretrainConfig) -> ModelConfig:
    """The encoder's ModelConfig: the preset (or backbone) at the pre-training patch size;
    a hub backbone (``hf-hub:…``) resolved to its timm architecture."""
    overrides: dict[str, Any] = {}
    if cfg.model.backbone:
        overrides.update(backbone=cfg.model.backbone, backbone_kwargs={}, preset="")
    if cfg.data.patch_size_px is not None:
        overrides["patch_size_px"] = cfg.data.patch_size_px
    return resolve_hub_backbone(preset_config(cfg.model.preset, **overrides))[0]


class PretrainTrainer(Trainer):
    """NT-Xent on two views of each image: L_intra + λ·L_inter (eq. 4.1)."""

    cfg: PretrainConfig
    metrics_columns = ("epoch", "loss", "intra", "inter", "lr", "seconds")
    result_name = WEIGHTS_NAME

    def prepare(self) -> None:
        cfg = self.cfg
        self.model_cfg = pretrain_model_config(cfg)
        self.images = pretrain_images(cfg.data.path, cfg.data.format)
        check_image_sizes(self.images, self.model_cfg.patch_size_px)
        if len(self.images) < cfg.batch_size:
            raise ConfigError(f"{cfg.data.path}: {len(self.images)} images, fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size")
        self.weights = resolve_run_weights(cfg.model, self.model_cfg)  # records its sha256 in cfg.model

    def result_file(self) -> Path:
        return self.run_dir / WEIGHTS_NAME

    def build(self) -> TrainingParts:
        cfg = self.cfg
        net = ContrastiveNet(self.model_cfg, cfg.contrast.projection_dim,
                             pretrained=initial_weights(self.weights)).to(self.device)
        _check_input_size(net.encoder, self.model_cfg)
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.loss_fn = IntraInterNTXentLoss(cfg.contrast.inter_weight, cfg.contrast.temperature)
        return TrainingParts(net=net, optimizer=optimizer,
                             dataset=ContrastiveViews(self.images, self.model_cfg.patch_size_px))

    def step(self, batch: dict[str, torch.Tensor]) -> LossValues:
        views = [batch[k].to(self.device, non_blocking=True) for k in ("image", "visual", "spatial")]
        with self.autocast:
            outputs = self.forward(*views)
        loss = self.loss_fn(*(o.float() for o in outputs))
        return {"loss": loss, "intra": self.loss_fn.last_stats["intra"], "inter": self.loss_fn.last_stats["inter"]}

    def run_facts(self) -> dict[str, Any]:
        return {
            "images": {"path": str(Path(self.cfg.data.path).resolve()), "count": len(self.images)},
            "model": self.model_cfg.to_dict(),
        }

    def save_result(self) -> Path:
        return save_encoder_weights(self.net.encoder, self.result_root / WEIGHTS_NAME, self.model_cfg, _provenance(self))


def train_pretrain(cfg: PretrainConfig, overwrite: bool = False,
                   on_epoch_end: EpochCallback | None = None) -> RunResult:
    """Pre-train the encoder into ``cfg.out``, resuming an interrupted run
    (:meth:`wsi_seg_training.trainer.Trainer.run`)."""
    return PretrainTrainer(cfg).run(overwrite, on_epoch_end)


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


def _provenance(trainer: PretrainTrainer) -> dict[str, Any]:
    cfg = trainer.cfg
    return {
        "method": "NT-Xent pre-training, L_intra + λ·L_inter (thesis §4.2)",
        "images": str(Path(cfg.data.path).resolve()),
        "image_count": len(trainer.images),
        "optim": {"name": "AdamW", **dataclasses.asdict(cfg.optim)},
        "contrast": dataclasses.asdict(cfg.contrast),
        "initial_weights": cfg.model.pretrained if cfg.model.pretrained != "auto" else cfg_hub_weights(cfg) or "auto",
        "initial_weights_sha256": cfg.model.pretrained_sha256,
        **trainer.provenance(),
    }

"""Stage 1 of PSCL: classification (MLSM) + λ·PSCL on patch-level labels (thesis §4.3).

``train_stage1(cfg)`` runs the whole stage into ``cfg.out`` (the run directory)::

    RUN_DIR/config.yaml      the resolved Stage1Config
    RUN_DIR/run.json         software versions, git state, dataset facts, devices
    RUN_DIR/metrics.csv      one row per epoch: mean loss, mlsm, pscl; lr at the end; training
                             seconds; val_miou_oracle: mIoU (mlps) of the CAM pseudo-labels
                             made with the patches' true classes (an oracle, as the
                             pseudo-labels stage 2 learns from), and its seconds;
                             mean PSCL pixels per step
    RUN_DIR/state/           resumable state after the last finished epoch
    RUN_DIR/checkpoint/      the final network (wsi_seg checkpoint, stage 1)

Rerunning the same command after an interruption resumes after the last finished
epoch; the result equals an uninterrupted run's. A larger ``epochs`` continues a finished
or interrupted run; the poly LR (:func:`poly_decay`) then follows the new total's
schedule from the step reached (docs/method.md). Under ``torchrun`` each process
takes ``batch_size / world_size`` patches per step (DistributedDataParallel); only
rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_seg.errors import ConfigError, DatasetError
from wsi_seg.model import PsclNet, cams_from_class_maps, preset_config, save_checkpoint
from wsi_seg.model.backbones import resolve_hub_backbone
from wsi_seg.model.config import ModelConfig

from wsi_seg_training.augment import flips
from wsi_seg_training.config import Stage1Config
from wsi_seg_training.datasets import DatasetIndex, PatchDataset, BackgroundSeedParams, open_checked_dataset
from wsi_seg_training.encoder_training import parameter_groups
from wsi_seg_training.evaluate import confusion_on_loader
from wsi_seg_training.losses import MLSMLoss, PSCLLoss, default_supcon
from wsi_seg_training.pretrain import initial_weights, resolve_run_weights
from wsi_seg_training.trainer import EpochCallback, LossValues, RunResult, TrainingParts, ValidatedTrainer

log = logging.getLogger(__name__)


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
    background_seed: BackgroundSeedParams
    mpp: float
    patch_size_px: int


def resolve_data(cfg: Stage1Config) -> ResolvedData:
    index = open_checked_dataset(cfg.data.path, cfg.data.format)
    info = index.info
    index.split("train", need_labels=True)
    enabled = info.background_seed if cfg.data.background_seed is None else cfg.data.background_seed
    min_size = info.bkg_min_size_px if cfg.data.bkg_min_size_px is None else cfg.data.bkg_min_size_px
    background_seed = BackgroundSeedParams(enabled=enabled, gray_threshold=cfg.data.bkg_gray_threshold, min_size_px=min_size)
    mpp = cfg.data.mpp if cfg.data.mpp is not None else info.mpp
    if mpp is None:
        log.warning("%s: the patches' µm/px is unknown; assuming 0.5 (pass --mpp)", index.root)
        mpp = 0.5
    h, w = index.patch_hw["train"]
    if h != w or h % 32:
        first = index.splits["train"][0].image
        raise DatasetError(f"{first}: train patches are {w}×{h} px; the network needs square patches, a multiple of 32 px")
    return ResolvedData(index=index, background_seed=background_seed, mpp=mpp, patch_size_px=h)


def build_model_config(cfg: Stage1Config, data: ResolvedData) -> ModelConfig:
    """The stage-1 ModelConfig: preset (or backbone), dataset classes, µm/px, seeding; a
    hub backbone (``hf-hub:…``) resolved to its timm architecture, arguments, mean/std."""
    overrides: dict[str, Any] = dict(
        stage=1,
        class_names=data.index.class_names,
        class_colors=data.index.info.class_colors,
        mpp=data.mpp,
        patch_size_px=data.patch_size_px,
        background_seeding=data.background_seed.enabled,
        bkg_gray_threshold=int(round(cfg.data.bkg_gray_threshold)),
        bkg_min_size_px=data.background_seed.min_size_px,
    )
    if cfg.pscl.gating:  # the classes a patch keeps without labels: those its gate passes
        overrides["cam_score_threshold"] = cfg.pscl.predict_rules().gate_threshold
    if cfg.model.backbone:
        overrides.update(backbone=cfg.model.backbone, backbone_kwargs={}, preset="")
    return resolve_hub_backbone(preset_config(cfg.model.preset, **overrides))[0]


class Stage1Trainer(ValidatedTrainer):
    """MLSM + λ·PSCL on patch-level labels; val mIoU of the CAM pseudo-labels (mlps)."""

    cfg: Stage1Config
    # val: the CAM pseudo-labels with the patches' true classes (the oracle), as stage 2 will learn them
    val_column = "val_miou_oracle"
    metrics_columns = ("epoch", "loss", "mlsm", "pscl", "lr", "seconds", "val_miou_oracle", "val_seconds", "pscl_pixels")
    decimals = {"pscl_pixels": 1}

    def prepare(self) -> None:
        cfg = self.cfg
        self.data = resolve_data(cfg)
        self.model_cfg = build_model_config(cfg, self.data)
        self.weights = resolve_run_weights(cfg.model, self.model_cfg)  # records its sha256 in cfg.model
        records = self.data.index.split("train", need_labels=True)
        if len(records) < cfg.batch_size:
            raise ConfigError(f"{self.data.index.root}: {len(records)} train patches, fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size")

    def build(self) -> TrainingParts:
        cfg, data = self.cfg, self.data
        net = PsclNet(self.model_cfg, pretrained=initial_weights(self.weights)).to(self.device)
        net.train()
        groups = parameter_groups(net, cfg.optim.lr, cfg.encoder)  # freezes before DDP sees the parameters
        optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
        self.mlsm_loss = MLSMLoss()
        self.pscl_loss = PSCLLoss(
            threshold=cfg.pscl.threshold,
            include_background=cfg.pscl.include_background,
            gating=cfg.pscl.predict_rules() if cfg.pscl.gate_pscl else None,
            max_pixels_per_class_per_image=cfg.pscl.max_pixels_per_class_per_image,
            max_pixels_total=cfg.pscl.max_pixels_total,
            loss=default_supcon(cfg.pscl.temperature),
        )
        index = data.index
        self.val_loader = self.make_val_loader(index, data.background_seed)
        return TrainingParts(
            net=net, optimizer=optimizer, forward=_Stage1Forward(net),
            dataset=PatchDataset(index.split("train", need_labels=True), index.num_classes, background_seed=data.background_seed,
                                 transform=flips()),
            lr_factor=lambda step, total: poly_decay(step, total, cfg.optim.poly_power),
        )

    def start_epoch(self, noise_seed: int) -> None:
        self.pscl_loss.reseed(noise_seed)

    def step(self, batch: dict[str, torch.Tensor]) -> LossValues:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        with self.autocast:
            logits, class_maps, features = self.forward(images)
        mlsm = self.mlsm_loss(logits, labels)
        if not self.cfg.pscl.enabled:
            return {"loss": mlsm, "mlsm": mlsm}
        cams = cams_from_class_maps(class_maps.detach().float())
        background = batch["background"].to(self.device) if self.data.background_seed.enabled else None
        pscl = self.pscl_loss(features.float(), cams, background, image_labels=labels, logits=logits)
        return {"loss": mlsm + self.cfg.pscl.weight * pscl, "mlsm": mlsm, "pscl": pscl,
                "pscl_pixels": self.pscl_loss.last_stats.get("sampled_pixels", 0)}

    def val_confusion(self, max_batches: int | None) -> Any:
        # the oracle (patch labels known), gated as the run's pseudo-labels are
        return confusion_on_loader(self.net, self.val_loader, self.device, "gt", self.cfg.pscl.predict_rules(),
                                   max_batches)

    def run_facts(self) -> dict[str, Any]:
        data = self.data
        return {
            "dataset": {
                "path": str(data.index.root.resolve()),
                "format": data.index.info.name,
                "splits": {k: len(v) for k, v in data.index.splits.items()},
                "patch_size_px": data.patch_size_px,
                "mpp": data.mpp,
                "background_seed": dataclasses.asdict(data.background_seed),
            },
            "model": self.model_cfg.to_dict(),
            "pretrained": self.weights.to_dict() if self.weights else None,
        }

    def save_result(self) -> Path:
        final_cfg = self.model_cfg.replace(provenance={**self.model_cfg.provenance, **_provenance(self)})
        return save_checkpoint(self.net, self.result_root / "checkpoint", config=final_cfg)


def poly_decay(step: int, total_steps: int, power: float) -> float:
    """The poly schedule's LR factor after ``step`` of ``total_steps``: (1 − t/T)^power
    (table 5.1, per step). A run continued to more epochs takes it with the new total
    from the step it reached (docs/method.md)."""
    return (1.0 - min(step, total_steps) / total_steps) ** power


def train_stage1(cfg: Stage1Config, overwrite: bool = False,
                 on_epoch_end: EpochCallback | None = None) -> RunResult:
    """Train stage 1 into ``cfg.out``, resuming an interrupted run
    (:meth:`wsi_seg_training.trainer.Trainer.run`)."""
    return Stage1Trainer(cfg).run(overwrite, on_epoch_end)


def _provenance(trainer: Stage1Trainer) -> dict[str, Any]:
    cfg, data = trainer.cfg, trainer.data
    return {
        "training": {
            "stage": 1,
            "method": "PSCL" if cfg.pscl.enabled else "CAM baseline (MLSM only)",
            "dataset": str(data.index.root.resolve()),
            "dataset_format": data.index.info.name,
            "train_patches": len(data.index.splits["train"]),
            "optim": dataclasses.asdict(cfg.optim),
            "encoder": dataclasses.asdict(cfg.encoder),
            "pscl": dataclasses.asdict(cfg.pscl),
            # what wsi-seg pseudo-labels and evaluate use for this checkpoint unless told otherwise
            "pseudo_labels": cfg.pscl.predict_rules().gating_record(),
            "background_seed": dataclasses.asdict(data.background_seed),
            "pretrained": trainer.weights.to_dict() if trainer.weights else None,
            **trainer.provenance(),
        }
    }

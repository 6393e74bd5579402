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
* ``nr``: the noise-reduced loss (eq. 4.10–4.11, :class:`wsi_seg_training.losses.NRLoss`) with
  the saved CAMs, Gumbel-softmax probabilities seeded per epoch.

AdamW at a constant learning rate (table 5.1 lists no scheduler). Resuming, seeding
and torchrun work as in stage 1 (:mod:`wsi_seg_training.stage1`); the classifier is frozen so
DistributedDataParallel sees only parameters that get gradients.

Fine-tuning: without pseudo-labels the targets are the train split's own full masks
(cross-entropy), e.g. the corrections ``wsi-seg export --patches`` wrote; and ``init``
may then be a stage-2 checkpoint, whose whole network (decoder and head included) is
the starting point — the loop segment → correct in napari → export → fine-tune.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_seg.errors import CheckpointError, ConfigError, DatasetError
from wsi_seg.model import LoadedModel, PsclNet, load_checkpoint, save_checkpoint
from wsi_seg.model.predict_rules import IGNORE_LABEL

from wsi_seg_training.augment import flips
from wsi_seg_training.config import Stage2Config
from wsi_seg_training.datasets import BackgroundSeedParams, DatasetIndex, PatchDataset, PatchRecord, open_checked_dataset
from wsi_seg_training.datasets.pseudo import PseudoLabelDataset, PseudoLabels, open_pseudo_labels
from wsi_seg_training.encoder_training import parameter_groups
from wsi_seg_training.evaluate import confusion_on_loader
from wsi_seg_training.losses import GumbelSoftmax, NRLoss
from wsi_seg_training.trainer import EpochCallback, LossValues, RunResult, TrainingParts, ValidatedTrainer

log = logging.getLogger(__name__)


class _SegmentationForward(nn.Module):
    """``forward`` = normalise + ``forward_segmentation``, so DistributedDataParallel sees it."""

    def __init__(self, net: PsclNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.net.forward_segmentation(self.net.normalize(images_uint8))


def load_stage1_init(path: str | Path, index: DatasetIndex, fine_tune: bool = False) -> LoadedModel:
    """The checkpoint stage 2 starts from, checked against the dataset: stage 1, or
    with ``fine_tune`` (targets are full masks) also stage 2."""
    loaded = load_checkpoint(path)
    cfg = loaded.config
    if cfg.stage != 1 and not fine_tune:
        raise CheckpointError(
            f"{path}: training on pseudo-labels starts from a stage-1 checkpoint (wsi-seg train --stage 1); "
            f"this one is stage {cfg.stage} (fine-tune it on full masks: leave out --pseudo-labels)"
        )
    what = f"stage-{cfg.stage} checkpoint"
    if tuple(cfg.class_names) != tuple(index.class_names):
        raise CheckpointError(
            f"{path}: {what} of classes {', '.join(cfg.class_names)} but the dataset "
            f"{index.root} has {', '.join(index.class_names)}"
        )
    h, w = index.patch_hw["train"]
    if (h, w) != (cfg.patch_size_px, cfg.patch_size_px):
        raise DatasetError(
            f"{index.root}: train patches are {w}×{h} px but the {what} {path} was "
            f"trained on {cfg.patch_size_px} px patches"
        )
    return loaded


def stage2_network(init: LoadedModel) -> PsclNet:
    """The stage-2 PsclNet training starts from.

    From a stage-1 checkpoint: its config at stage 2, encoder and classifier copied, the
    decoder and head initialised from the global torch RNG (seed it first). From a
    stage-2 checkpoint (fine-tuning): all of it.
    """
    cfg = init.config.replace(stage=2, provenance={})
    net = PsclNet(cfg)
    if init.config.stage == 2:
        net.load_state_dict(init.net.state_dict())
        return net
    net.encoder.load_state_dict(init.net.encoder.state_dict())
    net.cam_head.load_state_dict(init.net.cam_head.state_dict())
    return net


def segmentation_loss(
    name: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], device: torch.device, nr: NRLoss | None
) -> torch.Tensor:
    """The stage-2 loss of (B, N+1, h, w) logits against a batch of pseudo-labels.

    Logits are upsampled bilinearly to the patch size (float32) before the loss. Pixels
    labelled :data:`IGNORE_LABEL` (gating fallback ``ignore``) take no part.
    """
    mask = batch["mask"].to(device, non_blocking=True)
    logits = F.interpolate(logits.float(), size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    if name == "ce":
        if bool((mask == IGNORE_LABEL).all()):  # cross_entropy's mean over no pixel is NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits, mask.long(), ignore_index=IGNORE_LABEL)
    if name != "nr" or nr is None:
        raise ConfigError(f"unknown stage-2 loss {name!r} (or nr without its NRLoss); use ce or nr")
    return nr(logits, mask, batch["cams"].to(device, non_blocking=True))


class Stage2Trainer(ValidatedTrainer):
    """Encoder + pixel decoder on the stage-1 pseudo-labels (CE or NR); val mIoU (mlps)."""

    cfg: Stage2Config
    metrics_columns = ("epoch", "loss", "lr", "seconds", "val_miou", "val_seconds")

    def prepare(self) -> None:
        cfg = self.cfg
        self.index = open_checked_dataset(cfg.data.path, cfg.data.format)
        self.labels: PseudoLabels | None = None
        if cfg.data.pseudo_labels:
            self.init = load_stage1_init(cfg.init, self.index)
            self.labels = open_pseudo_labels(cfg.data.pseudo_labels, self.index, need_cams=cfg.loss.name == "nr")
            _check_pseudo_label_origin(self.labels, self.init, self.index)
            n_train = len(self.labels.records)
        else:
            self.train_records = _full_mask_records(self.index)
            self.init = load_stage1_init(cfg.init, self.index, fine_tune=True)
            n_train = len(self.train_records)
        if n_train < cfg.batch_size:
            raise ConfigError(f"{self.index.root}: {n_train} train patches, fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size")

    def fingerprint_facts(self) -> dict[str, Any]:
        return {
            "init_sha256": self.init.sha256,  # same paths, other contents: not the same run
            "pseudo_labels_by": (self.labels.manifest.get("checkpoint") or {}).get("sha256") if self.labels else None,
        }

    def build(self) -> TrainingParts:
        cfg = self.cfg
        net = stage2_network(self.init).to(self.device)
        net.cam_head.requires_grad_(False)  # not used by the segmentation forward
        net.train()
        groups = parameter_groups(net, cfg.optim.lr, cfg.encoder)  # freezes before DDP sees the parameters
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.gumbel = GumbelSoftmax(tau=cfg.loss.gumbel_tau)
        self.nr_loss = NRLoss(probabilities=self.gumbel) if cfg.loss.name == "nr" else None
        self.val_loader = self.make_val_loader(self.index, BackgroundSeedParams(enabled=False))  # as wsi-seg evaluate scores
        if self.labels is not None:
            dataset = PseudoLabelDataset(self.labels.records, self.index.num_classes, transform=flips(),
                                         with_cams=cfg.loss.name == "nr")
        else:  # full masks: the patches' own, flipped with them
            dataset = PatchDataset(self.train_records, self.index.num_classes, transform=flips(), with_masks=True,
                                   background_seed=BackgroundSeedParams(enabled=False))
        return TrainingParts(net=net, optimizer=optimizer, dataset=dataset, forward=_SegmentationForward(net))

    def start_epoch(self, noise_seed: int) -> None:
        self.gumbel.reseed(noise_seed)

    def step(self, batch: dict[str, torch.Tensor]) -> LossValues:
        images = batch["image"].to(self.device, non_blocking=True)
        with self.autocast:
            logits = self.forward(images)
        return {"loss": segmentation_loss(self.cfg.loss.name, logits, batch, self.device, self.nr_loss)}

    def val_confusion(self, max_batches: int | None) -> Any:
        return confusion_on_loader(self.net, self.val_loader, self.device, max_batches=max_batches)

    def run_facts(self) -> dict[str, Any]:
        index = self.index
        return {
            "dataset": {
                "path": str(index.root.resolve()),
                "format": index.info.name,
                "splits": {k: len(v) for k, v in index.splits.items()},
                "patch_size_px": self.init.config.patch_size_px,
            },
            "pseudo_labels": ({"path": str(self.labels.root.resolve()), "patches": len(self.labels.records)}
                              if self.labels else None),
            "targets": "pseudo-labels" if self.labels else "full masks of the train split",
            "init": {"path": str(Path(self.cfg.init).resolve()), "sha256": self.init.sha256,
                     "stage": self.init.config.stage},
            "model": self.net.cfg.to_dict(),
        }

    def save_result(self) -> Path:
        final_cfg = self.net.cfg.replace(provenance=_provenance(self))
        return save_checkpoint(self.net, self.result_root / "checkpoint", config=final_cfg)


def train_stage2(cfg: Stage2Config, overwrite: bool = False,
                 on_epoch_end: EpochCallback | None = None) -> RunResult:
    """Train stage 2 into ``cfg.out``, resuming an interrupted run
    (:meth:`wsi_seg_training.trainer.Trainer.run`)."""
    return Stage2Trainer(cfg).run(overwrite, on_epoch_end)


def _check_pseudo_label_origin(labels: PseudoLabels, init: LoadedModel, index: DatasetIndex) -> None:
    """Warn (not fail) when the pseudo-labels come from another checkpoint or dataset copy."""
    made_by = (labels.manifest.get("checkpoint") or {}).get("sha256")
    if made_by and made_by != init.sha256:
        log.warning("%s: pseudo-labels were made by another checkpoint (sha256 %s…) than --init %s",
                    labels.root, made_by[:12], init.path)
    made_from = (labels.manifest.get("dataset") or {}).get("path")
    if made_from and Path(made_from) != index.root.resolve():
        log.warning("%s: pseudo-labels were made from %s, training on %s", labels.root, made_from, index.root)


def _full_mask_records(index: DatasetIndex) -> list[PatchRecord]:
    """The train records, each with its full mask (the targets when there are no pseudo-labels)."""
    records = index.split("train")
    missing = next((r for r in records if r.mask is None), None)
    if missing is not None:
        raise DatasetError(
            f"{missing.image}: train patch has no mask; stage 2 trains on pseudo-labels (--pseudo-labels DIR, "
            "written by wsi-seg pseudo-labels) or on full masks (a mask column in labels.csv, as wsi-seg export "
            "--patches writes)"
        )
    return records


def _provenance(trainer: Stage2Trainer) -> dict[str, Any]:
    cfg, labels, init, index = trainer.cfg, trainer.labels, trainer.init, trainer.index
    loss = "cross-entropy" if cfg.loss.name == "ce" else "noise-reduced loss"
    if labels is None:
        method = f"fine-tuning of a stage-2 model on full masks ({loss})" if init.config.stage == 2 else \
            f"stage 2 on full masks ({loss})"
    else:
        method = f"PSCL stage 2 ({loss})"
    return {
        "training": {
            "stage": 2,
            "method": method,
            "loss": dataclasses.asdict(cfg.loss),
            "init": {"path": str(Path(cfg.init).resolve()), "sha256": init.sha256, "stage": init.config.stage},
            "pseudo_labels": {
                "path": str(labels.root.resolve()),
                "rule": labels.manifest.get("rule"),
                "gating_threshold": labels.manifest.get("gating_threshold"),
                "checkpoint_sha256": (labels.manifest.get("checkpoint") or {}).get("sha256"),
            } if labels is not None else None,
            "dataset": str(index.root.resolve()),
            "dataset_format": index.info.name,
            "train_patches": len(labels.records) if labels is not None else len(trainer.train_records),
            "optim": {"name": "AdamW", **dataclasses.asdict(cfg.optim)},
            "encoder": dataclasses.asdict(cfg.encoder),
            ("stage1" if init.config.stage == 1 else "fine_tuned_from"): init.config.provenance.get("training"),
            **trainer.provenance(),
        }
    }

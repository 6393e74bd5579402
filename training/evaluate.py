"""Scoring a checkpoint against ground-truth masks of a val/test split.

Each checkpoint is scored on the mask of its network's ``predict`` (``wsi_seg.model.heads``):
stage 1 on its CAM pseudo-labels (thesis eq. 4.9), stage 2 on the argmax of its
segmentation head upsampled to the patch. Which classes a stage-1 patch may take
(``image_labels``):

* ``gt`` (default): the classes present in the patch's ground truth (or its csv
  label) — the setting of training pseudo-labels, where patch labels are known;
* ``predicted``: the classifier's own (sigmoid ≥ the checkpoint's
  ``cam_score_threshold``, top class kept), as ``wsi-seg segment`` does.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from wsi_seg.errors import ConfigError
from wsi_seg.model import PsclNet, load_checkpoint

from wsi_seg.metrics import PROTOCOLS, ConfusionMatrix, SegmentationScores

from training.datasets import PatchDataset, SeedParams, open_dataset

log = logging.getLogger(__name__)
IMAGE_LABEL_MODES = ("gt", "predicted")


def predict_label_maps(
    net: PsclNet,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    image_labels: str = "gt",
    gating_threshold: float | None = None,
) -> torch.Tensor:
    """(B, H, W) uint8 label maps (0 = background, 1..N) of a batch from :class:`PatchDataset`."""
    labels = batch["labels"].to(device) if image_labels == "gt" else None
    background = batch["background"].to(device) if net.head.needs_background_seed else None
    return net.predict(batch["image"].to(device), background, labels, gating_threshold).mask


def confusion_on_loader(
    net: PsclNet,
    loader: DataLoader,
    device: torch.device,
    image_labels: str = "gt",
    gating_threshold: float | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``net`` over a loader of masked patches."""
    from tqdm import tqdm

    if image_labels not in IMAGE_LABEL_MODES:
        raise ConfigError(f"unknown image-label mode {image_labels!r}; use gt or predicted")
    cm = ConfusionMatrix(net.cfg.class_names)
    was_training = net.training
    net.eval()
    batches = itertools.islice(loader, max_batches) if max_batches is not None else loader
    with torch.inference_mode():
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            pred = predict_label_maps(net, batch, device, image_labels, gating_threshold)
            cm.update(batch["mask"], pred.cpu())
    net.train(was_training)
    return cm


@dataclass
class EvaluationResult:
    scores: list[SegmentationScores]
    confusion: ConfusionMatrix
    checkpoint: Path
    sha256: str
    split: str
    patches: int


def evaluate_checkpoint(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    protocols: tuple[str, ...] = PROTOCOLS,
    format: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    image_labels: str = "gt",
    gating_threshold: float | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Score a checkpoint on a split with ground-truth masks, under each protocol."""
    from wsi_seg.runtime import resolve_device

    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {p!r}; use {', '.join(PROTOCOLS)} or both")
    dev = resolve_device(device)
    loaded = load_checkpoint(model, device=dev)
    index = open_dataset(data, format)
    if tuple(index.class_names) != tuple(loaded.config.class_names):
        raise ConfigError(
            f"{data}: dataset classes {', '.join(index.class_names)} differ from the checkpoint's "
            f"{', '.join(loaded.config.class_names)}"
        )
    records = index.split(split, need_masks=True)
    # a stage-2 network is scored alone; CAMs need the seed as their background (eq. 4.9)
    seeded = loaded.net.head.needs_background_seed
    seed = SeedParams.of_model(loaded.config) if seeded else SeedParams(enabled=False)
    dataset = PatchDataset(records, index.num_classes, seed=seed, with_masks=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    cm = confusion_on_loader(loaded.net, loader, dev, image_labels, gating_threshold, progress=progress)
    return EvaluationResult(
        scores=[cm.scores(p) for p in protocols],
        confusion=cm,
        checkpoint=Path(model),
        sha256=loaded.sha256,
        split=split,
        patches=len(records),
    )

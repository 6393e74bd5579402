"""Scoring a checkpoint against ground-truth masks of a val/test split.

Each checkpoint is scored on the mask of its network's ``predict`` (``wsi_seg.model.heads``):
stage 1 on its CAM pseudo-labels (thesis eq. 4.9), stage 2 on the argmax of its
segmentation head upsampled to the patch. Which classes a stage-1 patch may take
(``image_labels``):

* ``predicted`` (default, the reference protocols): the classifier's own — sigmoid
  score at each protocol's reference threshold (:data:`REFERENCE_SCORE_THRESHOLDS`:
  the WSSS-Tissue / MLPS code keeps classes with score > 0.25; TPRO's keeps sigmoid >
  0.15 on LUAD-HistoSeg and > 0.4 on BCSS-WSSS), the top class always kept. The CAM
  head applies every threshold as ≥ (one rule with ``wsi-seg segment``; the two differ
  only for a score exactly at the threshold);
* ``gt``: the classes present in the patch's ground truth — an **oracle**: it scores
  pseudo-label quality (training pseudo-labels know the patch labels), not what the
  model does on an unseen patch.

Gating (eq. 4.4–4.5) is applied as the stage-1 run was trained unless told otherwise.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from wsi_seg.errors import ConfigError
from wsi_seg.model import CamHead, PredictRules, PsclNet, load_checkpoint

from wsi_seg.metrics import PROTOCOLS, ConfusionMatrix, SegmentationScores
from wsi_seg_training.datasets import PatchDataset, BackgroundSeedParams, open_dataset
from wsi_seg_training.pseudo_labels import RUN_GATING, resolve_rules

log = logging.getLogger(__name__)
IMAGE_LABEL_MODES = ("predicted", "gt")
# sigmoid thresholds above which a stage-1 model keeps a class on a test patch, per
# protocol and dataset format ("*": any other); see the module docstring
REFERENCE_SCORE_THRESHOLDS = {"mlps": {"*": 0.25}, "tpro": {"luad": 0.15, "bcss": 0.4, "*": 0.25}}


def reference_threshold(protocol: str, dataset_format: str) -> float:
    """The class-keeping sigmoid threshold of ``protocol``'s reference code on a dataset format."""
    table = REFERENCE_SCORE_THRESHOLDS[protocol]
    return table.get(dataset_format, table["*"])


def predict_label_maps(
    net: PsclNet,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    image_labels: str = "gt",
    rules: PredictRules | None = None,
) -> torch.Tensor:
    """(B, H, W) uint8 label maps (0 = background, 1..N) of a batch from :class:`PatchDataset`.

    Stage 1 with ``image_labels`` ``predicted``: the CAM head's classes, sigmoid ≥
    ``rules.score_threshold`` (None: the checkpoint's ``cam_score_threshold``), the top class kept."""
    images = batch["image"].to(device)
    background = batch["background"].to(device) if net.head.needs_background_seed else None
    labels = batch["labels"].to(device) if image_labels == "gt" else None
    return net.predict(images, background, labels, rules).mask


def confusion_on_loader(
    net: PsclNet,
    loader: DataLoader,
    device: torch.device,
    image_labels: str = "gt",
    rules: PredictRules | None = None,
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
            pred = predict_label_maps(net, batch, device, image_labels, rules)
            cm.update(batch["mask"], pred.cpu())
    net.train(was_training)
    return cm


@dataclass
class EvaluationResult:
    """Scores per protocol, and how the stage-1 classes were chosen (``image_labels``:
    predicted / gt (oracle) / None for stage 2; ``score_thresholds`` per protocol; the
    gating of ``rules``)."""

    scores: list[SegmentationScores]
    confusions: dict[str, ConfusionMatrix]
    checkpoint: Path
    sha256: str
    split: str
    patches: int
    stage: int = 2
    image_labels: str | None = None
    score_thresholds: dict[str, float] = field(default_factory=dict)
    rules: PredictRules = field(default_factory=PredictRules)

    @property
    def oracle(self) -> bool:
        return self.image_labels == "gt"

    def mode_line(self) -> str:
        """One line saying how the masks were made (printed above the table, kept in JSON)."""
        if self.image_labels is None:
            return f"stage {self.stage}: segmentation head (no image labels involved)"
        gating = self.rules.gating_line()
        if self.oracle:
            return (f"stage 1, ORACLE image labels (classes from the ground truth): pseudo-label quality, "
                    f"not a test score; gating {gating}")
        thr = ", ".join(f"{p} ≥ {t}" for p, t in self.score_thresholds.items())
        return f"stage 1, predicted image labels (sigmoid {thr}, top class kept); gating {gating}"

    def to_extra(self) -> dict:
        """The JSON fields that say how the scores were made."""
        return {
            "stage": self.stage, "image_labels": self.image_labels, "oracle": self.oracle,
            "score_thresholds": self.score_thresholds, **self.rules.gating_record(), "mode": self.mode_line(),
        }


def evaluate_checkpoint(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    protocols: tuple[str, ...] = PROTOCOLS,
    format: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    image_labels: str = "predicted",
    gating_threshold: float | str | None = RUN_GATING,
    progress: bool = True,
    score_threshold: float | None = None,
    gating_epsilon: float | None = None,
) -> EvaluationResult:
    """Score a checkpoint on a split with ground-truth masks, under each protocol.

    Stage 1: ``image_labels`` predicted (each protocol's reference threshold, or
    ``score_threshold`` for all) or gt (oracle); gating as the run's unless given
    (None: off)."""
    from wsi_seg.runtime import resolve_device

    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {p!r}; use {', '.join(PROTOCOLS)} or both")
    if image_labels not in IMAGE_LABEL_MODES:
        raise ConfigError(f"unknown image-label mode {image_labels!r}; use predicted or gt")
    dev = resolve_device(device)
    loaded = load_checkpoint(model, device=dev)
    index = open_dataset(data, format)
    if tuple(index.class_names) != tuple(loaded.config.class_names):
        raise ConfigError(
            f"{data}: dataset classes {', '.join(index.class_names)} differ from the checkpoint's "
            f"{', '.join(loaded.config.class_names)}"
        )
    records = index.split(split, need_masks=True)
    # a segmentation head is scored alone; CAMs need the seed as their background (eq. 4.9)
    seeded = loaded.net.head.needs_background_seed
    background_seed = BackgroundSeedParams.of_model(loaded.config) if seeded else BackgroundSeedParams(enabled=False)
    dataset = PatchDataset(records, index.num_classes, background_seed=background_seed, with_masks=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    result = EvaluationResult(scores=[], confusions={}, checkpoint=Path(model), sha256=loaded.sha256, split=split,
                              patches=len(records), stage=loaded.config.stage)
    if not isinstance(loaded.net.head, CamHead):  # image labels, thresholds and gating are CAM rules
        cm = confusion_on_loader(loaded.net, loader, dev, progress=progress)
        result.confusions = {p: cm for p in protocols}
    else:
        result.image_labels, result.rules = image_labels, resolve_rules(loaded.config, gating_threshold, gating_epsilon)
        if image_labels == "predicted":
            result.score_thresholds = {
                p: score_threshold if score_threshold is not None else reference_threshold(p, index.info.name)
                for p in protocols
            }
        by_threshold: dict[float | None, ConfusionMatrix] = {}
        for p in protocols:
            thr = result.score_thresholds.get(p)
            if thr not in by_threshold:
                by_threshold[thr] = confusion_on_loader(loaded.net, loader, dev, image_labels,
                                                        result.rules.replace(score_threshold=thr), progress=progress)
            result.confusions[p] = by_threshold[thr]
    result.scores = [result.confusions[p].scores(p) for p in protocols]
    return result

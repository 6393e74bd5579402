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

Gating (eq. 4.4–4.5) is applied as the stage-1 run was trained unless told otherwise,
with the same :class:`~wsi_seg.model.PredictRules` as ``pseudo-labels`` and ``segment``.
How many patches the gate rejected entirely is counted (:class:`GatingCounts`); under
fallback ``ignore`` their tissue pixels are left out of the scores and counted too.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from wsi_seg_training.datasets import BackgroundSeedParams, PatchDataset, open_dataset
from wsi_seg_training.pseudo_labels import RUN_GATING, resolve_rules

from wsi_seg.errors import ConfigError
from wsi_seg.model import CamHead, PredictRules, PsclNet, load_checkpoint
from wsi_seg.model.predict_rules import IGNORE_LABEL
from wsi_seg.reports.metrics import PROTOCOLS, ConfusionMatrix, SegmentationScores

log = logging.getLogger(__name__)
IMAGE_LABEL_MODES = ("predicted", "gt")
# sigmoid thresholds above which a stage-1 model keeps a class on a test patch, per
# protocol and dataset format ("*": any other); see the module docstring
REFERENCE_SCORE_THRESHOLDS = {"mlps": {"*": 0.25}, "tpro": {"luad": 0.15, "bcss": 0.4, "*": 0.25}}


def reference_threshold(protocol: str, dataset_format: str) -> float:
    """The class-keeping sigmoid threshold of ``protocol``'s reference code on a dataset format."""
    table = REFERENCE_SCORE_THRESHOLDS[protocol]
    return table.get(dataset_format, table["*"])


@dataclass
class GatingCounts:
    """What gating did to the scored patches: how many it rejected every class of
    (``fully_gated``), and the tissue pixels left out under fallback ``ignore``."""

    patches: int = 0
    fully_gated: int = 0
    ignored_pixels: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"patches": self.patches, "fully_gated_patches": self.fully_gated, "ignored_pixels": self.ignored_pixels}


def predict_label_maps(
    net: PsclNet,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    image_labels: str = "gt",
    rules: PredictRules | None = None,
    counts: GatingCounts | None = None,
) -> torch.Tensor:
    """(B, H, W) uint8 label maps (0 = background, 1..N; :data:`IGNORE_LABEL` under gating
    fallback ``ignore``) of a batch from :class:`PatchDataset`.

    Stage 1 with ``image_labels`` ``predicted``: the CAM head's classes, sigmoid ≥
    ``rules.score_threshold`` (None: the checkpoint's ``cam_score_threshold``), the top class kept."""
    images = batch["image"].to(device)
    background = batch["background"].to(device) if net.head.needs_background_seed else None
    labels = batch["labels"].to(device) if image_labels == "gt" else None
    pred = net.predict(images, background, labels, rules)
    if counts is not None:
        counts.patches += len(images)
        counts.fully_gated += int(pred.fully_gated.sum()) if pred.fully_gated is not None else 0
    return pred.mask


def confusion_on_loader(
    net: PsclNet,
    loader: DataLoader,
    device: torch.device,
    image_labels: str = "gt",
    rules: PredictRules | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    counts: GatingCounts | None = None,
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``net`` over a loader of masked patches; pixels
    predicted :data:`IGNORE_LABEL` are left out (and added to ``counts``)."""
    from tqdm import tqdm

    if image_labels not in IMAGE_LABEL_MODES:
        raise ConfigError(f"unknown image-label mode {image_labels!r}; use gt or predicted")
    cm = ConfusionMatrix(net.cfg.class_names)
    was_training = net.training
    net.eval()
    batches = itertools.islice(loader, max_batches) if max_batches is not None else loader
    with torch.inference_mode():
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            pred = predict_label_maps(net, batch, device, image_labels, rules, counts).cpu()
            gt = batch["mask"]
            ignored = pred == IGNORE_LABEL
            if bool(ignored.any()):
                if counts is not None:
                    counts.ignored_pixels += int(ignored.sum())
                gt, pred = gt[~ignored], pred[~ignored]
            cm.update(gt, pred)
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
    gating_counts: dict[str, GatingCounts] = field(default_factory=dict)  # per protocol (stage 1)

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
            "gating_counts": {p: c.to_dict() for p, c in self.gating_counts.items()},
        }

    def gating_summary(self) -> str:
        """One line: how many scored patches the gate rejected entirely, per protocol."""
        if not self.gating_counts:
            return ""
        parts = [f"{p} {c.fully_gated}/{c.patches}" + (f" ({c.ignored_pixels} px ignored)" if c.ignored_pixels else "")
                 for p, c in self.gating_counts.items()]
        return "fully gated patches: " + ", ".join(parts)


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
    gating_fallback: str | None = None,
    epsilon_reading: str | None = None,
) -> EvaluationResult:
    """Score a checkpoint on a split with ground-truth masks, under each protocol.

    Stage 1: ``image_labels`` predicted (each protocol's reference threshold, or
    ``score_threshold`` for all) or gt (oracle); gating as the run's unless given
    (None: off)."""
    from wsi_seg.inference.runtime import resolve_device

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
        result.image_labels = image_labels
        result.rules = resolve_rules(loaded.config, gating_threshold, gating_epsilon, gating_fallback, epsilon_reading)
        if image_labels == "predicted":
            result.score_thresholds = {
                p: score_threshold if score_threshold is not None else reference_threshold(p, index.info.name)
                for p in protocols
            }
        by_threshold: dict[float | None, tuple[ConfusionMatrix, GatingCounts]] = {}
        for p in protocols:
            thr = result.score_thresholds.get(p)
            if thr not in by_threshold:
                counts = GatingCounts()
                cm = confusion_on_loader(loaded.net, loader, dev, image_labels, result.rules.replace(score_threshold=thr),
                                         progress=progress, counts=counts)
                by_threshold[thr] = (cm, counts)
            result.confusions[p], result.gating_counts[p] = by_threshold[thr]
    result.scores = [result.confusions[p].scores(p) for p in protocols]
    return result

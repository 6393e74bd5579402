"""Segmentation metrics under the two protocols of the histopathology WSSS literature.

Convention: every label map given to :class:`ConfusionMatrix` uses the **internal**
convention, ``0`` = background and ``1 .. N`` = tissue classes — predictions and
pseudo-labels are produced that way, and dataset ground truth (``N`` = background on
disk) is converted when read (``wsi_seg_training.datasets.read_mask``). The matrix is
(N+1)×(N+1), rows = ground truth, columns = prediction.

Protocols (both derived from the same matrix):

``mlps`` (Han et al. 2021, MLPS / WSSS-Tissue code): pixels whose ground truth is
background are excluded. Scores are over the N tissue classes: for class c,
TP = M[c, c], FN = all other predictions on ground-truth-c pixels (a tissue pixel
predicted as background is a miss), FP = predictions of c on pixels of the other tissue
classes. Pixel accuracy and fwIoU are over tissue pixels (fwIoU weights = share of
tissue pixels per class).

``tpro`` (Zhang et al. 2023, TPRO): the full (N+1)×(N+1) matrix, background a class
like the others; per-class IoU/Dice are reported for background and the N classes,
**mIoU is the mean over the N tissue classes**, pixel accuracy is over all pixels and
fwIoU weights all N+1 classes by their ground-truth share.

IoU = TP / (TP + FP + FN), Dice = 2TP / (2TP + FP + FN); a class with no ground truth
and no prediction gets NaN and is left out of means (JSON: null).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch tensors are accepted, but torch is not imported here (CLI start-up)
    import torch

PROTOCOLS = ("mlps", "tpro")
BACKGROUND_NAME = "background"


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class SegmentationScores:
    """Scores of one protocol; ``class_names`` lists the classes ``iou``/``dice`` refer to."""

    protocol: str
    class_names: tuple[str, ...]
    iou: list[float]
    dice: list[float]
    miou: float
    fwiou: float
    pixel_accuracy: float
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "protocol": self.protocol,
            "miou": clean(self.miou),
            "fwiou": clean(self.fwiou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "pixels": self.pixels,
            "per_class": {
                n: {"iou": clean(i), "dice": clean(d)} for n, i, d in zip(self.class_names, self.iou, self.dice)
            },
        }


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class ConfusionMatrix:
    """Accumulates an (N+1)×(N+1) confusion matrix of internal-convention label maps."""

    def __init__(self, class_names: tuple[str, ...] | list[str]) -> None:
        self.class_names = tuple(class_names)
        n = len(self.class_names) + 1
        self.counts = np.zeros((n, n), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, ground_truth: np.ndarray | torch.Tensor, prediction: np.ndarray | torch.Tensor) -> None:
        """Add label maps of equal shape (any number of dims), values in 0..N."""
        gt = _as_numpy(ground_truth).astype(np.int64).ravel()
        pred = _as_numpy(prediction).astype(np.int64).ravel()
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
        n = self.num_classes + 1
        for name, arr in (("ground truth", gt), ("prediction", pred)):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError(f"{name} holds labels outside 0..{n - 1} (0 = background, 1..N = classes)")
        self.counts += np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.counts += other.counts
        return self

    def scores(self, protocol: str = "mlps") -> SegmentationScores:
        """Per-class IoU and Dice, mIoU, fwIoU and pixel accuracy under ``protocol``."""
        m = self.counts.astype(np.float64)
        if protocol == "mlps":
            tissue = m[1:]  # rows: tissue ground truth only; columns: background + classes
            tp = np.diag(m)[1:]
            row = tissue.sum(axis=1)  # all predictions on class-c pixels (background too)
            col = tissue[:, 1:].sum(axis=0)  # predictions of c on tissue pixels
            names = self.class_names
            total = row.sum()
            freq = _safe_div(row, np.full_like(row, total))
        elif protocol == "tpro":
            tp = np.diag(m)
            row, col = m.sum(axis=1), m.sum(axis=0)
            names = (BACKGROUND_NAME, *self.class_names)
            total = m.sum()
            freq = _safe_div(row, np.full_like(row, total))
        else:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        fp, fn = col - tp, row - tp
        iou = _safe_div(tp, tp + fp + fn)
        dice = _safe_div(2 * tp, 2 * tp + fp + fn)
        tissue_iou = iou if protocol == "mlps" else iou[1:]
        present = freq > 0
        fwiou = float((freq[present] * iou[present]).sum()) if total > 0 else float("nan")
        return SegmentationScores(
            protocol=protocol,
            class_names=tuple(names),
            iou=[float(v) for v in iou],
            dice=[float(v) for v in dice],
            miou=_nanmean(tissue_iou),
            fwiou=fwiou,
            pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
            pixels=int(total),
        )


def format_table(scores: list[SegmentationScores]) -> str:
    """A plain-text table: one block per protocol, IoU and Dice in %, then the summaries."""

    def pct(v: float) -> str:
        return "   n/a" if math.isnan(v) else f"{100 * v:6.2f}"

    lines = []
    for s in scores:
        width = max(len(n) for n in (*s.class_names, "pixel accuracy"))
        lines.append(f"protocol {s.protocol} ({s.pixels} pixels)")
        lines.append(f"  {'class':<{width}}  IoU %   Dice %")
        for name, i, d in zip(s.class_names, s.iou, s.dice):
            lines.append(f"  {name:<{width}} {pct(i)}  {pct(d)}")
        lines.append(f"  {'mIoU':<{width}} {pct(s.miou)}")
        lines.append(f"  {'fwIoU':<{width}} {pct(s.fwiou)}")
        lines.append(f"  {'pixel accuracy':<{width}} {pct(s.pixel_accuracy)}")
    return "\n".join(lines)


METRICS_FORMAT_VERSION = 1


def write_json(path: str | Path, scores: list[SegmentationScores], extra: dict[str, Any] | None = None) -> Path:
    """Write the scores (and ``extra`` provenance) as JSON; NaN becomes null."""
    path = Path(path)
    payload: dict[str, Any] = {"format_version": METRICS_FORMAT_VERSION, **(extra or {})}
    payload["protocols"] = {s.protocol: s.to_dict() for s in scores}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path

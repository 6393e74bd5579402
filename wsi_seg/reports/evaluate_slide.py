"""Score a slide result against a ground-truth class mask (e.g. the demo slide's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_seg.reports.metrics import ConfusionMatrix
from wsi_seg.result.reader import Result


def mask_on_grid(mask: np.ndarray, mask_mpp: float, mpp: float, shape_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class mask at ``mask_mpp`` µm/px on the grid of ``shape_hw`` px at ``mpp``
    µm/px from the same origin: cropped or padded (0) to that extent in µm so the pixel
    grids line up, then resized (nearest)."""
    h, w = shape_hw
    need_h, need_w = round(h * mpp / mask_mpp), round(w * mpp / mask_mpp)
    canvas = np.zeros((need_h, need_w), np.uint8)
    ch, cw = min(need_h, mask.shape[0]), min(need_w, mask.shape[1])
    canvas[:ch, :cw] = mask[:ch, :cw]
    return np.asarray(Image.fromarray(canvas).resize((w, h), Image.Resampling.NEAREST))


def result_mask_at(result: str | Path, mpp: float, shape_hw: tuple[int, int]) -> np.ndarray:
    """The result's class mask resampled (nearest) to ``shape_hw`` at ``mpp`` µm/px."""
    res = Result.open(result)
    level = res.level_for_mpp(mpp)
    return mask_on_grid(res.mask(level)[:], res.level_mpp(level), mpp, shape_hw)


def ground_truth_at(ground_truth_png: str | Path, mpp: float, shape_hw: tuple[int, int]) -> np.ndarray:
    """A ground-truth class mask (``wsi_seg.synthetic`` layout) on a grid of ``mpp`` µm/px
    and ``shape_hw`` px from the same origin, nearest pixel centre (outside it: 0)."""
    from wsi_seg.synthetic import read_ground_truth

    gt, gt_mpp, _ = read_ground_truth(ground_truth_png)
    h, w = shape_hw
    ys = ((np.arange(h) + 0.5) * mpp / gt_mpp).astype(np.int64)
    xs = ((np.arange(w) + 0.5) * mpp / gt_mpp).astype(np.int64)
    out = np.zeros((h, w), np.uint8)
    iy, ix = ys < gt.shape[0], xs < gt.shape[1]
    out[np.ix_(iy, ix)] = gt[np.ix_(ys[iy], xs[ix])]
    return out


def region_miou(prediction: np.ndarray, ground_truth: np.ndarray, class_names: tuple[str, ...]) -> float:
    """mIoU (MLPS protocol: ground-truth background excluded) of one region's label maps."""
    cm = ConfusionMatrix(class_names)
    cm.update(ground_truth, prediction)
    return cm.scores("mlps").miou


def slide_miou(result: str | Path, ground_truth_png: str | Path) -> dict[str, Any]:
    """Per-class IoU and mIoU of a result against a ground-truth mask (MLPS protocol:
    ground-truth background excluded, tissue predicted as background counts as a miss)."""
    from wsi_seg.synthetic import read_ground_truth

    gt, gt_mpp, names = read_ground_truth(ground_truth_png)
    cm = ConfusionMatrix(names)
    cm.update(gt, result_mask_at(result, gt_mpp, gt.shape))
    scores = cm.scores("mlps")
    return {"iou": dict(zip(scores.class_names, scores.iou)), "miou": scores.miou}

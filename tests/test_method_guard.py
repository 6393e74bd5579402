"""The method regression guard: a seeded, CPU-sized run of the whole PSCL recipe with
today's defaults, held to floors measured on it (issue 21).

A change that makes the method collapse — gating that erases patches, an optimiser that
diverges, pseudo-labels that lose a class, a stage 2 that learns nothing — turns this red.
It trains the `small` preset from random initialisation on a generated LUAD-layout set
(the CAM baseline, PSCL, pseudo-labels, stage 2 with cross-entropy) through the same
functions as ``wsi-seg benchmark-method``, in about two minutes on 2 CPU cores.

The floors are the scores measured on this configuration (docs/method.md, "The method
guard") less a margin for another CPU's arithmetic (bf16 where the CPU has it, fp32
where not). Raise them when the method gets better; never lower them to pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_seg_training import experiment

pytestmark = pytest.mark.slow

SIZE = dict(n_train=240, n_val=0, n_test=48)
STAGE1_EPOCHS, STAGE2_EPOCHS, SEED = 6, 4, 0
# mIoU (protocol mlps) measured on this configuration, AMD EPYC with AVX512-BF16 (bf16),
# 2 cores: CAM baseline 37.87 predicted / 60.95 oracle; PSCL 39.01 / 58.14 (its weakest
# class 14.14 with the oracle); stage 2 33.49. The old gating (a fully gated patch all
# class 1) scored PSCL 17–25 predicted and oracle at 1 epoch (docs/method.md).
STAGE1_PREDICTED_FLOOR = 0.31  # PSCL stage 1, predicted classes
STAGE1_ORACLE_FLOOR = 0.48  # PSCL stage 1, oracle classes: the pseudo-labels stage 2 learns from
PSCL_BELOW_BASELINE_MAX = 0.06  # δ: PSCL may trail the CAM baseline by at most this
STAGE2_BELOW_STAGE1_MAX = 0.10  # δ: stage 2 may trail stage 1 (predicted) by at most this
ORACLE_CLASS_FLOOR = 0.05  # every class of the pseudo-labels: a collapse leaves some at 0


@pytest.fixture(scope="module")
def guard_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    work = tmp_path_factory.mktemp("method_guard")
    data = experiment.synthetic_data(work / "data", seed=SEED, **SIZE)
    scores: dict[str, float] = {}
    models: dict[str, Path] = {}
    for name, pscl in (("baseline", False), ("pscl", True)):
        models[name] = experiment.stage1(data, work / name, "small", STAGE1_EPOCHS, SEED, "cpu", pscl=pscl)
        for labels in ("predicted", "gt"):
            mlps = {s.protocol: s for s in experiment.evaluate(models[name], data, "cpu", image_labels=labels)}["mlps"]
            scores[f"{name}_{labels}"] = mlps.miou
            scores[f"{name}_{labels}_min_class"] = min(mlps.iou)
    pseudo = experiment.pseudo_labels(models["pscl"], data, work / "pseudo_labels", "cpu")
    stage2 = experiment.stage2(data, pseudo, models["pscl"], work / "stage2", "ce", STAGE2_EPOCHS, SEED, "cpu")
    mlps = {s.protocol: s for s in experiment.evaluate(stage2, data, "cpu")}["mlps"]
    scores["stage2"], scores["stage2_min_class"] = mlps.miou, min(mlps.iou)
    print("method guard:", {k: round(100 * v, 2) for k, v in scores.items()})
    return scores


def test_stage1_above_its_floors(guard_run):
    assert guard_run["pscl_predicted"] >= STAGE1_PREDICTED_FLOOR, guard_run
    assert guard_run["pscl_gt"] >= STAGE1_ORACLE_FLOOR, guard_run


def test_pscl_not_below_the_cam_baseline(guard_run):
    for labels in ("predicted", "gt"):
        assert guard_run[f"pscl_{labels}"] >= guard_run[f"baseline_{labels}"] - PSCL_BELOW_BASELINE_MAX, guard_run


def test_stage2_keeps_what_stage1_learned(guard_run):
    assert guard_run["stage2"] >= guard_run["pscl_predicted"] - STAGE2_BELOW_STAGE1_MAX, guard_run


def test_no_pseudo_label_class_collapses(guard_run):
    # a collapsed method gives one class every pixel: the others score 0. With predicted
    # classes a rare class (NEC) can still be 0 at this budget; the pseudo-labels may not.
    assert guard_run["pscl_gt_min_class"] > ORACLE_CLASS_FLOOR, guard_run

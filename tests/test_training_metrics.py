"""Confusion matrix and scores against hand-computed values, both protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_seg.reports.metrics import ConfusionMatrix, format_table, write_json

# internal convention: 0 = background, 1 = A, 2 = B, 3 = C (C never occurs)
GT = np.array([0, 0, 1, 1, 1, 2, 2, 2])
PRED = np.array([0, 1, 1, 1, 0, 2, 1, 2])


@pytest.fixture()
def cm() -> ConfusionMatrix:
    m = ConfusionMatrix(("A", "B", "C"))
    m.update(GT.reshape(2, 4), torch.from_numpy(PRED.reshape(2, 4)))
    return m


def test_confusion_counts(cm):
    assert cm.counts.tolist() == [
        [1, 1, 0, 0],
        [1, 2, 0, 0],
        [0, 1, 2, 0],
        [0, 0, 0, 0],
    ]


def test_mlps_protocol_by_hand(cm):
    s = cm.scores("mlps")
    assert s.class_names == ("A", "B", "C")
    # A: TP 2, FN 1 (one A pixel predicted background), FP 1 (a B pixel) → 2/4
    # B: TP 2, FN 1, FP 0 (the background pixel predicted A does not count) → 2/3
    assert s.iou[:2] == pytest.approx([0.5, 2 / 3])
    assert s.dice[:2] == pytest.approx([4 / 6, 4 / 5])
    assert np.isnan(s.iou[2]) and np.isnan(s.dice[2])
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert s.pixel_accuracy == pytest.approx(4 / 6)
    assert s.fwiou == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert s.pixels == 6


def test_tpro_protocol_by_hand(cm):
    s = cm.scores("tpro")
    assert s.class_names == ("background", "A", "B", "C")
    assert s.iou[:3] == pytest.approx([1 / 3, 2 / 5, 2 / 3])
    assert s.dice[:3] == pytest.approx([2 / 4, 4 / 7, 4 / 5])
    assert s.miou == pytest.approx((2 / 5 + 2 / 3) / 2)  # tissue classes only
    assert s.pixel_accuracy == pytest.approx(5 / 8)
    assert s.fwiou == pytest.approx(2 / 8 * 1 / 3 + 3 / 8 * 2 / 5 + 3 / 8 * 2 / 3)
    assert s.pixels == 8


def test_updates_accumulate_and_merge(cm):
    other = ConfusionMatrix(("A", "B", "C"))
    other.update(GT, PRED)
    assert (cm.merge(other).counts == 2 * other.counts).all()
    assert cm.scores("mlps").miou == pytest.approx(other.scores("mlps").miou)


def test_bad_inputs(cm):
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([4]), np.array([0]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="protocol"):
        cm.scores("voc")


def test_table_and_json(cm, tmp_path):
    scores = [cm.scores("mlps"), cm.scores("tpro")]
    table = format_table(scores)
    assert "protocol mlps" in table and "protocol tpro" in table and "n/a" in table
    path = write_json(tmp_path / "m.json", scores, extra={"split": "test"})
    data = json.loads(path.read_text())
    assert data["split"] == "test" and data["format_version"] == 1
    assert data["protocols"]["mlps"]["per_class"]["C"]["iou"] is None
    assert data["protocols"]["tpro"]["miou"] == pytest.approx((2 / 5 + 2 / 3) / 2)

"""Pseudo-label rule (thesis eq. 4.9) and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_seg.model import CamHead, PredictRules, Stage1Output
from wsi_seg.model.heads import mask_absent_classes, pseudo_label_mask
from wsi_seg.errors import ConfigError
from wsi_seg_training.pseudo_labels import RUN_GATING, palette_of, read_cams, resolve_rules, write_cams, write_label_png

CAMS = torch.tensor([[
    [[0.2, 0.5], [0.0, 0.9]],  # class 1
    [[0.9, 0.4], [0.0, 0.0]],  # class 2
    [[0.1, 0.0], [0.3, 0.0]],  # class 3
]])
BKG = torch.tensor([[[False, False], [False, True]]])


def test_eq_4_9_by_hand():
    # (argmax + 1) · (1 − bkg): px00 → class 2, px01 → 1, px10 → 3, px11 is background
    assert pseudo_label_mask(CAMS, BKG).tolist() == [[[2, 1], [3, 0]]]
    assert pseudo_label_mask(CAMS, BKG).dtype == torch.uint8


def test_absent_classes_are_zeroed_first():
    cams = mask_absent_classes(CAMS, torch.tensor([[1.0, 0.0, 1.0]]))  # class 2 absent
    assert pseudo_label_mask(cams, BKG).tolist() == [[[1, 1], [3, 0]]]


def test_cam_head_rules_end_to_end():
    # raw class maps; eq. 4.3 turns each into ReLU / max
    maps = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]], [[1.0, 4.0], [-3.0, 2.0]]]])
    out = Stage1Output(logits=torch.tensor([[3.0, -3.0]]), class_maps=maps, features=torch.zeros(1, 1, 2, 2))
    head = CamHead(1, 2, score_threshold=0.5)
    bkg = torch.zeros(1, 2, 2, dtype=torch.bool)
    both = head.predict_from(out, (2, 2), bkg, image_labels=torch.tensor([[1.0, 1.0]]))
    assert both.activations[0, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    assert both.activations[0, 1].tolist() == [[0.25, 1.0], [0.0, 0.5]]
    assert both.mask.tolist() == [[[1, 2], [1, 2]]]
    only_first = head.predict_from(out, (2, 2), bkg, image_labels=torch.tensor([[1.0, 0.0]]))
    assert only_first.mask.tolist() == [[[1, 1], [1, 1]]]
    # without image labels the classifier decides: sigmoid(-3) < 0.5 drops class 2
    assert head.predict_from(out, (2, 2), bkg).mask.tolist() == [[[1, 1], [1, 1]]]
    # … at its own threshold unless given another (evaluate's per-protocol thresholds)
    loose = PredictRules(score_threshold=0.01)
    assert head.predict_from(out, (2, 2), bkg, rules=loose).mask.tolist() == [[[1, 2], [1, 2]]]
    # … but the top class is always kept, even below the threshold (px 1,0: all CAMs 0, first wins)
    low = Stage1Output(logits=torch.tensor([[-4.0, -3.0]]), class_maps=maps, features=out.features)
    assert head.predict_from(low, (2, 2), bkg).mask.tolist() == [[[2, 2], [1, 2]]]
    # gating τ_g = 0.8 likewise removes class 2 even when the label says present
    gated = head.predict_from(out, (2, 2), bkg, torch.tensor([[1.0, 1.0]]), PredictRules(gating_threshold=0.8))
    assert gated.mask.tolist() == [[[1, 1], [1, 1]]]
    # … and with ε = 0.5 (tables 5.16/5.17) keeps half of its CAM
    soft = head.predict_from(out, (2, 2), bkg, torch.tensor([[1.0, 1.0]]),
                             PredictRules(gating_threshold=0.8, gating_epsilon=0.5))
    assert soft.activations[0, 1].tolist() == [[0.125, 0.5], [0.0, 0.25]] and soft.mask.tolist() == [[[1, 2], [1, 2]]]
    # the background seed is background (0) in the mask
    seeded = head.predict_from(out, (2, 2), torch.tensor([[[True, False], [False, False]]]))
    assert seeded.mask.tolist() == [[[0, 1], [1, 1]]]


def test_predict_rules_recorded_in_a_checkpoint_and_overridden():
    from wsi_seg.model import ModelConfig, preset_config

    cfg = preset_config("tiny", stage=1)
    assert PredictRules.of_checkpoint(cfg) == PredictRules()  # no record: no gating
    run = PredictRules(gating_threshold=0.7, gating_epsilon=0.2)
    recorded = cfg.replace(provenance={"training": {"pseudo_labels": run.gating_record()}})
    recorded = ModelConfig.from_dict(json.loads(json.dumps(recorded.to_dict())))  # as a checkpoint stores it
    assert PredictRules.of_checkpoint(recorded) == run and run.gating_line() == "τ_g 0.7, ε 0.2 (floor), fallback top"
    assert PredictRules().gating_line() == "off"
    assert resolve_rules(recorded, RUN_GATING, None) == run
    assert resolve_rules(recorded, None, None) == PredictRules(gating_epsilon=0.2)
    assert resolve_rules(recorded, 0.6, 0.0) == PredictRules(gating_threshold=0.6)
    with pytest.raises(ConfigError, match="'sometimes'"):
        resolve_rules(recorded, "sometimes", None)


@pytest.mark.parametrize("bad, message", [
    (dict(score_threshold=1.5), "score threshold must be in \\[0, 1\\], got 1.5"),
    (dict(gating_threshold=1.0), "gating threshold must be in \\[0, 1\\), got 1.0"),
    (dict(gating_epsilon=-0.1), "gating epsilon must be in \\[0, 1\\), got -0.1"),
])
def test_predict_rules_refuse_values_out_of_range(bad, message):
    with pytest.raises(ConfigError, match=message):
        PredictRules(**bad)
    with pytest.raises(ConfigError, match=message):
        PredictRules().replace(**bad)


def test_label_png_and_cams_round_trip(tmp_path):
    mask = np.array([[0, 1], [2, 4]], np.uint8)
    write_label_png(tmp_path / "m.png", mask, palette_of(((1, 2, 3),) * 4))
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and np.array_equal(np.asarray(im), mask)
        assert im.getpalette()[:6] == [255, 255, 255, 1, 2, 3]
    cams = np.random.default_rng(0).random((4, 5, 5)).astype(np.float32)
    write_cams(tmp_path / "c.npz", cams)
    assert read_cams(tmp_path / "c.npz") == pytest.approx(cams, abs=0.5 / 255 + 1e-6)

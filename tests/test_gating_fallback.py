"""Gating (thesis eq. 4.4–4.5) never erases a patch: the fully-gated fallback, the two
readings of ε, and one set of rules for evaluate, pseudo-labels and segment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_seg.errors import ConfigError
from wsi_seg.model import CamHead, PredictRules, Stage1Output
from wsi_seg.model.heads import gate_weights
from wsi_seg.model.predict_rules import IGNORE_LABEL

# three classes, every pixel strongest in class 1 (index 0); the classifier is sure of none
MAPS = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]], [[1.0, 2.0], [2.0, 1.0]], [[0.5, 0.5], [2.0, 2.5]]]])
UNSURE = torch.tensor([[-0.5, -2.0, 0.3]])  # sigmoid 0.38, 0.12, 0.57: all below τ_g 0.8
BKG = torch.tensor([[[False, False], [False, True]]])


def _predict(logits: torch.Tensor, rules: PredictRules, labels: torch.Tensor | None = None):
    out = Stage1Output(logits=logits, class_maps=MAPS, features=torch.zeros(1, 1, 2, 2))
    return CamHead(1, 3).predict_from(out, (2, 2), BKG, labels, rules)


def test_a_fully_gated_patch_keeps_its_top_class_not_class_1():
    pred = _predict(UNSURE, PredictRules(gating_threshold=0.8))
    assert pred.fully_gated.tolist() == [True]
    # class 3 has the top score: the patch is class 3 (the old path made every pixel class 1)
    assert pred.mask.tolist() == [[[3, 3], [3, 0]]]
    # with the patch labels known, the top-scoring *present* class is kept
    labelled = _predict(UNSURE, PredictRules(gating_threshold=0.8), torch.tensor([[1.0, 1.0, 0.0]]))
    assert labelled.fully_gated.tolist() == [True] and labelled.mask.tolist() == [[[1, 1], [1, 0]]]


def test_a_confident_patch_is_gated_as_eq_4_5_says():
    sure = torch.tensor([[-0.5, 2.0, 3.0]])  # sigmoid 0.38, 0.88, 0.95
    pred = _predict(sure, PredictRules(gating_threshold=0.8))
    assert pred.fully_gated.tolist() == [False]
    assert pred.activations[0, 0].abs().sum() == 0  # class 1 rejected: its CAM is zeroed
    assert pred.mask.tolist() == [[[2, 2], [2, 0]]]  # px(1,1) is seeded background; class 2 wins elsewhere
    # the same patch labelled with all three classes: ungated, class 1's strong CAM wins
    ungated = _predict(sure, PredictRules(), torch.ones(1, 3))
    assert ungated.fully_gated is None and ungated.mask.tolist() == [[[1, 1], [1, 0]]]


def test_fallback_ignore_leaves_the_tissue_of_a_fully_gated_patch_out():
    pred = _predict(UNSURE, PredictRules(gating_threshold=0.8, gating_fallback="ignore"))
    assert pred.fully_gated.tolist() == [True]
    assert pred.mask.tolist() == [[[IGNORE_LABEL] * 2, [IGNORE_LABEL, 0]]]  # the background seed stays background


def test_gate_weights_per_image():
    logits = torch.tensor([[2.0, -3.0], [-3.0, -1.0]])  # image 0 passes class 1; image 1 passes nothing
    allowed = torch.tensor([[True, True], [True, True]])
    weights, fully = gate_weights(logits, allowed, 0.8, floor=0.25)
    assert fully.tolist() == [False, True]
    assert weights.tolist() == [[1.0, 0.25], [0.25, 1.0]]  # image 1 falls back to its top class (2)


@pytest.mark.parametrize("eps, threshold", [(0.0, 0.5), (0.25, 0.5622), (0.75, 0.6792)])
def test_the_logit_reading_of_epsilon(eps, threshold):
    rules = PredictRules(gating_threshold=0.8, gating_epsilon=eps, epsilon_reading="logit")
    assert rules.gate_threshold == pytest.approx(threshold, abs=1e-4) and rules.gate_floor == 0.0
    assert "logit > ε" in rules.gating_line()
    floor = PredictRules(gating_threshold=0.8, gating_epsilon=eps)
    assert floor.gate_threshold == 0.8 and floor.gate_floor == eps
    # class 3 (sigmoid 0.57) passes a logit-0 gate, so the patch is not fully gated there
    assert _predict(UNSURE, rules).fully_gated.tolist() == [eps > 0.3]


@pytest.mark.parametrize("bad, message", [
    (dict(gating_fallback="class-1"), "gating fallback must be one of top, ignore, got 'class-1'"),
    (dict(epsilon_reading="margin"), "epsilon reading must be one of logit, floor, got 'margin'"),
])
def test_rules_refuse_unknown_choices(bad, message):
    with pytest.raises(ConfigError, match=message):
        PredictRules(**bad)


def test_rules_round_trip_through_a_checkpoint_record():
    from wsi_seg.model import ModelConfig, preset_config

    run = PredictRules(gating_threshold=0.8, gating_epsilon=0.25, gating_fallback="ignore", epsilon_reading="logit")
    cfg = preset_config("tiny", stage=1).replace(provenance={"training": {"pseudo_labels": run.gating_record()}})
    cfg = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert PredictRules.of_checkpoint(cfg) == run
    # a checkpoint from before the fallback existed gets the one that cannot erase a patch
    old = preset_config("tiny", stage=1).replace(
        provenance={"training": {"pseudo_labels": {"gating_threshold": 0.8, "gating_epsilon": 0.0}}})
    assert PredictRules.of_checkpoint(old).gating_fallback == "top"


def test_stage2_losses_skip_ignored_pixels():
    from wsi_seg_training.losses import NRLoss
    from wsi_seg_training.stage2 import segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    ignored = mask.clone()
    ignored[1] = IGNORE_LABEL
    ce = segmentation_loss("ce", logits, {"mask": ignored}, torch.device("cpu"), None)
    assert ce.item() == pytest.approx(F.cross_entropy(logits[:1], mask[:1].long()).item(), rel=1e-5)
    none = segmentation_loss("ce", logits, {"mask": torch.full_like(mask, IGNORE_LABEL)}, torch.device("cpu"), None)
    assert none.item() == 0.0 and math.isfinite(none.item())
    cams = torch.rand(2, 2, 4, 4)
    nr = NRLoss()
    torch.manual_seed(1)
    with_ignored = nr(logits, ignored, cams)
    torch.manual_seed(1)
    first_only = nr(logits[:1], mask[:1], cams[:1])
    assert with_ignored.item() == pytest.approx(first_only.item() / 2, rel=1e-4)  # image 2 adds nothing


def test_pseudo_label_dataset_accepts_ignore_and_still_refuses_other_values(tmp_path):
    from PIL import Image
    from wsi_seg_training.datasets.pseudo import PseudoLabelDataset, PseudoLabelRecord

    from wsi_seg.errors import DatasetError

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img)
    ok, bad = tmp_path / "ok.png", tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 1, 2, IGNORE_LABEL]] * 4, np.uint8)).save(ok)
    Image.fromarray(np.array([[0, 1, 2, 7]] * 4, np.uint8)).save(bad)
    ds = PseudoLabelDataset([PseudoLabelRecord(image=img, mask=ok, cams=None)], num_classes=2)
    assert int(ds[0]["mask"].max()) == IGNORE_LABEL
    with pytest.raises(DatasetError, match="bad.png: pseudo-label 4×4 px with values up to 7"):
        PseudoLabelDataset([PseudoLabelRecord(image=img, mask=bad, cams=None)], num_classes=2)[0]


def test_segment_predicts_with_the_checkpoint_rules_and_records_them(tmp_path, blob_slide):
    import zarr

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import PsclNet, load_checkpoint, preset_config, save_checkpoint

    masks = {}
    for fallback in ("top", "ignore"):
        rules = PredictRules(gating_threshold=0.9999, gating_fallback=fallback)  # no class passes this gate
        cfg = preset_config("tiny", stage=1).replace(provenance={"training": {"pseudo_labels": rules.gating_record()}})
        torch.manual_seed(1)
        model = load_checkpoint(save_checkpoint(PsclNet(cfg), tmp_path / fallback, config=cfg))
        # threads 2 would give 2 streams by default: streams 1 must arrive as 1
        opts = SegmentOptions(device="cpu", workers=0, progress=False, threads=2, streams=1)
        group = zarr.open_group(str(segment_slide(blob_slide, tmp_path / f"{fallback}.zarr", model, opts).out), mode="r")
        record = group.attrs["wsi_seg"]
        assert record["predict_rules"] == rules.record() and record["inference"]["streams"] == 1
        masks[fallback] = group["labels/mask/0"][:]
    assert masks["top"].max() > 0  # every patch fell back to its top class
    assert masks["ignore"].max() == 0  # every patch was left without a class: 0 in a slide map


def test_gating_given_on_the_command_line_means_what_it_says():
    from wsi_seg_training.config import PsclConfig
    from wsi_seg_training.pseudo_labels import DEFAULT_GATING, RUN_GATING, resolve_rules

    from wsi_seg.model import preset_config

    run = PsclConfig().predict_rules()  # today's default: logit > ε 0, fallback top
    assert (run.epsilon_reading, run.gate_threshold, run.gating_fallback) == ("logit", 0.5, "top")
    cfg = preset_config("tiny", stage=1).replace(provenance={"training": {"pseudo_labels": run.gating_record()}})
    assert resolve_rules(cfg, RUN_GATING, None) == run
    assert resolve_rules(cfg, DEFAULT_GATING, None) == run  # --gating without TAU
    tau = resolve_rules(cfg, 0.9, None)  # --gating 0.9: a τ_g is used, so the floor reading
    assert (tau.epsilon_reading, tau.gate_threshold) == ("floor", 0.9)
    ungated = preset_config("tiny", stage=1)  # a run trained without gating, gated afterwards
    assert resolve_rules(ungated, DEFAULT_GATING, None) == run


def test_train_refuses_a_tau_the_logit_reading_would_not_use():
    from wsi_seg_training.config import Stage1Config, load_config

    with pytest.raises(ConfigError, match="gating threshold τ_g 0.9 applies to --epsilon-reading floor"):
        load_config(Stage1Config, None, {"data.path": "d", "out": "o", "pscl.gating_threshold": 0.9}).validate()
    cfg = load_config(Stage1Config, None, {"data.path": "d", "out": "o", "pscl.gating_threshold": 0.9,
                                           "pscl.epsilon_reading": "floor"}).validate()
    assert cfg.pscl.predict_rules().gate_threshold == 0.9

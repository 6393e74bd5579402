"""End to end on a tiny synthetic LUAD-layout dataset: train, resume, pseudo-labels, evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupted_then_resumed
from PIL import Image

from wsi_seg.errors import ConfigError, DatasetError, OutputError
from wsi_seg.model import load_checkpoint

from wsi_seg_training import cli
from wsi_seg_training.config import load_stage1_config
from wsi_seg_training.stage1 import train_stage1
from wsi_seg_training.synthetic_dataset import write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def luad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "luad", n_train=16, n_val=4, n_test=4, seed=3)


def _cfg(data: Path, out: Path, **overrides):
    base = {"data.path": str(data), "out": str(out), "model.preset": "tiny", "epochs": 3, "batch_size": 8,
            "data.workers": 0, "device": "cpu", "progress": False, "seed": 5}
    base.update(overrides)
    return load_stage1_config(None, base)


@pytest.fixture(scope="module")
def pscl_run(luad: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_stage1(_cfg(luad, tmp_path_factory.mktemp("runs") / "pscl"))


def test_stage1_trains_and_writes_a_usable_checkpoint(pscl_run, luad):
    run = pscl_run.run_dir
    assert [r["epoch"] for r in pscl_run.history] == [1, 2, 3]
    assert pscl_run.history[-1]["loss"] < pscl_run.history[0]["loss"]
    assert all(r["pscl"] > 0 and r["pscl_pixels"] > 0 for r in pscl_run.history)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[-1]["val_miou_oracle"] != ""
    assert set(rows[0]) >= {"loss", "mlsm", "pscl", "lr", "seconds", "val_miou_oracle"}  # scored with true classes
    assert (run / "config.yaml").is_file() and json.loads((run / "run.json").read_text())["world_size"] == 1
    loaded = load_checkpoint(run / "checkpoint")
    cfg = loaded.config
    assert cfg.stage == 1 and cfg.class_names == ("TE", "NEC", "LYM", "TAS") and cfg.mpp == 1.0
    assert cfg.bkg_min_size_px == 200 and cfg.preset == "tiny"
    prov = cfg.provenance["training"]
    assert prov["epochs"] == 3 and prov["pscl"]["enabled"] and prov["dataset"] == str(luad.resolve())
    assert prov["dataset_format"] == "luad" and prov["software"]["torch"] == torch.__version__


def test_pseudo_labels_and_evaluate_from_the_cli(pscl_run, luad, tmp_path, capsys):
    ckpt = pscl_run.checkpoint
    out = tmp_path / "pl"
    assert cli.main(["pseudo-labels", "--model", str(ckpt), "--data", str(luad), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
    masks = sorted((out / "train" / "mask").glob("*.png"))
    cams = sorted((out / "train" / "cams").glob("*.npz"))
    assert len(masks) == len(cams) == 16
    name = masks[0].name
    labels = [int(c) for c in name[name.index("[") + 1:name.index("]")].split()]
    with Image.open(masks[0]) as im:
        mask = np.asarray(im)
    assert mask.shape == (224, 224) and mask.max() <= 4
    present = {int(v) for v in np.unique(mask)} - {0}
    assert present <= {i + 1 for i, flag in enumerate(labels) if flag}  # absent classes never appear
    with np.load(cams[0]) as z:
        assert z["cams"].shape == (4, 224, 224) and z["cams"].dtype == np.uint8
    manifest = json.loads((out / "pseudo_labels.json").read_text())
    assert manifest["mask_convention"].startswith("0 = background") and manifest["splits"]["train"]["patches"] == 16
    assert (manifest["gating_threshold"], manifest["gating_epsilon"]) == (0.8, 0.0)  # as the run was trained
    assert (manifest["gating_fallback"], manifest["epsilon_reading"]) == ("top", "logit")
    assert 0 <= manifest["splits"]["train"]["fully_gated_patches"] <= 16
    assert manifest["splits"]["train"]["ignored_pixels"] == 0
    # a second run into the same folder needs --overwrite
    assert cli.main(["pseudo-labels", "--model", str(ckpt), "--data", str(luad), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 2

    js = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--model", str(ckpt), "--data", str(luad), "--split", "test",
                     "--device", "cpu", "--json", str(js), "--no-progress"]) == 0
    data = json.loads(js.read_text())
    assert set(data["protocols"]) == {"mlps", "tpro"} and data["patches"] == 4
    assert 0.0 <= data["protocols"]["mlps"]["miou"] <= 1.0
    assert all(len(cm) == 5 for cm in data["confusion_matrix"].values())
    # reference protocols by default: predicted classes at each protocol's threshold, the run's gating
    assert data["image_labels"] == "predicted" and not data["oracle"]
    assert data["score_thresholds"] == {"mlps": 0.25, "tpro": 0.15} and data["gating_threshold"] == 0.8
    assert data["gating_counts"]["mlps"]["patches"] == 4 and data["gating_fallback"] == "top"
    # a gate no class passes: every patch falls back to its top class, or (ignore) leaves the scores
    counts = {}
    for fallback in ("top", "ignore"):
        assert cli.main(["evaluate", "--model", str(ckpt), "--data", str(luad), "--gating", "0.9999",
                         "--gating-fallback", fallback, "--device", "cpu", "--json", str(js), "--no-progress"]) == 0
        data = json.loads(js.read_text())
        counts[fallback] = data["gating_counts"]["mlps"]
        assert counts[fallback]["fully_gated_patches"] == 4 and data["gating_fallback"] == fallback
        assert np.array(data["confusion_matrix"]["mlps"]).sum() + counts[fallback]["ignored_pixels"] == 4 * 224 * 224
    assert counts["top"]["ignored_pixels"] == 0 < counts["ignore"]["ignored_pixels"]
    assert "fully gated patches: mlps 4/4" in capsys.readouterr().out
    capsys.readouterr()
    for flag, value, problem in (("--score-threshold", "1.5", "score threshold must be in [0, 1], got 1.5"),
                                 ("--gating", "1.0", "gating threshold must be in [0, 1), got 1.0")):
        bad = tmp_path / "bad.json"
        assert cli.main(["evaluate", "--model", str(ckpt), "--data", str(luad), flag, value, "--device", "cpu",
                         "--json", str(bad), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert problem in err and "\n" not in err and not bad.exists()
    assert cli.main(["evaluate", "--model", str(pscl_run.run_dir), "--data", str(luad), "--image-labels", "gt",
                     "--no-gating", "--device", "cpu", "--json", str(js), "--no-progress"]) == 0
    assert "ORACLE image labels" in capsys.readouterr().out  # a run folder works as --model too
    data = json.loads(js.read_text())
    assert data["oracle"] and data["score_thresholds"] == {} and data["gating_threshold"] is None


def test_resume_after_interruption_equals_an_uninterrupted_run(pscl_run, luad, tmp_path):
    cfg = _cfg(luad, tmp_path / "interrupted")
    resumed = interrupted_then_resumed(train_stage1, cfg)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a = load_checkpoint(pscl_run.checkpoint).net.state_dict()
    b = load_checkpoint(resumed.checkpoint).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in pscl_run.history]
    # finished runs are not silently redone; other settings need another --out
    with pytest.raises(OutputError, match="finished"):
        train_stage1(cfg)
    with pytest.raises(ConfigError, match="different settings"):
        train_stage1(_cfg(luad, tmp_path / "interrupted", **{"optim.lr": 0.01}))


def test_no_pscl_baseline_with_workers_and_gating(luad, tmp_path):
    base = train_stage1(_cfg(luad, tmp_path / "base", epochs=1, **{"pscl.enabled": False, "data.workers": 1}))
    assert base.history[0]["pscl"] is None
    assert load_checkpoint(base.checkpoint).config.provenance["training"]["method"].startswith("CAM baseline")
    gated = train_stage1(_cfg(luad, tmp_path / "gated", epochs=1, val_every=0,
                              **{"pscl.gating": True, "pscl.include_background": False}))
    assert gated.history[0]["val_miou_oracle"] is None
    assert load_checkpoint(gated.checkpoint).config.cam_score_threshold == 0.5  # its gate: logit > ε = 0


def test_a_patch_that_fails_to_decode_in_a_worker_is_one_line(luad, tmp_path):
    data = write_dataset(tmp_path / "d", n_train=8, n_val=0, n_test=0, seed=1)
    victim = sorted((data / "train").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:200])  # header intact, pixel data truncated
    with pytest.raises(DatasetError) as info:
        train_stage1(_cfg(data, tmp_path / "run", epochs=1, **{"data.workers": 1}))
    message = str(info.value)
    assert victim.name in message and "\n" not in message


def test_evaluate_a_stage2_checkpoint_and_refuse_its_pseudo_labels(checkpoints, luad, tmp_path):
    from wsi_seg_training.evaluate import evaluate_checkpoint
    from wsi_seg_training.pseudo_labels import generate_pseudo_labels

    result = evaluate_checkpoint(checkpoints[2], luad, split="val", device="cpu", progress=False)
    assert [s.protocol for s in result.scores] == ["mlps", "tpro"] and result.patches == 4
    assert result.confusions["mlps"].counts.sum() == 4 * 224 * 224 and result.image_labels is None
    assert result.mode_line().startswith("stage 2")
    with pytest.raises(ConfigError, match="stage-1 checkpoint"):
        generate_pseudo_labels(checkpoints[2], luad, tmp_path / "pl", device="cpu", progress=False)


def test_other_backbone_builds_from_the_config(luad, tmp_path):
    from wsi_seg.model import PsclNet

    from wsi_seg_training.stage1 import build_model_config, resolve_data

    cfg = _cfg(luad, tmp_path / "r", **{"model.backbone": "resnet18"})
    model_cfg = build_model_config(cfg, resolve_data(cfg))
    assert model_cfg.backbone == "resnet18" and model_cfg.backbone_kwargs == {} and model_cfg.stage == 1
    assert PsclNet(model_cfg).encoder.channels[-1] == 512

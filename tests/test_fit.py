"""``wsi-seg fit``: the whole recipe into one run folder, resumable, with report.md."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wsi_seg_training import cli
from wsi_seg_training.fit import plan_fit
from wsi_seg_training.synthetic_dataset import write_dataset
from wsi_seg.errors import ConfigError

pytestmark = pytest.mark.slow

RECIPE = {
    "device": "cpu", "workers": 0, "progress": False,
    "stage1": {"epochs": 1, "batch_size": 4, "model": {"preset": "tiny"}, "val_every": 0},
    "stage2": {"epochs": 1, "batch_size": 4, "val_every": 0},
    "evaluate": {"batch_size": 4},
}


def _fitted(tmp_path):
    """A tiny dataset and a finished `fit` run of RECIPE on it: (data, run, argv)."""
    data = write_dataset(tmp_path / "luad", n_train=8, n_val=2, n_test=2, seed=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run = tmp_path / "run"
    argv = ["fit", "--data", str(data), "--out", str(run), "--config", str(recipe)]
    assert cli.main(argv) == 0
    return data, run, argv


def test_fit_runs_every_step_writes_the_report_and_reruns_as_a_no_op(tmp_path, capsys):
    data, run, argv = _fitted(tmp_path)
    out = capsys.readouterr().out
    assert "ran: stage1, pseudo-labels, stage2, report" in out
    report = (run / "report.md").read_text()
    for row in ("| Stage 1 (predicted classes) |", "| Stage 1 (oracle: gt classes) |", "| Stage 2 |",
                "protocol mlps", "protocol tpro", "*thesis: stage 1, PSCL, gated (tables 5.4/5.16)*"):
        assert row in report, row
    assert "ORACLE image labels" in report and "predicted image labels (sigmoid mlps" in report
    assert "0.25, tpro" in report and "0.15, top class kept" in report  # the reference thresholds
    gating = "gating logit > ε 0.0 (sigmoid > 0.500), fallback top"
    assert f"{gating}\n" in report and f"; {gating}; fully gated patches: mlps " in report  # the run's, scored with it
    assert (run / "pseudo_labels" / "pseudo_labels.json").is_file()
    mtime = (run / "stage2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "every step is finished; nothing to do" in out and "stage 1: finished (1 epochs) — skipped" in out
    assert (run / "stage2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == mtime
    # every command that takes a checkpoint takes the run folder too
    assert cli.main(["evaluate", "--model", str(run / "stage2"), "--data", str(data), "--device", "cpu",
                     "--no-progress"]) == 0


def _mtime(path) -> int:
    return path.stat().st_mtime_ns


def test_fit_with_more_epochs_continues_the_step_and_redoes_what_depends_on_it(tmp_path, capsys, monkeypatch):
    data, run, argv = _fitted(tmp_path)
    s1, pl, s2 = (run / "stage1" / "checkpoint" / "model.safetensors", run / "pseudo_labels" / "pseudo_labels.json",
                  run / "stage2" / "checkpoint" / "model.safetensors")
    before = {p: _mtime(p) for p in (s1, pl)}
    capsys.readouterr()
    # more stage-2 epochs: stage 2 goes on from its epoch 1, its scores are redone; stage 1 is left alone
    assert cli.main([*argv, "--stage2-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: finished (1 epochs) — skipped" in out and "pseudo-labels: written for this stage-1" in out
    assert "stage 2: training from epoch 1 to 2" in out and "ran: stage2" in out
    assert {p: _mtime(p) for p in (s1, pl)} == before
    state = json.loads((run / "stage2" / "state" / "trainer.json").read_text())
    assert state["epochs_history"] == [{"epochs": 1, "from_epoch": 0}, {"epochs": 2, "from_epoch": 1}]
    s2_sha = json.loads((run / "eval" / "stage2_test_predicted.json").read_text())["sha256"]
    assert s2_sha == hashlib.sha256(s2.read_bytes()).hexdigest()  # scored again: the new checkpoint
    assert cli.main([*argv, "--stage2-epochs", "2"]) == 0
    assert "every step is finished; nothing to do" in capsys.readouterr().out
    # stage 2 has a constant LR: 1 + 1 continued epochs equal 2 uninterrupted ones, bit for bit
    from wsi_seg_training.stage2 import train_stage2

    cfg = plan_fit(data, run, tmp_path / "recipe.yaml", {"stage2": {"epochs": 2}}).stage2
    cfg.out = str(tmp_path / "stage2_uninterrupted")
    a, b = load_file(str(s2)), load_file(str(train_stage2(cfg).checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # fewer epochs than done: one line, exit 2
    assert cli.main(argv) == 2
    assert "already trained 2 epochs, more than --epochs 1" in capsys.readouterr().err
    # more stage-1 epochs: stage 1 goes on, pseudo-labels are redone, stage 2 (made from the old
    # stage 1) trains again from scratch, also when interrupted before its first epoch
    import wsi_seg_training.stage2

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wsi_seg_training.stage2, "train_stage2", interrupted)
    assert cli.main([*argv, "--epochs", "2", "--stage2-epochs", "2"]) == 130
    assert "stage 1: training from epoch 1 to 2" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main([*argv, "--epochs", "2", "--stage2-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: finished (2 epochs) — skipped" in out and "ran: stage2" in out
    assert "stage 2: what it was trained from changed" in out
    state = json.loads((run / "stage2" / "state" / "trainer.json").read_text())
    assert state["epochs_history"] == [{"epochs": 2, "from_epoch": 0}]
    manifest = json.loads(pl.read_text())
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(s1.read_bytes()).hexdigest()


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("stage3: {}\n")
    with pytest.raises(ConfigError, match="unknown key.*stage3"):
        plan_fit(tmp_path, tmp_path / "o", bad)
    bad.write_text("stage1: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"\(stage1\): unknown key.*epochz"):
        plan_fit(tmp_path, tmp_path / "o", bad)

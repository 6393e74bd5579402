"""More epochs on a finished or interrupted run continue it (``--epochs``), for every trainer.

The rule (docs/method.md): the run goes on from its last saved epoch to the new total;
stage 1's poly LR then follows the schedule of the new total from the step reached, so
from there on it equals a run started with that total, and pre-training (constant LR)
continued equals the uninterrupted run bit for bit. Fewer epochs than done, or any other
setting changed, are refused in one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wsi_seg.errors import ConfigError, OutputError

from wsi_seg_training import cli
from wsi_seg_training.config import PretrainConfig, load_config, load_stage1_config
from wsi_seg_training.synthetic_dataset import write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "luad", n_train=4, n_val=0, n_test=0, seed=3)


def _stage1(data: Path, out: Path, epochs: int, **over):
    from wsi_seg_training.stage1 import train_stage1

    cfg = load_stage1_config(None, {"data.path": str(data), "out": str(out), "model.preset": "tiny", "epochs": epochs,
                                    "batch_size": 2, "data.workers": 0, "device": "cpu", "progress": False,
                                    "seed": 5, "val_every": 0, **over})
    return train_stage1(cfg)


def _pretrain(data: Path, out: Path, epochs: int, **over):
    from wsi_seg_training.pretrain import train_pretrain

    cfg = load_config(PretrainConfig, None, {"data.path": str(data), "out": str(out), "model.preset": "tiny",
                                             "epochs": epochs, "batch_size": 2, "optim.lr": 1e-3, "data.workers": 0,
                                             "device": "cpu", "progress": False, "seed": 5, **over})
    return train_pretrain(cfg)


TRAINERS = {"stage1": (_stage1, "optim.lr", 0.01), "pretrain": (_pretrain, "optim.lr", 1e-2)}


def _weights(result) -> dict[str, torch.Tensor]:
    path = result.output
    return load_file(str(path / "model.safetensors" if path.is_dir() else path))


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_more_epochs_continue_a_finished_run(trainer, data, tmp_path, caplog):
    train, other_key, other_value = TRAINERS[trainer]
    run = tmp_path / "run"
    first = train(data, run, 1)
    with caplog.at_level(logging.INFO, logger="wsi_seg_training"):
        more = train(data, run, 3)
    assert f"{run}: continuing from epoch 1 to 3 (it was set for 1" in caplog.text
    assert more.resumed_from_epoch == 1 and [r["epoch"] for r in more.history] == [1, 2, 3]
    assert more.history[0] == first.history[0]  # the epoch done is kept, not redone
    history = [{"epochs": 1, "from_epoch": 0}, {"epochs": 3, "from_epoch": 1}]
    assert json.loads((run / "run.json").read_text())["epochs_history"] == history
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3
    state = json.loads((run / "state" / "trainer.json").read_text())
    assert (state["epoch"], state["epochs"], state["epochs_history"]) == (3, 3, history)

    full = train(data, tmp_path / "full", 3)
    if trainer == "pretrain":  # constant LR: continued 1 + 2 epochs equals 3 uninterrupted, bit for bit
        assert [r["loss"] for r in more.history] == [r["loss"] for r in full.history]
        a, b = _weights(more), _weights(full)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:  # poly LR: the 1-epoch schedule, then the 3-epoch one's from the step reached
        from wsi_seg.model import load_checkpoint

        assert first.history[0]["lr"] == 0.0 and full.history[0]["lr"] > 0
        assert [r["lr"] for r in more.history[1:]] == [r["lr"] for r in full.history[1:]]
        prov = load_checkpoint(more.checkpoint).config.provenance["training"]
        assert prov["epochs"] == 3 and prov["epochs_history"] == history

    # the same total again: finished, not redone; fewer epochs or another setting: refused
    with pytest.raises(OutputError, match=r"finished run \(3 epochs\); raise --epochs to continue"):
        train(data, run, 3)
    with pytest.raises(ConfigError, match="already trained 3 epochs, more than --epochs 2"):
        train(data, run, 2)
    with pytest.raises(ConfigError, match="different settings"):
        train(data, run, 4, **{other_key: other_value})
    assert json.loads((run / "state" / "trainer.json").read_text())["epoch"] == 3  # refusals touch nothing


def test_an_interrupted_run_continues_to_a_new_total(data, tmp_path, caplog):
    """Stopped after epoch 1 of 2, then given 3: the poly LR jumps from the 2-epoch
    schedule's value to the 3-epoch one's and follows it; the result is written once."""
    run = tmp_path / "cut"

    def stop(epoch, row):
        raise KeyboardInterrupt

    from wsi_seg_training.stage1 import train_stage1

    cfg = load_stage1_config(None, {"data.path": str(data), "out": str(run), "model.preset": "tiny", "epochs": 2,
                                    "batch_size": 2, "data.workers": 0, "device": "cpu", "progress": False,
                                    "seed": 5, "val_every": 0})
    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg, on_epoch_end=stop)
    with caplog.at_level(logging.INFO, logger="wsi_seg_training"):
        more = _stage1(data, run, 3)
    steps = 2  # 4 patches, batch 2
    was, now = 0.1 * (1 - steps / (2 * steps)) ** 0.9, 0.1 * (1 - steps / (3 * steps)) ** 0.9
    assert f"continuing from epoch 1 to 3 (it was set for 2; LR schedule recomputed for 3 epochs: " \
           f"{was:.3g} → {now:.3g} at step {steps})" in caplog.text
    assert [r["epoch"] for r in more.history] == [1, 2, 3] and more.history[-1]["lr"] == 0.0


def test_fewer_epochs_is_one_line_from_the_cli(data, tmp_path, capsys):
    run = tmp_path / "pre"
    argv = ["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    assert cli.main([*argv, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already trained 2 epochs, more than --epochs 1" in err
    assert cli.main([*argv, "--epochs", "2"]) == 2
    assert "raise --epochs to continue it" in capsys.readouterr().err


def test_a_corrupt_run_state_is_one_line_from_the_cli(data, tmp_path, capsys):
    run = tmp_path / "pre"
    argv = ["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--no-progress", "--epochs", "1"]
    assert cli.main(argv) == 0
    (run / "state" / "trainer.json").write_text("{not json", encoding="utf-8")
    capsys.readouterr()
    assert cli.main([*argv[:-1], "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read the run state" in err

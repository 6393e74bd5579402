"""The Trainer base on a toy trainer: what every trainer gets from it (resume, seeding,
metrics rows, refusals), without a real network."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wsi_seg.errors import ConfigError, OutputError

from wsi_seg_training.config import RunConfig, load_config
from wsi_seg_training.trainer import Trainer, TrainingParts, epoch_seed


class _Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


@dataclass
class _ToyConfig(RunConfig):
    lr: float = 0.05
    decay: bool = True  # the LR decays linearly to 0.1·lr
    validate_last: bool = False  # a validation at the last epoch, drawing from the global RNG


class _ToyTrainer(Trainer):
    """Linear regression with a noisy loss term drawn from its own seeded generator."""

    metrics_columns = ("epoch", "loss", "noise", "lr", "seconds", "val", "val_seconds")

    def build(self) -> TrainingParts:
        net = nn.Linear(4, 1)
        self.noise = torch.Generator()
        return TrainingParts(net=net, optimizer=torch.optim.SGD(net.parameters(), lr=self.cfg.lr, momentum=0.9),
                             dataset=_Points(),
                             lr_factor=(lambda step, total: 1.0 - 0.9 * min(step, total) / total)
                             if self.cfg.decay else None)

    def start_epoch(self, noise_seed: int) -> None:
        self.noise.manual_seed(noise_seed)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        with self.autocast:
            pred = self.forward(batch["x"]).squeeze(1)
        noise = float(torch.rand((), generator=self.noise))
        jitter = float(torch.rand(())) * 1e-3  # the global RNG, as augmentations in the main process draw
        return {"loss": ((pred - batch["y"]) ** 2).mean() * (1 + noise + jitter), "noise": noise}

    def validation_due(self, epochs_done: int) -> bool:
        return self.cfg.validate_last and epochs_done == self.cfg.epochs

    def validate(self) -> dict:
        return {"val": float(torch.rand(()))}

    def save_result(self):
        path = self.result_root / "checkpoint"
        path.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path / "model.safetensors"))
        return path


def _cfg(tmp_path, name: str, **overrides) -> _ToyConfig:
    return load_config(_ToyConfig, None, {"out": str(tmp_path / name), "epochs": 3, "batch_size": 4,
                                          "data.path": "unused", "data.workers": 0, "device": "cpu",
                                          "progress": False, "seed": 2, **overrides})


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    full = _ToyTrainer(_cfg(tmp_path, "full")).run()
    assert [r["epoch"] for r in full.history] == [1, 2, 3] and full.resumed_from_epoch == 0

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _ToyTrainer(_cfg(tmp_path, "cut")).run(on_epoch_end=stop)
    trainer = _ToyTrainer(_cfg(tmp_path, "cut"))
    resumed = trainer.run()
    assert resumed.resumed_from_epoch == 2 and trainer.steps_done == 9  # 12 points, batch 4, 3 epochs
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "cut" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(_ToyTrainer.metrics_columns) and len(rows) == 3
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["resumed_after_epoch"] == 2 and run["world_size"] == 1
    assert (tmp_path / "cut" / "config.yaml").is_file()
    with pytest.raises(OutputError, match="finished"):
        _ToyTrainer(_cfg(tmp_path, "cut")).run()
    with pytest.raises(ConfigError, match="different settings"):
        _ToyTrainer(_cfg(tmp_path, "cut", lr=0.01)).run()


def test_a_diverging_loss_stops_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"loss became (inf|nan) at step \d+ \(epoch 1\); no epoch had finished"):
        _ToyTrainer(_cfg(tmp_path, "big", lr=1e12)).run()
    record = json.loads((tmp_path / "big" / "run.json").read_text())["diverged"]
    assert record["epoch"] == 1 and record["step"] >= 1 and record["last_good"] is None
    assert not (tmp_path / "big" / "checkpoint").exists() and not (tmp_path / "big" / "last_good").exists()


def test_a_run_that_diverges_later_keeps_its_last_good_epoch(tmp_path):
    trainer = _ToyTrainer(_cfg(tmp_path, "late", decay=False))

    def blow_up(epoch, row):  # after epoch 1, an LR no loss survives
        for group in trainer.optimizer.param_groups:
            group["lr"] = 1e12

    with pytest.raises(ConfigError, match=r"\(epoch 2\); the weights after epoch 1 are in .*last_good/checkpoint"):
        trainer.run(on_epoch_end=blow_up)
    run = tmp_path / "late"
    record = json.loads((run / "run.json").read_text())["diverged"]
    assert record["epoch"] == 2 and 4 <= record["step"] <= 6 and record["last_good"].endswith("last_good/checkpoint")
    kept = load_file(str(run / "last_good" / "checkpoint" / "model.safetensors"))
    epoch1 = load_file(str(run / "state" / "model.safetensors"))
    assert kept.keys() == epoch1.keys() and all(torch.equal(kept[k], epoch1[k]) for k in kept)
    assert all(torch.isfinite(v).all() for v in kept.values())
    assert not (run / "checkpoint").exists()  # nothing that looks like a finished run


def test_the_batch_order_and_the_loss_noise_have_their_own_seeds():
    assert epoch_seed(3, 1) == epoch_seed(3, 1) != epoch_seed(3, 2)
    assert epoch_seed(3, 1, rank=0) != epoch_seed(3, 1, rank=1)
    assert epoch_seed(3, 1) != epoch_seed(4, 1)


def test_a_run_state_from_before_epochs_could_grow_still_resumes_and_continues(tmp_path):
    """Format-1 states hashed the settings with ``epochs`` in and held no total: a run
    written so is still the same run, and more epochs continue it."""
    from wsi_seg_training.run_state import fingerprint

    cfg = _cfg(tmp_path, "old", epochs=2)
    _ToyTrainer(cfg).run()
    path = tmp_path / "old" / "state" / "trainer.json"
    state = json.loads(path.read_text())
    for key in ("epochs", "epochs_history"):
        del state[key]
    state.update(format_version=1, fingerprint=fingerprint(cfg.result_settings()))
    path.write_text(json.dumps(state))
    with pytest.raises(OutputError, match=r"finished run \(2 epochs\)"):
        _ToyTrainer(_cfg(tmp_path, "old", epochs=2)).run()
    more = _ToyTrainer(_cfg(tmp_path, "old", epochs=3)).run()
    assert more.resumed_from_epoch == 2 and [r["epoch"] for r in more.history] == [1, 2, 3]
    full = _ToyTrainer(_cfg(tmp_path, "full", epochs=3)).run()
    assert more.history[-1]["lr"] == full.history[-1]["lr"]  # the 3-epoch schedule's last value
    state = json.loads(path.read_text())
    assert state["format_version"] == 2 and state["epochs_history"] == [{"epochs": 2, "from_epoch": 0},
                                                                       {"epochs": 3, "from_epoch": 2}]


def test_more_epochs_at_a_constant_lr_equal_an_uninterrupted_run(tmp_path):
    """2 epochs, then 3: the same weights as 3 at once, although the 2-epoch run validated at
    its last epoch and the 3-epoch one did not (validation leaves training's RNG alone)."""
    cut = _ToyTrainer(_cfg(tmp_path, "cut", epochs=2, decay=False, validate_last=True)).run()
    assert cut.history[-1]["val"] is not None
    more = _ToyTrainer(_cfg(tmp_path, "cut", epochs=3, decay=False, validate_last=True)).run()
    full = _ToyTrainer(_cfg(tmp_path, "full", epochs=3, decay=False, validate_last=True)).run()
    assert full.history[1]["val"] is None and [r["loss"] for r in more.history] == [r["loss"] for r in full.history]
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(more.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fit_step_trains_again_when_what_it_was_made_from_changed(tmp_path):
    """``wsi-seg fit``'s rule for a step downstream of another (stage 1 after pre-training,
    stage 2 after stage 1): a new upstream result makes its run stale, also when the
    restart is interrupted before its first epoch."""
    from wsi_seg_training.fit import _train_step, _upstream

    upstream = tmp_path / "weights.bin"
    upstream.write_bytes(b"one")
    lines: list[str] = []
    cfg = _cfg(tmp_path, "step", epochs=2)

    def train(cfg, overwrite=False, on_epoch_end=None):
        return _ToyTrainer(cfg).run(overwrite, on_epoch_end)

    finished = tmp_path / "step" / "checkpoint" / "model.safetensors"
    assert _train_step("toy", train, cfg, finished, lines.append, _upstream(upstream))
    assert not _train_step("toy", train, cfg, finished, lines.append, _upstream(upstream))
    assert lines[-1] == "toy: finished (2 epochs) — skipped"
    upstream.write_bytes(b"two")

    def interrupted(cfg, overwrite=False, on_epoch_end=None):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_step("toy", interrupted, cfg, finished, lines.append, _upstream(upstream))
    assert _train_step("toy", train, cfg, finished, lines.append, _upstream(upstream))
    assert lines[-1].startswith(f"toy: what it was trained from changed ({upstream}) — training again (2 epochs)")
    state = json.loads((tmp_path / "step" / "state" / "trainer.json").read_text())
    assert state["epochs_history"] == [{"epochs": 2, "from_epoch": 0}]  # from scratch
    assert json.loads((tmp_path / "steps.json").read_text())["step"] == _upstream(upstream)
    assert not _train_step("toy", train, cfg, finished, lines.append, _upstream(upstream))

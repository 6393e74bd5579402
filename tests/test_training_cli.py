"""Stage-1 config files, CLI flag precedence, and the CLI's one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from wsi_seg.errors import ConfigError, DatasetError, WsiSegError

from wsi_seg_training import cli
from wsi_seg_training.config import Stage1Config, load_stage1_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsi-seg")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_thesis_defaults():
    cfg = Stage1Config()
    assert (cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.poly_power) == (5, 16, 0.1, 0.9)
    assert (cfg.pscl.weight, cfg.pscl.threshold, cfg.pscl.temperature) == (0.1, 0.25, 0.1)
    # gating on, ε 0 read as a logit threshold: the headline (gated) rows of tables 5.16/5.17
    assert cfg.pscl.include_background and cfg.pscl.gating and cfg.pscl.gating_threshold == 0.8
    assert cfg.pscl.gating_epsilon == 0.0 and not cfg.pscl.gate_pscl
    assert (cfg.pscl.gating_fallback, cfg.pscl.epsilon_reading) == ("top", "logit")
    # the reference code's SGD: WSSS-Tissue's PolyOptimizer puts its weight decay into SGD's momentum slot
    assert (cfg.optim.momentum, cfg.optim.weight_decay) == (5e-4, 5e-4)
    assert cfg.model.preset == "swin-t"


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "epochs: 3\noptim:\n  lr: 0.05\n  weight_decay: 1e-4\npscl:\n  enabled: false\n"),
    (".toml", "epochs = 3\n[optim]\nlr = 0.05\nweight_decay = 1e-4\n[pscl]\nenabled = false\n"),
])
def test_config_files_and_flag_precedence(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    args = _parser().parse_args(["train", "--stage", "1", "--config", str(path), "--data", "d", "--out", "o",
                                 "--lr", "0.2", "--no-pscl-background", "--gating"])
    cfg = cli.train_config_from_args(args)
    assert cfg.epochs == 3 and cfg.optim.weight_decay == 1e-4
    assert cfg.optim.lr == 0.2  # the flag wins over the file
    assert not cfg.pscl.enabled and not cfg.pscl.include_background and cfg.pscl.gating
    assert cfg.data.path == "d" and cfg.out == "o"
    assert Stage1Config.from_dict(cfg.to_dict()) == cfg  # the saved config reloads


def test_config_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key\(s\) optim.lrr"):
        load_stage1_config(path)
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=f"{path}: epochs: expected int"):
        load_stage1_config(path)
    path.write_text("epochs: [\n")
    with pytest.raises(ConfigError, match=f"{path}: not a valid YAML"):
        load_stage1_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_stage1_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no dataset"):
        Stage1Config(out="o").validate()


def test_bad_data_folder_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "not a dataset"
    bad.mkdir()
    args = _parser().parse_args(["train", "--stage", "1", "--data", str(bad), "--out", str(tmp_path / "run"),
                                 "--preset", "tiny", "--device", "cpu"])
    with pytest.raises(DatasetError, match=str(bad)):
        args.func(args)
    for argv in (["evaluate", "--model", str(tmp_path), "--data", str(bad)],
                 ["pseudo-labels", "--model", str(tmp_path), "--data", str(bad), "--out", str(tmp_path / "pl")]):
        args = _parser().parse_args(argv)
        with pytest.raises(WsiSegError):
            args.func(args)


def test_stage_2_needs_a_checkpoint(tmp_path):
    args = _parser().parse_args(["train", "--stage", "2", "--data", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="no checkpoint given"):
        args.func(args)


def test_main_prints_one_line_and_exits_2(tmp_path, capsys):
    code = cli.main(["train", "--stage", "1", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"wsi-seg: error: {tmp_path / 'missing'}: dataset folder not found"]


EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("stage1_*.*"))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg = load_stage1_config(path, {"data.path": "d", "out": "o"}).validate()
    assert cfg.epochs >= 1


def test_commands_join_the_wsi_seg_cli_through_the_entry_point(tmp_path, capsys, monkeypatch):
    """What ``train = "wsi_seg_training.cli:register"`` in pyproject's ``wsi_seg.commands`` group does."""
    import wsi_seg.cli.main as wsi_main

    real = wsi_main.entry_points
    installed = {ep.value for ep in real(group="wsi_seg.commands")}
    fake = argparse.Namespace(name="train", value="wsi_seg_training.cli:register", load=lambda: cli.register)

    def entry_points(group):
        eps = list(real(group=group))
        return eps + [fake] if fake.value not in installed else eps

    monkeypatch.setattr(wsi_main, "entry_points", entry_points)
    parser = wsi_main.build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"train", "pseudo-labels", "evaluate", "segment"} <= set(choices)
    bad = tmp_path / "nowhere"
    assert wsi_main.main(["train", "--stage", "1", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"wsi-seg: error: {bad}: dataset folder not found"


def test_synth_dataset_command_writes_a_dataset_that_opens(tmp_path, capsys):
    from wsi_seg_training.datasets import open_dataset

    out = tmp_path / "synth"
    args = _parser().parse_args(["synth-dataset", str(out), "--n-train", "4", "--n-val", "1", "--n-test", "2"])
    assert args.func(args) == 0
    index = open_dataset(out)
    assert len(index.splits["train"]) == 4 and len(index.splits["test"]) == 2
    with pytest.raises(ConfigError, match="not empty"):
        args.func(args)


def test_a_run_folder_has_one_writer_at_a_time(tmp_path, capsys, checkpoints):
    from wsi_seg.lock import LOCK_NAME, RunLock
    from wsi_seg_training.synthetic_dataset import write_dataset

    data = write_dataset(tmp_path / "data", n_train=8, n_val=0, n_test=0, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    commands = {
        "train": ["train", "--stage", "1", "--data", str(data), "--out", str(run), "--preset", "tiny",
                  "--device", "cpu", "--no-progress"],
        "pretrain": ["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--device", "cpu",
                     "--no-progress"],
        "fit": ["fit", "--data", str(data), "--out", str(run), "--device", "cpu", "--no-progress"],
        "pseudo-labels": ["pseudo-labels", "--model", str(checkpoints[1]), "--data", str(data), "--out", str(run),
                          "--device", "cpu", "--no-progress"],
    }
    with RunLock(run / LOCK_NAME, what=run):  # another run writing into it
        for name, argv in commands.items():
            assert cli.main(argv) == 2, name
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"{run}: in use by pid" in err, (name, err)
    assert sorted(p.name for p in run.iterdir()) == []  # nothing written by the refused runs

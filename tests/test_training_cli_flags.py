"""Flags generated from the config dataclasses: one definition per setting."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from wsi_seg.errors import ConfigError

from wsi_seg_training import cli
from wsi_seg.cli.flags import add_config_flags, config_fields, config_overrides
from wsi_seg.settings import redefault, setting
from wsi_seg_training.config import PretrainConfig, RunConfig, Stage1Config, Stage2Config


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsi-seg")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return sub.choices[name]


@dataclass
class _Toy:
    depth: int = setting(3, flag="--depth", metavar="N", help="how deep")


@dataclass
class _ToyConfig(RunConfig):
    epochs: int = redefault(RunConfig, "epochs", 7)
    toy: _Toy = field(default_factory=_Toy)
    ratio: float | None = setting(None, flag="--ratio", metavar="R", help="a ratio", default_text="none")


def test_a_new_setting_is_a_flag_with_its_default_in_the_help():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, {"": _ToyConfig})
    text = parser.format_help()
    assert "--depth N" in text and "how deep (default: 3)" in text and "(default: 7)" in text
    assert "a ratio (default: none)" in text
    args = parser.parse_args(["--depth", "5", "--ratio", "0.5", "--no-progress"])
    assert config_overrides(args) == {"toy.depth": 5, "ratio": 0.5, "progress": False}
    assert config_overrides(parser.parse_args([])) == {}  # unset flags keep the config file's value


@pytest.mark.parametrize("command", ["train", "pretrain", "pseudo-labels", "evaluate", "synth-dataset",
                                     "benchmark-method", "check-dataset"])
def test_every_training_flag_has_help_with_its_default(command):
    parser = _subparser(command)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if not switch and not action.required and action.dest not in ("config", "data", "out", "pseudo_labels",
                                                                       "init", "json", "work"):
            assert "default" in action.help, f"{command} {action.option_strings[0]}: {action.help}"


def test_registering_the_training_commands_imports_no_torch():
    import subprocess
    import sys

    code = ("import argparse, sys; from wsi_seg_training import cli; "
            "cli.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_shared_flags_have_one_name_and_metavar_across_commands():
    seen: dict[str, set] = {}
    for command in ("train", "pretrain", "pseudo-labels", "evaluate"):
        for action in _subparser(command)._actions:
            for flag in action.option_strings:
                seen.setdefault(flag, set()).add(action.metavar)
    for flag in ("--workers", "--batch-size", "--device", "--gating", "--data", "--format"):
        assert len(seen[flag]) == 1, f"{flag}: metavars {seen[flag]}"


def test_train_flags_follow_the_stage_configs():
    stage1 = {f.metadata["flag"] for _, f, _ in config_fields(Stage1Config) if f.metadata.get("flag")}
    stage2 = {f.metadata["flag"] for _, f, _ in config_fields(Stage2Config) if f.metadata.get("flag")}
    parser = _subparser("train")
    flags = {s for a in parser._actions for s in a.option_strings}
    assert stage1 | stage2 <= flags
    titles = {g.title: {s for a in g._group_actions for s in a.option_strings} for g in parser._action_groups}
    assert titles["--stage 2 only"] == {s for s in stage2 - stage1}
    assert "--momentum" in titles["--stage 1 only"] and "--lr" not in titles["--stage 1 only"]
    args = parser.parse_args(["--stage", "2", "--loss", "nr", "--pscl-weight", "0.2", "--gating"])
    with pytest.raises(ConfigError, match=r"^--pscl-weight, --gating apply to --stage 1 only, not --stage 2$"):
        config_overrides(args, "2")


def test_gating_takes_an_optional_threshold_as_in_pseudo_labels():
    parser = _subparser("train")
    args = parser.parse_args(["--stage", "1", "--gating", "0.7"])
    assert config_overrides(args, "1") == {"pscl.gating": True, "pscl.gating_threshold": 0.7}
    args = parser.parse_args(["--stage", "1", "--gating"])
    assert config_overrides(args, "1") == {"pscl.gating": True}


def test_preset_and_backbone_exclude_each_other(capsys):
    for command in ("train", "pretrain"):
        with pytest.raises(SystemExit):
            _subparser(command).parse_args(["--stage", "1", "--preset", "tiny", "--backbone", "resnet18"]
                                           if command == "train" else ["--preset", "tiny", "--backbone", "resnet18"])
        assert "not allowed with argument" in capsys.readouterr().err


def test_result_settings_leave_out_what_does_not_change_a_run():
    a = Stage1Config(out="a", device="cpu", progress=False, val_every=0)
    b = dataclasses.replace(Stage1Config(out="b"), data=dataclasses.replace(Stage1Config().data, workers=7))
    assert a.result_settings() == b.result_settings()
    assert Stage1Config(epochs=2).result_settings() != Stage1Config().result_settings()
    assert "val_every" in Stage2Config().to_dict() and "val_every" not in PretrainConfig().to_dict()

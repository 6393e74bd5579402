"""Every ``wsi-seg train`` and ``pretrain`` flag reaches the run: each is set to a value other
than its default, and the run's ``config.yaml`` holds it; every setting that changes what a
run computes is also in what the run produced (the checkpoint's or the encoder weights'
provenance, ``settings``).

The flags are read from the parser, so a new flag without a value here fails the walk.
"""

from __future__ import annotations

import json

import pytest
import yaml

from wsi_seg.cli.flags import FLAGS_DEST, config_fields, config_overrides
from wsi_seg.cli.main import build_parser
from wsi_seg_training import cli
from wsi_seg_training.config import PretrainConfig, Stage1Config, Stage2Config

pytestmark = pytest.mark.slow

# flag → its value on the command line; each differs from the default (checked below)
STAGE1 = {
    "--format": "luad", "--workers": "0", "--background-seed": None, "--bkg-min-size": "150", "--mpp": "0.9",
    "--epochs": "1", "--batch-size": "4", "--seed": "3", "--device": "cpu", "--precision": "fp32",
    "--no-progress": None, "--val-every": "2", "--preset": "tiny", "--pretrained": "none", "--lr": "0.05",
    "--momentum": "0.8", "--weight-decay": "0.001", "--encoder-lr-scale": "0.5",
    "--no-pscl": None, "--pscl-weight": "0.2", "--pscl-threshold": "0.3", "--no-pscl-background": None,
    "--no-gating": None, "--gating-threshold": "0.6", "--gating-epsilon": "0.1", "--epsilon-reading": "floor",
    "--gating-fallback": "ignore", "--gate-pscl": None,
}
# flags that exclude one in STAGE1, or stand for the same setting: walked in a second run
STAGE1_SECOND = {"--backbone": "resnet18", "--freeze-encoder": None, "--gating": "0.7", "--pscl-background": None, "--no-background-seed": None}
STAGE2 = {
    "--format": "luad", "--workers": "0", "--epochs": "1", "--batch-size": "4", "--seed": "5", "--device": "cpu",
    "--precision": "fp32", "--no-progress": None, "--val-every": "3", "--lr": "0.0003", "--weight-decay": "0.02",
    "--encoder-lr-scale": "0.25", "--loss": "nr", "--gumbel-tau": "0.5",
}
# stage 2's flags that stage 1's walk proves (the same field of the same EncoderTraining class;
# --freeze-encoder excludes --encoder-lr-scale in one run)
STAGE2_BY_STAGE1 = {"--freeze-encoder"}
PRETRAIN = {
    "--format": "luad", "--workers": "0", "--patch-size": "64", "--epochs": "1", "--batch-size": "4", "--seed": "2",
    "--device": "cpu", "--precision": "fp32", "--no-progress": None, "--preset": "tiny", "--pretrained": "none",
    "--lr": "0.0002", "--weight-decay": "0.02", "--inter-weight": "0.25", "--temperature": "0.2",
}
GIVEN = {"--out", "--data", "--pseudo-labels", "--init"}  # paths every run is given


def _argv(flags: dict[str, str | None]) -> list[str]:
    return [part for flag, value in flags.items() for part in ([flag] if value is None else [flag, value])]


def _flags(command: str, label: str) -> set[str]:
    """Every option string of the config flags of ``command`` that apply to ``label``."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    table = sub.get_default(FLAGS_DEST)
    dests = {f.dest for f in table.flags if label in f.owners}
    return {s for a in sub._actions if a.dest in dests for s in a.option_strings}


def _run(argv: list[str]):
    """Run a command; its config overrides (dotted key → value) as the flags gave them."""
    args = build_parser().parse_args(argv)
    label = str(args.stage) if argv[0] == "train" else ""
    overrides = config_overrides(args, label)
    assert cli.main(argv) == 0
    return overrides


def _dotted(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _assert_arrived(overrides: dict, cls: type, config: dict, settings: dict, base: dict | None = None) -> None:
    """Each override is in config.yaml and (result settings) in ``settings``; ``base``: the
    dotted values a --config file set, which the flags must beat."""
    from wsi_seg.cli.flags import _default

    defaults = {k: f for k, f, _ in config_fields(cls)}
    for key, value in overrides.items():
        if key in ("out", "data.path", "data.pseudo_labels", "init"):
            continue
        before = (base or {}).get(key, _default(defaults[key]))
        assert value != before, f"{key}: the walk must set a value other than the one it would have"
        assert _dotted(config, key) == value, f"{key}: config.yaml holds {_dotted(config, key)!r}, flag gave {value!r}"
        if defaults[key].metadata.get("result", True):
            assert _dotted(settings, key) == value, f"{key}: not recorded in what the run produced"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from wsi_seg_training.synthetic_dataset import write_dataset

    return write_dataset(tmp_path_factory.mktemp("walk") / "data", n_train=8, n_val=2, n_test=2, seed=0)


def test_every_stage_1_and_2_flag_arrives_in_config_and_checkpoint(tmp_path, data):
    assert _flags("train", "1") == set(STAGE1) | set(STAGE1_SECOND) | {"--out", "--data"}, \
        "a stage-1 flag has no value in this walk"
    assert _flags("train", "2") == set(STAGE2) | STAGE2_BY_STAGE1 | {"--out", "--data", "--pseudo-labels", "--init"}, \
        "a stage-2 flag has no value in this walk"
    # the second run's switches turn on what the file turned off, so each must beat the file
    config_file = tmp_path / "off.yaml"
    config_file.write_text("pscl:\n  include_background: false\n  gating: false\ndata:\n  background_seed: true\n")
    base = {"pscl.include_background": False, "pscl.gating": False, "data.background_seed": True}
    second = STAGE1_SECOND | {"--epsilon-reading": "floor", "--epochs": "1", "--batch-size": "4", "--device": "cpu",
                              "--no-progress": None, "--pretrained": "none", "--config": str(config_file)}
    for flags, run, before in ((STAGE1, "s1", None), (second, "s1b", base)):
        out = tmp_path / run
        overrides = _run(["train", "--stage", "1", "--data", str(data), "--out", str(out), *_argv(flags)])
        config = yaml.safe_load((out / "config.yaml").read_text())
        provenance = json.loads((out / "checkpoint" / "config.json").read_text())["provenance"]["training"]
        _assert_arrived(overrides, Stage1Config, config, provenance["settings"], before)
    assert cli.main(["pseudo-labels", "--model", str(tmp_path / "s1"), "--data", str(data), "--out",
                     str(tmp_path / "pl"), "--device", "cpu", "--no-progress"]) == 0
    out = tmp_path / "s2"
    overrides = _run(["train", "--stage", "2", "--data", str(data), "--out", str(out), "--pseudo-labels",
                      str(tmp_path / "pl"), "--init", str(tmp_path / "s1"), *_argv(STAGE2)])
    config = yaml.safe_load((out / "config.yaml").read_text())
    provenance = json.loads((out / "checkpoint" / "config.json").read_text())["provenance"]["training"]
    _assert_arrived(overrides, Stage2Config, config, provenance["settings"])


def test_every_pretrain_flag_arrives_in_config_and_weights(tmp_path, data):
    from safetensors import safe_open

    from wsi_seg_training.pretrain import METADATA_KEY, WEIGHTS_NAME

    assert _flags("pretrain", "") == set(PRETRAIN) | {"--out", "--data", "--backbone"}, \
        "a pretrain flag has no value in this walk"
    out = tmp_path / "pre"
    overrides = _run(["pretrain", "--data", str(data), "--out", str(out), *_argv(PRETRAIN)])
    config = yaml.safe_load((out / "config.yaml").read_text())
    with safe_open(str(out / WEIGHTS_NAME), "pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    _assert_arrived(overrides, PretrainConfig, config, meta["provenance"]["settings"])


def test_every_fit_flag_arrives_in_its_steps_config_and_checkpoint(tmp_path, data):
    """``fit``'s own flags (over its recipe) reach stage 1's and stage 2's config.yaml and
    checkpoints: each is set against what the recipe says."""
    import argparse

    parser = build_parser()
    fit = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["fit"]
    flags = {s for a in fit._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert flags == {"--data", "--out", "--config", "--epochs", "--stage2-epochs", "--device", "--no-progress"}, \
        "a fit flag has no check in this walk"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("device: auto\nseed: 0\nworkers: 0\npretrain: null\n"
                      "stage1: {epochs: 1, batch_size: 4, model: {preset: tiny, pretrained: none}, val_every: 0}\n"
                      "stage2: {epochs: 1, batch_size: 4, val_every: 0}\nevaluate: {split: test, batch_size: 4}\n")
    out = tmp_path / "fit"
    assert cli.main(["fit", "--data", str(data), "--out", str(out), "--config", str(recipe), "--epochs", "2",
                     "--stage2-epochs", "2", "--device", "cpu", "--no-progress"]) == 0
    for step in ("stage1", "stage2"):
        config = yaml.safe_load((out / step / "config.yaml").read_text())
        assert (config["epochs"], config["device"], config["progress"]) == (2, "cpu", False), step
        settings = json.loads((out / step / "checkpoint" / "config.json").read_text())["provenance"]["training"]
        assert settings["settings"]["epochs"] == 2 and settings["epochs"] == 2, step

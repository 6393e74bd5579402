"""The CLI's help: fast to start (nothing heavy imported) and every flag says its default."""

import argparse
import json
import subprocess
import sys

import pytest

from wsi_seg.cli.main import build_parser

HEAVY = ("torch", "numpy", "skimage", "zarr", "openslide", "napari", "transformers", "timm", "dask")


def test_building_the_parser_imports_nothing_heavy():
    code = ("import json, sys; from wsi_seg.cli.main import build_parser; build_parser(); "
            f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices.items())


# commands of the engine and the viewer: every flag that takes a value says its default, even
# when it is "none"; the training commands (flags generated from their configs) say it
# wherever there is one
ENGINE_COMMANDS = {"segment", "info", "demo-slide", "demo", "export", "report", "summarize", "view"}


def _required(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    groups = parser._mutually_exclusive_groups
    return action.required or any(g.required and action in g._group_actions for g in groups)


@pytest.mark.parametrize("name, parser", _subcommands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_flag_has_help_with_its_default(name, parser):
    missing = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        takes_value = action.nargs != 0  # switches (store_true, --no-…) are off unless given
        if name in ENGINE_COMMANDS:
            needs_default = takes_value and not _required(parser, action)
        else:
            needs_default = takes_value and action.default is not None
        text = action.help or ""
        if not text or (needs_default and "default" not in text):
            missing.append(action.option_strings[-1])
    assert not missing, f"wsi-seg {name}: flags without help or default: {missing}"

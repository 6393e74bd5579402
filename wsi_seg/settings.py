"""One declaration per setting: a dataclass field that also describes its command-line flag.

The engine's options (:class:`wsi_seg.inference.options.SegmentOptions`) and training's
configs declare their fields with :func:`setting`; :mod:`wsi_seg.cli.flags` makes the
argparse flags from them, so a flag, its help, its default and the field it sets are
written once. Kept free of torch and argparse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    default_text: str | None = None,
    negatable: bool = False,
    exclusive: str | None = None,
    result: bool = True,
    required: str | None = None,
    value_of: str | None = None,
    parse: Callable[[str], Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that also describes its command-line flag.

    ``flag`` (e.g. ``--lr``) makes the commands that take this dataclass accept it; a bool
    field's flag sets the value it names (``--gating`` True, ``--no-pscl`` False) or,
    ``negatable``, both (``--x/--no-x``). ``help`` ends in the default, or ``default_text``
    where the default needs words. ``exclusive`` names a group of flags that exclude each
    other. ``result`` False: the setting does not change what a run computes (paths,
    devices, workers), so a resumed run may differ in it. ``required``: the message when a
    run is started without it. ``value_of``: a bool flag takes an optional value for this
    sibling field (``--gating [TAU]`` turns gating on and, given TAU, sets
    ``gating_threshold``). ``parse``: the argparse type where the annotation's is not enough
    (a pixel count written 4e10).
    """
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "default_text": default_text,
            "negatable": negatable, "exclusive": exclusive, "result": result, "required": required,
            "value_of": value_of, "parse": parse}
    return field(default=default, default_factory=default_factory, metadata=meta)


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``cls`` with another default, its flag and help kept."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def with_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """The dataclass ``obj`` with its dotted keys (``tissue.min_tissue_fraction``) replaced."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        head, _, rest = dotted.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = with_overrides(getattr(obj, head), sub)
    return dataclasses.replace(obj, **direct)

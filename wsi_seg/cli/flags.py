"""Command-line flags generated from the config dataclasses' field metadata.

A dataclass field made with :func:`wsi_seg.settings.setting` and a ``flag`` becomes one
argparse option: its type from the annotation, its help ending in the default, its
choices and metavar from the metadata. :func:`add_config_flags` adds the flags of one or
more config classes to a parser (``wsi-seg train`` takes those of stage 1 and stage 2,
each flag once; ``wsi-seg segment`` those of :class:`SegmentOptions`); :func:`config_overrides`
turns the flags given into dotted keys, which training applies over its config file and
``segment`` over the options' defaults (:func:`wsi_seg.settings.with_overrides`), and
refuses the flags of another config class than the one run. Every generated flag defaults
to None, so a flag left out keeps the file's or the dataclass' value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from wsi_seg.errors import ConfigError

FLAGS_DEST = "config_flags"  # where the parser keeps the FlagTable of its command


@dataclass(frozen=True)
class Flag:
    """One config field's option: ``--flag`` → dotted ``key`` of the config classes named in ``owners``."""

    flag: str
    dest: str
    key: str
    owners: tuple[str, ...]
    value_key: str | None = None  # ``--gating [TAU]``: the key TAU sets


@dataclass(frozen=True)
class FlagTable:
    """The generated flags of a command and the config class each label stands for."""

    flags: tuple[Flag, ...]
    labels: tuple[str, ...]
    choice: str = ""  # the option whose value is the label (``--stage``), if any

    def name(self, label: str) -> str:
        """How help and errors name a config class: ``--stage 1``."""
        return f"{self.choice} {label}".strip()


def config_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, annotation) of every scalar field of ``cls``, nested ones included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from config_fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp


def _scalar_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def _default_text(f: dataclasses.Field) -> str | None:
    """The default as the help states it; None for required settings and switches (a
    flag that sets a bool: its default is not to)."""
    switch = isinstance(_default(f), bool) and not (f.metadata.get("negatable") or f.metadata.get("value_of"))
    if f.metadata.get("required") or switch:
        return None
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = _default(f)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        raise TypeError(f"config field {f.name}: default None needs default_text for its help")
    return format(value, "g") if isinstance(value, float) else str(value)


def _help(by_name: dict[str, dataclasses.Field]) -> str:
    """Help of a flag that one or several config classes (by name) share, with each default."""
    helps = {f.metadata["help"] for f in by_name.values()}
    defaults = {name: _default_text(f) for name, f in by_name.items()}
    if len(helps) == 1:
        text = helps.pop()
        if len(set(defaults.values())) == 1:
            default = next(iter(defaults.values()))
            return text if default is None else f"{text} (default: {default})"
        return f"{text} (default: " + ", ".join(f"{d} with {name}" for name, d in defaults.items()) + ")"
    return "; ".join(f"{name}: {f.metadata['help']}" + (f" (default: {defaults[name]})" if defaults[name] else "")
                     for name, f in by_name.items())


def _add(parser: argparse._ActionsContainer, f: dataclasses.Field, tp: Any, dest: str, help: str,
         value_type: Any = None) -> None:
    meta = f.metadata
    flag = meta["flag"]
    kind = _scalar_type(tp)
    if kind is bool and value_type is not None:  # --gating [TAU]
        parser.add_argument(flag, dest=dest, nargs="?", const=True, type=value_type, default=None,
                            metavar=meta.get("metavar"), help=help)
        if meta.get("negatable"):  # --no-gating
            parser.add_argument("--no-" + flag[2:], dest=dest, action="store_const", const=False,
                                help=argparse.SUPPRESS)
        return
    if kind is bool:
        if meta.get("negatable"):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:  # --gating sets True, --no-pscl sets False
            parser.add_argument(flag, dest=dest, action="store_const", const=not flag.startswith("--no-"),
                                default=None, help=help)
        return
    kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help, "type": meta.get("parse") or kind}
    if meta.get("choices"):
        kwargs["choices"] = list(meta["choices"])
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    parser.add_argument(flag, **kwargs)


def _fields_by_flag(configs: Mapping[str, type]) -> dict[str, dict[str, tuple[str, dataclasses.Field, Any]]]:
    """flag → {label: (dotted key, field, annotation)} of the config classes that have it."""
    fields: dict[str, dict[str, tuple[str, dataclasses.Field, Any]]] = {}
    for label, cls in configs.items():
        for key, f, tp in config_fields(cls):
            if f.metadata.get("flag"):
                seen = fields.setdefault(f.metadata["flag"], {})
                for other_key, _, _ in seen.values():
                    if other_key != key:
                        raise TypeError(f"{f.metadata['flag']} stands for {other_key} and {key}")
                seen[label] = (key, f, tp)
    return fields


def add_config_flags(parser: argparse.ArgumentParser, configs: Mapping[str, type], choice: str = "") -> FlagTable:
    """Add the flags of the config classes ``configs`` (label → class) to ``parser``.

    ``choice`` is the option that picks a class by its label (``--stage`` for
    ``{"1": Stage1Config, "2": Stage2Config}``). A flag of all classes is added once, its
    help giving each class' default; a flag of some classes only goes into a group titled
    after them (``--stage 1 only``).
    """
    names = FlagTable(flags=(), labels=tuple(configs), choice=choice)
    types_of = {key: tp for cls in configs.values() for key, _, tp in config_fields(cls)}
    groups: dict[Any, argparse._ActionsContainer] = {}
    table = []
    for flag, by_label in _fields_by_flag(configs).items():
        key, f, tp = next(iter(by_label.values()))
        owners = tuple(by_label)
        where = _group(parser, groups, owners if owners != names.labels else (), names)
        if f.metadata.get("exclusive"):
            exclusive = (owners, f.metadata["exclusive"])
            if exclusive not in groups:
                groups[exclusive] = where.add_mutually_exclusive_group()
            where = groups[exclusive]
        dest = flag.lstrip("-").replace("-", "_")
        value_of = f.metadata.get("value_of")
        value_key = f"{key.rpartition('.')[0]}.{value_of}".lstrip(".") if value_of else None
        _add(where, f, tp, dest, _help({names.name(label): by_label[label][1] for label in owners}),
             _scalar_type(types_of[value_key]) if value_key else None)
        table.append(Flag(flag=flag, dest=dest, key=key, owners=owners, value_key=value_key))
    result = dataclasses.replace(names, flags=tuple(table))
    parser.set_defaults(**{FLAGS_DEST: result})
    return result


def _group(parser: argparse.ArgumentParser, groups: dict[Any, argparse._ActionsContainer], owners: tuple[str, ...],
           names: FlagTable) -> argparse._ActionsContainer:
    """Where the flags of ``owners`` go: the parser (all classes: no owners) or a group
    titled ``--stage 1 only``."""
    if not owners:
        return parser
    if owners not in groups:
        groups[owners] = parser.add_argument_group(" and ".join(names.name(o) for o in owners) + " only")
    return groups[owners]


def config_overrides(args: argparse.Namespace, label: str = "") -> dict[str, Any]:
    """Dotted config keys of the flags given, for the config class ``label`` stands for.

    ConfigError when flags of other classes only were given ("--loss applies to
    --stage 2 only, not --stage 1").
    """
    table: FlagTable = getattr(args, FLAGS_DEST)
    given = [f for f in table.flags if getattr(args, f.dest, None) is not None]
    foreign = [f for f in given if label not in f.owners]
    if foreign:
        owners = " and ".join(table.name(o) for o in foreign[0].owners)
        verb = "applies" if len(foreign) == 1 else "apply"
        raise ConfigError(f"{', '.join(f.flag for f in foreign)} {verb} to {owners} only, not {table.name(label)}")
    overrides: dict[str, Any] = {}
    for f in given:
        value = getattr(args, f.dest)
        if f.value_key is not None and value is not True and value is not False:
            overrides[f.value_key] = value
            value = True
        overrides[f.key] = value
    return overrides

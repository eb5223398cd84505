"""Command-line flags generated from the config dataclasses (``mobilenets.config``): one flag per field, its help,
choices and default read from the field, so a default is written once (in the dataclass) and shown in ``--help``.

Flags only override: a flag not given leaves the field to the recipe, the stored run or the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from mobilenets.config import field_types, option_of


def flag_of(f: dataclasses.Field) -> str:
    o = option_of(f)
    if o.flag:
        return o.flag
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def add_fields(
    parser: Any, cls: type, prefix: str | None, only: set[str] | None = None, nouns: dict[str, str] | None = None
) -> None:
    """One flag per field of ``cls`` (those named in ``only`` when given); dest ``prefix.field`` (or the field's
    name without a prefix)."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        o = option_of(f)
        if only is not None and f.name not in only:
            continue
        kind = types[f.name]
        dest = f"{prefix}.{f.name}" if prefix else f.name
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        shown = f.default if f.default is not dataclasses.MISSING else None
        help_ = o.help
        if nouns and 1 < len(o.tasks) < len(nouns):  # a flag several (not all) tasks take says which
            help_ = f"{help_} ({', '.join(nouns[t] for t in o.tasks)})"
        args = typing.get_args(kind)
        inner = [a for a in args if a is not type(None)] if type(None) in args else None
        if kind is bool:
            kw["action"] = "store_false" if f.default is True else "store_true"
        elif inner == [bool]:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            base = inner[0] if inner and len(inner) == 1 else kind
            if typing.get_origin(base) is tuple:
                items = typing.get_args(base)
                kw["nargs"] = "+" if len(items) == 2 and items[1] is Ellipsis else len(items)
                kw["type"] = items[0]
            else:
                kw["type"] = base
            if o.choices:
                kw["choices"] = o.choices
            if o.metavar or not o.choices:
                kw["metavar"] = o.metavar or f.name.upper()
            if shown not in (None, "") and "default" not in help_:
                shown_text = " ".join(map(str, shown)) if isinstance(shown, tuple) else shown
                help_ = f"{help_} (default {shown_text})" if help_ else f"default {shown_text}"
        parser.add_argument(flag_of(f), help=help_ or None, **kw)


def given(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``{section: {field: value}}`` of the ``section.field`` flags given on the command line."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        section, dot, name = key.partition(".")
        if dot:
            out.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    return out


def flat_given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given as (unprefixed) flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}


def add_task_groups(parser: argparse.ArgumentParser, cls: type, nouns: dict[str, str]) -> None:
    """The fields every task shares, then a group per task with the fields only some tasks take (each flag once,
    in the group of the first task it applies to; its help says which)."""
    fields = dataclasses.fields(cls)
    every = set(nouns)
    add_fields(parser, cls, None, {f.name for f in fields if set(option_of(f).tasks) >= every})
    done: set[str] = set()
    for task, noun in nouns.items():
        own = {f.name for f in fields if task in option_of(f).tasks and not set(option_of(f).tasks) >= every}
        own -= done
        if own:
            add_fields(parser.add_argument_group(f"{noun}"), cls, None, own, nouns)
            done |= own


def not_for(cls: type, values: dict[str, Any], task: str) -> list[str]:
    """The flags among ``values`` that do not apply to ``task``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [flag_of(fields[k]) for k in values if task not in option_of(fields[k]).tasks]


def require(parser: argparse.ArgumentParser, dest: str) -> None:
    """Make the generated flag for ``dest`` required (argparse names it when missing)."""
    for action in parser._actions:
        if action.dest == dest:
            action.required = True

"""How a config field is declared and checked: ``opt`` (a field with its command-line ``Option``), the bound
checks every section's ``__post_init__`` calls (one line naming the value), and ``coerce`` (a TOML, JSON or
``--set`` value as the field's type)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from mobilenets.errors import ConfigError

TASKS = ("classify", "detect", "segment")
MAX_RESOLUTION = 4096
MIN_RESOLUTION = 32


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line: ``flag`` (default ``--field-name``; a ``True`` boolean gets
    ``--no-field-name``), ``help``, ``choices``, ``metavar``; ``legacy``: its key in a pre-config checkpoint's
    namespace when that differs (``invert``: that key held the negation, e.g. ``no_progress``)."""

    help: str = ""
    flag: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | tuple[str, ...] | None = None
    legacy: str | None = None
    invert: bool = False
    tasks: tuple[str, ...] = TASKS  # eval / predict: the tasks a field applies to


def opt(default: Any, help: str = "", **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(help=help, **kw)})


def option_of(f: dataclasses.Field) -> Option:
    return f.metadata.get("option", Option())


# -- checks -------------------------------------------------------------------------------------------------
def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


def check_range(name: str, value: float | None, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:  # fmt: skip
    """``value`` finite and within [low, high] (open ends where asked); None passes (the default applies)."""
    if value is None:
        return
    _finite(name, value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


def check_int(name: str, value: int | None, low: int, high: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


def check_resolution(name: str, value: int, multiple: int = 1) -> None:
    check_int(name, value, MIN_RESOLUTION, MAX_RESOLUTION)
    if value % multiple:
        raise ConfigError(f"{name} must be a multiple of {multiple}, got {value}")


def check_pair(name: str, value: tuple[float, float] | None, low: float, high: float) -> None:
    if value is None:
        return
    if len(value) != 2:
        raise ConfigError(f"{name} takes two numbers (MIN MAX), got {value!r}")
    for v in value:
        check_range(name, v, low, high, low_open=True)
    if value[0] > value[1]:
        raise ConfigError(f"{name}: MIN {value[0]} is above MAX {value[1]}")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(kind: Any, value: Any, name: str) -> Any:
    """``value`` (from TOML, JSON or a ``--set`` string) as the field type ``kind``; a one-line error otherwise."""
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        kind = inner[0] if len(inner) == 1 else inner
    origin = typing.get_origin(kind)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(typing.get_args(kind)):
            raise ConfigError(f"{name} takes {len(typing.get_args(kind))} values, got {value!r}")
        return tuple(coerce(t, v, name) for t, v in zip(typing.get_args(kind), items, strict=True))
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, float) else int(value) if math.isfinite(value) else value
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    return value

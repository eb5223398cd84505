"""The command line: parses arguments and calls library functions. Nothing here that a test cannot import."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence

from mobilenets.errors import MobilenetsError

# Each task adds its subcommands from its own module: ``add_parsers(subparsers)`` registers them and sets
# ``func`` on the parsed namespace. The list is explicit so there is one place that says what the CLI has.
_COMMAND_MODULES = (
    "mobilenets.commands.core",
    "mobilenets.commands.classify",
    "mobilenets.commands.detect",
    "mobilenets.commands.segment",
    "mobilenets.commands.deploy",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention), no usage dump
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mobilenets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue
            raise
        module.add_parsers(sub)
    return parser


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return func(args) or 0
    except MobilenetsError as e:
        return _fail(str(e))
    except FileNotFoundError as e:
        return _fail(f"file not found: {e.filename or e}")
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    raise SystemExit(main())

"""mobilenets: MobileNetV1/V2/V3 classifiers, SSDLite detectors and DeepLabv3 / LR-ASPP segmenters — train,
evaluate, predict, export and measure.

Tasks: classify (the default), detect, segment. `mobilenets train --task TASK --help` lists a task's training
options; `mobilenets eval --help` and `mobilenets predict --help` group theirs by task (the task itself is read
from the checkpoint). Recipes: `mobilenets train --recipe recipes/fmnist_v2.toml [--set optim.lr=1e-3]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence

from mobilenets.errors import MobilenetsError

# Each command module adds its verbs: ``add_parsers(subparsers)`` registers them and sets ``func`` on the parsed
# namespace (``takes_rest``: the verb parses the rest of the line itself, as ``train`` does in two stages). The
# list is explicit so there is one place that says what the CLI has.
_COMMAND_MODULES = (
    "mobilenets.commands.train",
    "mobilenets.commands.eval",
    "mobilenets.commands.predict",
    "mobilenets.commands.ablate",
    "mobilenets.commands.profile",
    "mobilenets.commands.published",
    "mobilenets.commands.memory",
    "mobilenets.commands.convert",
    "mobilenets.commands.data",
    "mobilenets.commands.export",
    "mobilenets.commands.bench",
)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention), no usage dump
        raise SystemExit(_fail(f"{self.prog}: {message}"))


_Parser = Parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _one_line(e: Exception) -> str:
    """The error's own message. An error raised in a DataLoader worker comes back re-raised with the worker's
    traceback as its text ("Caught InputError in DataLoader worker process 0. Original Traceback ..."); its last
    line is the original ``module.Class: message``."""
    text = str(e).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(": ", 1)[1] if f"{type(e).__name__}: " in last else last


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mobilenets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def _warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"warning: {message}", file=sys.stderr)  # the library warns (skipped inputs); the command shows one line


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    func: Callable[..., int | None] = args.func
    warnings.showwarning = _warning
    try:
        return (func(args, rest) if getattr(args, "takes_rest", False) else func(args)) or 0
    except MobilenetsError as e:
        return _fail(_one_line(e))
    except FileNotFoundError as e:
        return _fail(f"file not found: {e.filename or e}")
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    raise SystemExit(main())

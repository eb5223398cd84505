"""`mobilenets train`: flags → a ``TrainConfig`` → the one engine.

The flags depend on the task, so the command line is parsed in two explicit stages: the first reads only
``--task``, ``--recipe`` and ``--resume`` (the task is the flag's, else the recipe's, else the resumed run's, else
``classify``); the second parses everything with that task's parser, which lists only what applies to it
(``mobilenets train --task detect --help``).

Where a value comes from, lowest first: the dataclass default, the recipe file, the flags, ``--set``. With
``--resume`` the run's stored config is the base and only this invocation's runtime options may change
(``mobilenets.config.RESUMABLE``, plus ``--epochs`` to extend a run); any other option that differs from the
stored one is refused with a message naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from mobilenets.cli import Parser
from mobilenets.commands.options import add_fields, given
from mobilenets.config import (
    RESUMABLE,
    SECTIONS,
    TASK_OPTIONS,
    TASKS,
    TrainConfig,
    changed_on_resume,
    load_recipe,
    merge,
    option_of,
    parse_set,
    stored_config,
)
from mobilenets.engine.task import TASK_MODULES
from mobilenets.errors import ConfigError

DEFAULT_TASK = "classify"
TASK_NOUN = {"classify": "classifier", "detect": "detector (SSDLite)", "segment": "segmenter (DeepLabv3, LR-ASPP)"}


def task_module(task: str) -> ModuleType:
    """The module implementing ``task``, imported when asked for."""
    if task not in TASK_MODULES:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    # Both parse their own arguments (two stages, below); the top-level parser hands them everything after the verb.
    p = sub.add_parser(
        "train", add_help=False, help="train a classifier, detector or segmenter (one engine, DDP via torchrun); "
        "see `mobilenets train --task TASK --help`",
    )  # fmt: skip
    p.set_defaults(func=cmd_train, takes_rest=True)


def _first_stage(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--recipe")
    p.add_argument("--resume")
    known, _ = p.parse_known_args(argv)
    return known


def choose_task(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """(task, recipe dict) of a train command line (stage one)."""
    from mobilenets.engine.checkpoints import task_of

    first = _first_stage(argv)
    recipe = load_recipe(first.recipe) if first.recipe else {}
    task = first.task or recipe.get("task") or (task_of(first.resume) if first.resume else None) or DEFAULT_TASK
    if first.task and recipe.get("task", first.task) != first.task:
        raise ConfigError(f"--task {first.task} but recipe {first.recipe} is for task {recipe['task']!r}")
    return task, recipe


def train_parser(task: str, prog: str = "mobilenets train", ablate: bool = False) -> argparse.ArgumentParser:
    """The stage-two parser: the common sections and ``task``'s own."""
    p = Parser(
        prog=prog, allow_abbrev=False,
        description=f"Train a {TASK_NOUN[task]}. Other tasks: {prog} --task {{{','.join(TASKS)}}} --help.",
    )  # fmt: skip
    g = p.add_argument_group("task and recipe")
    g.add_argument("--task", choices=TASKS, default=task, help=f"what to train (default {DEFAULT_TASK})")
    g.add_argument("--recipe", help="a recipe file (recipes/*.toml); the flags below override it")
    g.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help=f"set any config field, after the recipe and flags (sections: {', '.join([*SECTIONS, task])})",
    )  # fmt: skip
    if ablate:
        g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        g.add_argument(
            "--variants", nargs="+", help="subset of: design relu6_projection expansion_shortcut no_shortcut"
        )
    for name, cls in SECTIONS.items():  # only the fields this task's training reads
        fields = {f.name for f in dataclasses.fields(cls) if task in option_of(f).tasks}
        add_fields(p.add_argument_group(name), cls, name, fields)
    add_fields(p.add_argument_group(task), TASK_OPTIONS[task], task)
    return p


def config_from(args: argparse.Namespace, task: str, recipe: dict[str, Any]) -> TrainConfig:
    """The run's config: recipe < flags < --set; on --resume, the stored config with the allowed changes."""
    sections = {k: v for k, v in recipe.items() if isinstance(v, dict)}
    asked = merge(merge(sections, given(args)), parse_set(args.set, task))
    resume = asked.get("run", {}).get("resume")
    if resume is None:
        return TrainConfig.from_dict({"task": task, **asked}, "command line")
    return resume_config(resume, asked)


def resume_config(resume: str, asked: dict[str, dict[str, Any]]) -> TrainConfig:
    from mobilenets.engine.checkpoints import find_last, read_info, read_train_meta

    weights, _ = find_last(resume)
    meta = read_train_meta(weights)
    stored = stored_config(meta, meta.get("task", DEFAULT_TASK), read_info(weights)[0], str(weights))
    changed = changed_on_resume(stored, asked)
    if changed:
        old, new = stored.flat(), stored.replace(asked).flat()
        what = ", ".join(f"{k} {new[k]!r} (stored {old[k]!r})" for k in changed)
        allowed = ", ".join(k.split(".")[1] for k in RESUMABLE)
        raise ConfigError(
            f"--resume continues {resume} with its stored options; {what} cannot change on resume (only {allowed} "
            f"may). To train with other options start a new run: --init {resume} --out NEW_FOLDER"
        )
    folder = Path(resume)
    # the run continues where its checkpoint is (a moved or copied run folder too), unless --out says otherwise
    out = asked.get("run", {}).get("out") or str(folder if folder.is_dir() else folder.parent)
    return stored.replace(merge(asked, {"run": {"out": out, "resume": resume}}))


def parse(argv: list[str], ablate: bool = False) -> Any:
    task, recipe = choose_task(argv)
    parser = train_parser(task, "mobilenets ablate" if ablate else "mobilenets train", ablate)
    args = parser.parse_args(argv)
    return args, config_from(args, task, recipe)


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from mobilenets.engine.trainer import train

    _, config = parse(rest)
    summary = train(task_module(config.task).build_task, config)
    if summary.get("rank", 0) == 0:
        print(f"best {summary['primary_metric']} {summary['best']:.4f}; run folder {summary['out']}")
    return 0

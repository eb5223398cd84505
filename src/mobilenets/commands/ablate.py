"""`mobilenets ablate`: the V2 paper's Figure 6 on real data — linear vs ReLU6 after the projection, shortcut
placement — over several seeds (``mobilenets.classification.ablate``). Takes ``train``'s flags (classification)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.commands.train import parse, task_module
from mobilenets.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", add_help=False, help="V2 Figure 6 on real data: linear vs ReLU6, shortcut placement, k seeds"
    )
    p.set_defaults(func=cmd_ablate, takes_rest=True)


def cmd_ablate(args: argparse.Namespace, rest: list[str]) -> int:
    from mobilenets.classification.ablate import VARIANTS, markdown_table, run_ablation
    from mobilenets.engine.trainer import train

    parsed, config = parse(rest, ablate=True)
    if config.task != "classify":
        raise ConfigError("ablate trains classifiers; --task must be classify")
    if config.run.out is None:
        raise ConfigError("--out is required (one run folder per variant and seed goes under it)")
    variants = parsed.variants or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    build = task_module("classify").build_task
    summary = run_ablation(train, build, config, variants, parsed.seeds, Path(config.run.out))
    print(markdown_table(summary), end="")
    print(f"written: {config.run.out}/ablation.json, ablation.md, ablation.png")
    return 0

"""`mobilenets train`, `eval` and `predict` for every task: common flags here, task flags from the task module.

The task's own flags are added when the subcommand parses: ``train`` reads ``--task`` (or the task of the run
named by ``--resume``); ``eval`` / ``predict`` read the task stored in ``--checkpoint``. Then the task module's
``add_arguments(parser, command)`` runs and the command line is parsed for real (contract:
``mobilenets.engine.task``).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from mobilenets.engine.task import TASK_MODULES
from mobilenets.errors import ConfigError

DEFAULT_TASK = "classify"


def task_module(task: str) -> ModuleType:
    """Import the module implementing ``task`` (lazily: detection and segmentation only when asked for)."""
    if task not in TASK_MODULES:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(TASK_MODULES)}")
    try:
        return importlib.import_module(TASK_MODULES[task])
    except ModuleNotFoundError as e:
        if e.name and TASK_MODULES[task].startswith(e.name):
            raise ConfigError(f"task {task!r} is not available: {TASK_MODULES[task]} is not installed") from None
        raise


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def peek_task(command: str, argv: Sequence[str]) -> str:
    """The task a command line is about, before it is parsed."""
    from mobilenets.engine.checkpoints import task_of

    if command == "train":
        task = _flag_value(argv, "--task")
        resume = _flag_value(argv, "--resume")
        if task is None and resume is not None:
            task = task_of(resume)
        return task or DEFAULT_TASK
    checkpoint = _flag_value(argv, "--checkpoint")
    return (task_of(checkpoint) if checkpoint else None) or DEFAULT_TASK


class _TaskFlagsMixin:
    """Adds the task module's flags to a subcommand's parser just before it parses."""

    command: str
    _task_flags_added: bool

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if not self._task_flags_added:
            self._task_flags_added = True
            task = peek_task(self.command, list(args or []))
            try:
                module = task_module(task)
            except ConfigError as e:
                self.error(str(e))  # type: ignore[attr-defined]
            module.add_arguments(self, self.command)
            if self.command == "train":
                # `train --resume RUN` without --task trains RUN's own task (peeked from its checkpoint).
                self.set_defaults(task=task)  # type: ignore[attr-defined]
        return super().parse_known_args(args, namespace)  # type: ignore[misc]


def _task_parser(sub: argparse._SubParsersAction, command: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(command, **kwargs)
    # One subclass per parser class, so the one-line error handling of the CLI's parser is kept.
    parser.__class__ = type(f"Task{type(parser).__name__}", (_TaskFlagsMixin, type(parser)), {})
    parser.command = command  # type: ignore[attr-defined]
    parser._task_flags_added = False  # type: ignore[attr-defined]
    return parser


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The common ``train`` flags (``mobilenets.engine.task.COMMON_TRAIN_FLAGS``)."""
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASK_MODULES))
    m = p.add_argument_group("model")
    m.add_argument("--model", default="mobilenet_v2", help="a registered model (mobilenets models)")
    m.add_argument("--width", type=float, help="width multiplier α")
    m.add_argument("--resolution", type=int, default=224, help="input side in pixels (a multiple of 32)")
    m.add_argument("--num-classes", type=int, help="checked against the data's classes")
    m.add_argument("--output-stride", type=int, help="8, 16 or 32")
    m.add_argument("--dropout", type=float, help="dropout before the classifier")
    m.add_argument("--init", help="start from these weights (run folder or .safetensors); new classifier if needed")
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default="embedded",
        help="'embedded', 'scene-objects', 'scene-clutter', a Fashion-MNIST IDX folder or an image folder",
    )
    d.add_argument("--val-data", help="a separate validation folder")
    d.add_argument("--val-split", type=float, help="hold out this fraction of the training data (stratified)")
    d.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (decoding happens there)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--preset", default="modern", choices=("paper", "modern"), help="paper: V2 §6.1; modern: SGD+cosine")
    o.add_argument("--optimizer", choices=("rmsproptf", "sgd", "adamw"), help="override the preset's optimiser")
    o.add_argument("--epochs", type=int, help="default 10 (on --resume: the stored value)")
    o.add_argument("--batch-size", type=int, default=96, help="per process (the paper's 96)")
    o.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    o.add_argument("--lr", type=float, help="peak learning rate (preset default)")
    o.add_argument("--weight-decay", type=float, help="preset default; never on depthwise, BN or biases")
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--label-smoothing", type=float)
    o.add_argument("--ema-decay", type=float, help="EMA of the weights; 0 disables")
    r = p.add_argument_group("run")
    r.add_argument("--out", help="run folder: checkpoints, metrics.csv, tb/, curves.png, best.safetensors")
    r.add_argument("--resume", help="continue the run in this folder exactly where its last checkpoint left it")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, help="torch CPU threads")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    r.add_argument("--channels-last", action="store_true")
    r.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    r.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    r.add_argument("--max-steps", type=int, default=0, help="stop after N optimiser steps (smoke tests)")
    r.add_argument("--log-every", type=int, default=50, help="TensorBoard step scalars every N steps")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = _task_parser(sub, "train", help="train a classifier, detector or segmenter (one engine, DDP via torchrun)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = _task_parser(sub, "ablate", help="V2 Figure 6 on real data: linear vs ReLU6, shortcut placement, k seeds")
    p.command = "train"  # type: ignore[attr-defined]  # the task's train flags apply
    add_train_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", help="subset of: design relu6_projection expansion_shortcut no_shortcut")
    p.set_defaults(func=cmd_ablate)

    p = _task_parser(sub, "eval", help="evaluate a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder, last.json or .safetensors")
    p.add_argument("--data", help="evaluation data (default: the run's validation data)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="folder for plots (default: beside the checkpoint)")
    p.set_defaults(func=cmd_eval)

    p = _task_parser(sub, "predict", help="run a trained checkpoint on images")
    p.add_argument("--checkpoint", required=True, help="run folder, last.json or .safetensors")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    from mobilenets.engine.trainer import train

    summary = train(task_module(args.task).build_task, args)
    if summary.get("rank", 0) == 0:
        print(f"best {summary['primary_metric']} {summary['best']:.4f}; run folder {summary['out']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mobilenets.engine.checkpoints import task_of

    return task_module(task_of(args.checkpoint) or DEFAULT_TASK).evaluate_main(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from mobilenets.engine.checkpoints import task_of

    return task_module(task_of(args.checkpoint) or DEFAULT_TASK).predict_main(args)


def cmd_ablate(args: argparse.Namespace) -> int:
    from mobilenets.classification.ablate import VARIANTS, markdown_table, run_ablation
    from mobilenets.engine.trainer import train

    if args.task != "classify":
        raise ConfigError("ablate trains classifiers; --task must be classify")
    if args.out is None:
        raise ConfigError("--out is required (one run folder per variant and seed goes under it)")
    variants = args.variants or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    from pathlib import Path

    summary = run_ablation(train, task_module("classify").build_task, args, variants, args.seeds, Path(args.out))
    print(markdown_table(summary), end="")
    print(f"written: {args.out}/ablation.json, ablation.md, ablation.png")
    return 0

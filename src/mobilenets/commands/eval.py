"""`mobilenets eval --checkpoint C`: the task's metric on the run's own validation data (or ``--data``).

The task, resolution, transform, classes and validation data come from the config and metadata stored in C;
the flags of this command only say what to measure and how. A flag meant for another task (``--class-agnostic``
on a classifier) is an error naming it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilenets.commands.inference import checkpoint_task, engine_description, load, predictor_for
from mobilenets.commands.options import add_task_groups, flat_given, not_for, require
from mobilenets.config import EvalConfig
from mobilenets.errors import ConfigError

GROUPS = {"classify": "classifiers", "segment": "segmenters", "detect": "detectors"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained checkpoint on its own validation data (or --data)")
    add_task_groups(p, EvalConfig, GROUPS)
    require(p, "checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def eval_config(args: argparse.Namespace, task: str) -> EvalConfig:
    values = flat_given(args, EvalConfig)
    wrong = not_for(EvalConfig, values, task)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} does not apply to {args.checkpoint}, a {task} checkpoint")
    return EvalConfig(**values)


def cmd_eval(args: argparse.Namespace) -> int:
    task = checkpoint_task(args.checkpoint)
    cfg = eval_config(args, task)
    trained, module = load(cfg.checkpoint, cfg.device, cfg.threads)
    predictor = predictor_for(trained, cfg)
    result = module.evaluate_checkpoint(trained, cfg, predictor)
    result.setdefault("engine", cfg.engine)  # the classifier's says so itself; detectors' and segmenters' here
    described = engine_description(predictor)
    if described:
        result["engine_runs"] = described  # e.g. "amx level, int8, depthwise on fp16 rows"
    if hasattr(module, "plot_result"):  # figures go beside the checkpoint unless --out names a folder
        result.update(module.plot_result(result, trained, Path(cfg.out) if cfg.out else trained.path.parent))
    if trained.task == "segment" and result.get("image_size"):
        from mobilenets.analysis.dense import inference_madds

        result["madds_per_image"] = inference_madds(trained.model.cpu(), result["image_size"], result["scales"],
                                                    result["flip"])  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for line in module.eval_lines(result, cfg):
        print(line)
    if described:
        print(f"  engine: {cfg.engine} ({described})")
    return 0

"""`mobilenets predict --checkpoint C IMAGES…`: classes (top-k), boxes or masks per image.

The resolution, transform and class names come from C. Unreadable inputs are reported on stderr and do not stop
the others; the exit status is 1 when any was unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys

from mobilenets.commands.eval import GROUPS
from mobilenets.commands.inference import (
    checkpoint_task,
    engine_description,
    expand_inputs,
    load,
    output_stems,
    predictor_for,
    with_predictor,
)
from mobilenets.commands.options import add_task_groups, flat_given, not_for
from mobilenets.config import PredictConfig
from mobilenets.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a trained checkpoint on images: classes, boxes or masks")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    add_task_groups(p, PredictConfig, GROUPS)
    p.add_argument("--model", metavar="ARTEFACT", help="instead of --checkpoint: a file of `mobilenets export` "
                   "(.onnx, .tflite, OpenVINO folder), run in its runtime")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from mobilenets.commands.export import exported_task, load_exported

    checkpoint = getattr(args, "checkpoint", None)
    if bool(checkpoint) == bool(args.model):
        raise ConfigError("predict needs one of --checkpoint C or --model ARTEFACT")
    task = checkpoint_task(checkpoint) if checkpoint else exported_task(args.model)
    values = flat_given(args, PredictConfig)
    wrong = not_for(PredictConfig, values, task)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} does not apply to {args.checkpoint}, a {task} checkpoint")
    cfg = PredictConfig(**values)
    if args.model:
        trained, module = load_exported(args.model, cfg)
    else:
        trained, module = load(cfg.checkpoint, cfg.device, cfg.threads)
    paths = expand_inputs(args.inputs)
    if trained.task == "classify":
        predictor = predictor_for(trained, cfg)
        results = module.predict_images(trained, cfg, paths, predictor)
    else:
        wrapped = with_predictor(trained, cfg)
        predictor = wrapped.model
        results = module.predict_images(wrapped, cfg, paths, output_stems(paths))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
            else:
                print(module.prediction_line(r))
        described = engine_description(predictor)
        if described:
            print(f"engine: {cfg.engine} ({described})")
    return 1 if any("error" in r for r in results) else 0

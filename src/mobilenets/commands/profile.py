"""`mobilenets models` (the registered models) and `mobilenets profile` (parameters and multiply-adds, per layer
and in total)."""

from __future__ import annotations

import argparse

from mobilenets.analysis.profile import profile
from mobilenets.cli import print_json
from mobilenets.config import MAX_CLASSES, MAX_RESOLUTION, WIDTH_RANGE, check_int, check_range
from mobilenets.registry import create_model, list_models


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options every command that builds a model accepts; only those given become overrides."""
    p.add_argument("--width", type=float, help="width multiplier α (e.g. 0.35 … 1.4)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--output-stride", type=int, choices=None, help="8, 16 or 32")


def model_overrides(args: argparse.Namespace, *names: str) -> dict[str, object]:
    """The model options given, checked as a run's are (width finite and in range, a sane class count)."""
    check_range("width", getattr(args, "width", None), *WIDTH_RANGE)
    check_int("num_classes", getattr(args, "num_classes", None), 0, MAX_CLASSES)
    check_int("resolution", getattr(args, "resolution", None), 1, MAX_RESOLUTION)
    keys = ("width", "num_classes", "output_stride", *names)
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="parameters and multiply-adds, per layer and in total")
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--aspp", dest="aspp", action="store_true", default=None, help="segmentation: full ASPP head")
    p.add_argument("--no-aspp", dest="aspp", action="store_false", help="segmentation: reduced head")
    p.add_argument("--layers", action="store_true", help="print every layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)


def cmd_models(args: argparse.Namespace) -> int:
    for name in list_models():
        print(name)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    model = create_model(args.model, **model_overrides(args, "aspp"))
    prof = profile(model, args.resolution)
    config = model.config.to_dict()
    summary = {
        "model": args.model,
        "width": config.get("width", 1.0),
        "resolution": args.resolution,
        "num_classes": config.get("num_classes"),
        "params": prof.params,
        "params_no_bn": prof.params_no_bn,
        "madds": prof.madds,
        "modules": prof.modules,
    }
    if args.json:
        if args.layers:
            summary["layers"] = [layer.__dict__ for layer in prof.layers]
        print_json(summary)
        return 0
    if args.layers:
        print(f"{'layer':48s} {'kind':10s} {'output':>18s} {'params':>10s} {'MAdds':>14s}")
        for layer in prof.layers:
            shape = "×".join(map(str, layer.output_shape))
            print(f"{layer.name:48s} {layer.kind:10s} {shape:>18s} {layer.params:>10,d} {layer.madds:>14,d}")
    print(f"{args.model} width={summary['width']} resolution={args.resolution} num_classes={summary['num_classes']}")
    print(f"  params        {prof.params:>14,d}  ({prof.params / 1e6:.2f}M, BatchNorm included)")
    print(f"  params_no_bn  {prof.params_no_bn:>14,d}  ({prof.params_no_bn / 1e6:.2f}M, TF-Slim convention)")
    print(f"  multiply-adds {prof.madds:>14,d}  ({prof.madds / 1e6:.1f}M, conv + FC only)")
    for name, counts in prof.modules.items():
        if counts["params"] or counts["madds"]:
            print(f"    {name:12s} params {counts['params']:>12,d}  MAdds {counts['madds']:>14,d}")
    return 0

"""`mobilenets models`, `profile`, `published` and `convert`."""

from __future__ import annotations

import argparse

from mobilenets.analysis import published
from mobilenets.analysis.profile import profile
from mobilenets.cli import print_json
from mobilenets.convert import SOURCES, convert_file
from mobilenets.errors import ConfigError
from mobilenets.registry import create_model, list_models


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options every command that builds a model accepts; only those given become overrides."""
    p.add_argument("--width", type=float, help="width multiplier α (e.g. 0.35 … 1.4)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--output-stride", type=int, choices=None, help="8, 16 or 32")


def model_overrides(args: argparse.Namespace, *names: str) -> dict[str, object]:
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

    p = sub.add_parser("published", help="our counts beside every figure the papers and TF-Slim publish")
    p.add_argument("--source", choices=sorted(published.SOURCES), action="append", help="only these tables")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_published)

    p = sub.add_parser("convert", help="timm or torchvision weights -> a checkpoint create_model(..., weights=) loads")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES)
    p.add_argument("src", metavar="IN", help="the state dict: .pth, .bin or .safetensors")
    p.add_argument("dst", metavar="OUT", help="the checkpoint to write (safetensors with the model config)")
    p.add_argument("--model", help="our model name (default: inferred from the keys)")
    p.add_argument("--width", type=float, help="width multiplier (default: inferred from the shapes)")
    p.add_argument(
        "--tf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="timm tf_* weights: TF 'SAME' padding and BatchNorm eps 1e-3 (default: when IN's name starts with tf_)",
    )
    p.add_argument("--bn-eps", type=float, help="BatchNorm epsilon (default: what the source implies)")
    p.add_argument("--padding", choices=("symmetric", "same"), help="default: what the source implies")
    p.add_argument(
        "--timm-name",
        help="timm model name (e.g. mobilenetv3_large_100.ra_in1k) whose pretrained_cfg gives the input transform "
        "(default: a timm name found in IN's path)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_models(args: argparse.Namespace) -> int:
    for name in list_models():
        print(name)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.resolution <= 0:
        raise ConfigError(f"resolution must be > 0, got {args.resolution}")
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


def cmd_published(args: argparse.Namespace) -> int:
    return published.main([*(f"--source={s}" for s in args.source or ()), *(["--json"] if args.json else [])])


def cmd_convert(args: argparse.Namespace) -> int:
    net = convert_file(
        args.src, args.dst, args.source, args.model, args.width, args.bn_eps, args.padding, args.tf, args.timm_name
    )
    config = net.config
    summary = {
        "model": net.registry_name,
        "width": config.width,
        "num_classes": config.num_classes,
        "bn_eps": config.resolved_bn_eps,
        "padding": config.padding,
        "source": args.source,
        "input": args.src,
        "output": args.dst,
    }
    from mobilenets.engine.checkpoints import read_train_meta

    stored = read_train_meta(args.dst)
    transform = stored["metadata"]["transform"]
    summary["transform"] = {**transform, "from": stored["converted"]["transform_from"]}
    classes = stored["metadata"]["classes"]
    summary["class_names"] = "ImageNet-1k" if config.num_classes in (1000, 1001) else "numbered (0, 1, ...)"
    if args.json:
        print_json(summary)
    else:
        options = " ".join(f"{k}={summary[k]}" for k in ("width", "num_classes", "bn_eps", "padding"))
        print(f"{args.src} ({args.source}) -> {args.dst}: {net.registry_name} {options}")
        t = transform
        resize = round(t["resolution"] / t["crop_pct"])
        print(
            f"  input: resize {resize}, crop {t['resolution']}, {t['interpolation']}, mean {t['mean']}, std {t['std']}"
        )
        print(f"         ({summary['transform']['from']})")
        print(f"  classes: {summary['class_names']} ({classes[0]!r} ... {classes[-1]!r})")
    return 0

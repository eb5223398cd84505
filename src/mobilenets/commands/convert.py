"""`mobilenets convert`: timm or torchvision weights → a checkpoint ``create_model(..., weights=)`` loads, with the
class names and input transform its source documents."""

from __future__ import annotations

import argparse

from mobilenets.cli import print_json
from mobilenets.convert import SOURCES, convert_file


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    net = convert_file(
        args.src,
        args.dst,
        args.source,
        args.model,
        args.width,
        args.bn_eps,
        args.padding,
        args.tf,
        args.timm_name,
        args.overwrite,
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

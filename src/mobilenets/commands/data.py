"""`mobilenets data scenes` (the generated detection / segmentation scenes) and `mobilenets data embedded` (rebuild
the Fashion-MNIST subset shipped in the package)."""

from __future__ import annotations

import argparse
import sys

from mobilenets.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate the built-in datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True, parser_class=type(p))
    s = data_sub.add_parser(
        "scenes", help="Fashion-MNIST objects on scikit-image photos: COCO boxes + instance and semantic masks"
    )
    s.add_argument("--out", required=True, help="output folder (train/ and val/ are created inside)")
    s.add_argument("--train", type=int, default=2000, help="number of training scenes")
    s.add_argument("--val", type=int, default=200, help="number of validation scenes")
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-objects", type=int, default=6)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_data_scenes)

    e = data_sub.add_parser(
        "embedded", help="rebuild the class-balanced Fashion-MNIST subset shipped in the package (from IDX files)"
    )
    e.add_argument("--root", help="a Fashion-MNIST IDX folder (default: Debian's dataset-fashion-mnist)")
    e.add_argument("--train-per-class", type=int, default=3000)
    e.add_argument("--test-per-class", type=int, default=200)
    e.add_argument("--out", required=True, help="the .npz to write (the package's own: mobilenets/data/…)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_data_embedded)


def cmd_data_scenes(args: argparse.Namespace) -> int:
    from mobilenets.data.scenes import SceneConfig, write_split

    if args.train < 0 or args.val < 0:
        raise ConfigError(f"scene counts must be >= 0, got --train {args.train} --val {args.val}")
    config = SceneConfig(size=args.size, seed=args.seed, max_objects=args.max_objects)
    for split, count in (("train", args.train), ("val", args.val)):
        if count == 0:
            continue

        def report(done: int, split: str = split, count: int = count) -> None:
            if not args.quiet and (done == count or done % 100 == 0):
                print(f"\r{split}: {done}/{count}", end="\n" if done == count else "", file=sys.stderr, flush=True)

        path = write_split(args.out, split, count, config, progress=report)
        print(path)
    return 0


def cmd_data_embedded(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilenets.data.embedded import build

    if args.train_per_class < 1 or args.test_per_class < 1:
        raise ConfigError("--train-per-class and --test-per-class must be >= 1")
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; remove it first (the embedded data is never overwritten in place)")
    build(out, args.train_per_class, args.test_per_class, Path(args.root) if args.root else None, args.seed)
    print(out)
    return 0

"""`mobilenets data scenes`: the generated detection / segmentation scenes (latency: `mobilenets bench detect`).

Training, evaluation and prediction go through the one engine: ``mobilenets train --task detect``,
``mobilenets eval`` and ``mobilenets predict`` (``mobilenets.detection.task``).
"""

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

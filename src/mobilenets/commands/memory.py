"""`mobilenets memory`: V2 Table 3's activation memory per resolution, with measured executor peaks."""

from __future__ import annotations

import argparse

from mobilenets.cli import print_json
from mobilenets.commands.profile import add_model_options, model_overrides
from mobilenets.config import MAX_BATCH, check_int
from mobilenets.registry import create_model


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="V2 Table 3: activation memory per resolution, with measured executor peaks")
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--no-measure", action="store_true", help="skip running the standard and split executors")
    p.add_argument("--groups", type=int, nargs="+", default=[4], help="split executor t values to measure")
    p.add_argument("--batch", type=int, default=1, help="batch size of the measured forward")
    p.add_argument("--rss", action="store_true", help="also peak RSS of a fresh process per executor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    from mobilenets.analysis.memory import memory_table

    check_int("batch", args.batch, 1, MAX_BATCH)
    for t in args.groups:  # V2 §5.1: the split executor's t sub-blocks per bottleneck
        check_int("groups", t, 1, 1024)
    model = create_model(args.model, **model_overrides(args))
    table = memory_table(
        model, args.model, args.resolution, not args.no_measure, tuple(args.groups), args.batch, args.rss
    )
    if args.json:
        print_json(table.to_dict())
        return 0
    head = f"{args.model} @ {args.resolution}"
    if table.rows:
        print(f"{head}: tensors materialised between ops (block = one op), 16-bit, 1K = 1000 B")
        print(f"  {'size':>9s} {'channels':>9s} {'Kb':>9s}")
        for row in table.rows:
            print(f"  {row.resolution:>4d}x{row.resolution:<4d} {row.max_channels:>9d} {row.kb:>9.1f}")
        print(f"  {'max':>9s} {'':>9s} {table.max_kb:>9.1f}")
    else:
        print(f"{head}: Table 3's rows are a classifier's. standard_bytes: the whole model; activation_bytes:")
        print(f"  the fused engine's backbone as far as the taps its head reads ({', '.join(table.taps)})")
    if table.measured:
        print(f"measured, batch {args.batch}, fp32 (live activations; 16-bit equivalent = half):")
        for key, value in table.measured.items():
            if key != "batch":
                print(f"  {key:28s} {value / 1e3:>12.1f} Kb")
    return 0

"""`mobilenets memory`, `export`, `bench` and `tradeoff`: deployment and measurement."""

from __future__ import annotations

import argparse

from mobilenets.cli import print_json
from mobilenets.commands.core import add_model_options, model_overrides
from mobilenets.registry import create_model


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="V2 Table 3: activation memory per resolution, with measured executor peaks")
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--no-measure", action="store_true", help="skip running the standard and split executors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    from mobilenets.analysis.memory import memory_table

    model = create_model(args.model, **model_overrides(args))
    table = memory_table(model, args.model, args.resolution, measure=not args.no_measure)
    if args.json:
        print_json(table.to_dict())
        return 0
    print(f"{args.model} @ {args.resolution}: tensors materialised between ops (block = one op), 16-bit, 1K = 1000 B")
    print(f"  {'size':>9s} {'channels':>9s} {'Kb':>9s}")
    for row in table.rows:
        print(f"  {row.resolution:>4d}x{row.resolution:<4d} {row.max_channels:>9d} {row.kb:>9.1f}")
    print(f"  {'max':>9s} {'':>9s} {table.max_kb:>9.1f}")
    if table.measured:
        print("measured peak of live activations, batch 1, fp32 (16-bit equivalent = half):")
        for key, value in table.measured.items():
            print(f"  {key:18s} {value / 1e3:>10.1f} Kb")
    return 0

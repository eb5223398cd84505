"""`mobilenets published` (our counts beside the figures the V1/V2/V3 papers and TF-Slim publish) and
`mobilenets segment-table7` (V2 Table 7: DeepLabv3's parameters and multiply-adds beside the paper's)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from mobilenets.analysis.published import FIGURES, NUM_CLASSES, SOURCES, Row, compare
from mobilenets.cli import print_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("published", help="our counts beside every figure the papers and TF-Slim publish")
    p.add_argument("--source", choices=sorted(SOURCES), action="append", help="only these tables")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_published)

    p = sub.add_parser("segment-table7", help="V2 Table 7: DeepLabv3 params and MAdds, ours beside the paper's")
    p.add_argument("--resolution", type=int, default=513, help="input side (DeepLab evaluates 513×513)")
    p.add_argument("--single-scale-only", action="store_true", help="skip the (slow) OS 8 + MF rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_table7)


def cmd_published(args: argparse.Namespace) -> int:
    rows = compare([f for f in FIGURES if not args.source or f.source in args.source])
    if args.json:
        print(json.dumps([{**asdict(r.figure), **{k: v for k, v in asdict(r).items() if k != "figure"}} for r in rows]))
    else:
        print_table(rows)
    return 0


def _mark(ok: bool | None) -> str:
    return {True: "=", False: "≠", None: " "}[ok]


def print_table(rows: list[Row]) -> None:
    source = None
    for r in rows:
        f = r.figure
        if f.source != source:
            source = f.source
            print(f"\n{SOURCES[source]}")
            header = f"{'model':27s} {'α':>4s} {'res':>4s} | {'MAdds (M)':>9s} {'ours':>7s}   | {'params (M)':>10s}"
            print(f"  {'':9s} {header} ours")
        madds = f"{f.madds or '-':>9s} {r.madds:7.1f} {_mark(r.madds_agree)}"
        params = f"{f.params or '-':>10s} {r.params:6.3f} {_mark(r.params_agree)}"
        notes = "; ".join(n for n in (r.madds_note, r.params_note) if n)
        line = f"  {f.table:9s} {f.model:27s} {f.width:4.2f} {f.resolution:4d} | {madds} | {params}"
        print(line + (f"  ({notes})" if notes else ""))
    agree = sum(x is True for r in rows for x in (r.madds_agree, r.params_agree))
    total = sum(x is not None for r in rows for x in (r.madds_agree, r.params_agree))
    print(f"\n{agree} of {total} published figures agree with our count ('=': rounded/truncated or within 1%).")
    print(
        f"Counted with {NUM_CLASSES} classes; params without BatchNorm, except TF-Slim V1 (its checkpoint variables)."
    )


def cmd_table7(args: argparse.Namespace) -> int:
    from mobilenets.analysis.dense import table7_rows

    rows = table7_rows(args.resolution, args.single_scale_only)
    if args.json:
        print_json({"resolution": args.resolution, "rows": rows})
        return 0
    print(f"V2 Table 7 at {args.resolution}×{args.resolution}, 21 classes; MF: scales 0.5:0.25:1.75 + flips")
    head = f"{'model':24s} {'OS':>3s} {'ASPP':>5s} {'MF':>3s} {'params':>8s} {'paper':>7s} "
    print(head + f"{'MAdds':>9s} {'TF-style':>9s} {'paper':>8s}")
    for r in rows:
        print(
            f"{r['model']:24s} {r['output_stride']:>3d} {'yes' if r['aspp'] else 'no':>5s} "
            f"{'yes' if r['mf'] else 'no':>3s} {r['params'] / 1e6:>7.2f}M {r['paper_params_m']:>6.2f}M "
            f"{r['madds'] / 1e9:>8.2f}B {r['madds_tf'] / 1e9:>8.2f}B {r['paper_madds_b']:>7.2f}B"
        )
    return 0

"""`mobilenets bench MODE …`: every timing harness behind one verb.

- ``infer`` (the default: ``mobilenets bench MODEL …`` is ``mobilenets bench infer MODEL …``): our paths and peer
  runtimes, batch-1 latency and batch-32 throughput, several models in one table, goal verdicts from the rows;
- ``train``: training throughput against timm;
- ``detect``: batch-1 detection latency with post-processing;
- ``export``: a model's ONNX exports (fp32, int8) against PyTorch;
- ``tradeoff``: the V2 Figure 5-style trade-off figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mobilenets.cli import print_json
from mobilenets.errors import ConfigError

MODES = ("infer", "train", "detect", "export", "tradeoff")


class _AnyName(dict):
    # argparse checks the first positional against the modes before the action runs; a model name must pass.
    def __contains__(self, key: object) -> bool:
        return True


class _Modes(argparse._SubParsersAction):
    """The sub-modes; a first word that names none is a model for ``infer`` (the form from before the modes)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = super().add_parser(name, **kwargs)
        self.choices = _AnyName(self._name_parser_map)
        return parser

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values[0] not in self._name_parser_map:
            values = ["infer", *values]
        super().__call__(parser, namespace, values, option_string)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="timing: infer (default) | train | detect | export | tradeoff",
        description="Every timing harness. `mobilenets bench MODEL ...` is `mobilenets bench infer MODEL ...`; "
        "`mobilenets bench MODE --help` lists a mode's options. docs/benchmarks.md describes the JSON and the goals.",
    )
    metavar = "{" + ",".join(MODES) + "}"
    modes = bench.add_subparsers(dest="mode", action=_Modes, parser_class=type(bench), metavar=metavar)

    p = modes.add_parser("infer", help="CPU latency / throughput / memory: our paths and peer runtimes, one table")
    p.add_argument("models", nargs="*", default=["mobilenet_v2"], metavar="MODEL",
                   help="registry names, optionally NAME@RESOLUTION; ssdlite_* means that detector's backbone up to "
                   "its feature taps (default resolution 320; others 224)")  # fmt: skip
    p.add_argument("--resolution", type=int, help="resolution of every MODEL given without @")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per path (after warm-up)")
    p.add_argument("--batch32-runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over the paths the runs are spread over")
    p.add_argument("--checkpoint", help="trained weights of the one MODEL (default: random init, BN re-estimated "
                   "on real photos)")  # fmt: skip
    p.add_argument("--no-peers", action="store_true", help="skip OpenVINO, LiteRT and timm (ONNX Runtime stays)")
    p.add_argument("--compile", action="store_true", help="add a torch.compile (Inductor) row; compiles ~1 min")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the report here")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of batch-1 latency, one panel per model")
    p.set_defaults(func=cmd_infer)
    bench.set_defaults(func=lambda args: cmd_infer(p.parse_args([])))  # plain `mobilenets bench`

    p = modes.add_parser("train", help="training throughput (images/s) against timm's counterpart")
    p.add_argument("model", nargs="?", default="mobilenet_v2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-peers", action="store_true", help="skip timm")
    p.add_argument("--json", dest="json_out", metavar="OUT")
    p.set_defaults(func=cmd_train)

    p = modes.add_parser("detect", help="batch-1 detection latency with post-processing")
    p.add_argument("model", nargs="?", default="ssdlite_mobilenet_v2")
    p.add_argument("--resolution", type=int, default=320)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", "--out", dest="json_out", metavar="OUT", help="also write the JSON here")
    p.set_defaults(func=cmd_detect)

    p = modes.add_parser("export", help="latency of a model's ONNX exports (fp32, int8) against PyTorch")
    p.add_argument("model", nargs="?", default="mobilenet_v2")
    p.add_argument("--checkpoint", help="trained weights (default: random init, BN re-estimated on real photos)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--int8", action="store_true", help="also an int8 export, calibrated on photos")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out", metavar="OUT")
    p.set_defaults(func=cmd_export)

    p = modes.add_parser("tradeoff", help="V2 Figure 5-style plot: MAdds vs params and latency, every α × size")
    p.add_argument("model", nargs="?", default="mobilenet_v2")
    p.add_argument("--out", required=True, metavar="OUT.png")
    p.add_argument("--runs", type=int, default=20, help="timed batch-1 calls per point; 0 = counts only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--widths", type=float, nargs="+")
    p.add_argument("--resolutions", type=int, nargs="+")
    p.add_argument("--json", dest="json_out", metavar="OUT.json")
    p.set_defaults(func=cmd_tradeoff)


def _write_json(path: str, report: object) -> None:
    from mobilenets.checkpoint import atomic_write

    text = json.dumps(report, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_infer(args: argparse.Namespace) -> int:
    from mobilenets.bench.goals import verdict_lines
    from mobilenets.bench.infer import run_bench
    from mobilenets.bench.plot import plot_bench

    log = _log if args.json_out is None else print
    report = run_bench(
        args.models, args.resolution, args.threads, args.runs, args.batch32_runs, args.checkpoint,
        peers_on=not args.no_peers, log=log, compile_path=args.compile, rounds=args.rounds,
    )  # fmt: skip
    host = report["host"]
    flags = " ".join(name for name, on in host["isa"].items() if on)
    log(f"host: {host['cpu_model']} [{flags}], {report['threads']} threads, load {host['load_avg']}")
    for section in report["models"]:
        log(f"{section['model']} @ {section['resolution']} ({section['weights']})")
        for r in section["results"]:
            diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            log(f"  {r['name']:34s} {r['precision']:5s} {r['batch1_ms_median']:8.2f} ms (p90 {r['batch1_ms_p90']:.2f})"
                f" {r['batch32_img_s']:8.1f} img/s  diff {diff}  {r['detail']}")  # fmt: skip
        for note in section["notes"]:
            log(f"  note: {note}")
        for line in verdict_lines(section["goals"]):
            log(f"  {line}")
    if args.json_out:
        _write_json(args.json_out, report)
    else:
        print_json(report)
    if args.plot:
        plot_bench(report, args.plot)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mobilenets.bench.train import train_throughput

    report = train_throughput(args.model, args.batch_size, args.resolution, args.rounds, args.steps, args.threads,
                              args.channels_last, peer=not args.no_peers)  # fmt: skip
    if args.json_out:
        _write_json(args.json_out, report)
    print_json(report)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from mobilenets.bench.detect import detection_latency

    report = detection_latency(args.model, args.resolution, args.num_classes, args.threads, args.warmup, args.runs)
    if args.json_out:
        _write_json(args.json_out, report)
    print_json(report)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from mobilenets.bench.export import export_latency
    from mobilenets.bench.photos import real_images, recalibrate_batchnorm
    from mobilenets.deploy.export import export_onnx, quantize_onnx
    from mobilenets.registry import create_model

    if args.runs < 1 or args.threads < 1:
        raise ConfigError(f"--runs and --threads must be >= 1 (got {args.runs}, {args.threads})")
    images = real_images(args.resolution, 40)
    torch.manual_seed(0)
    model = create_model(args.model, weights=args.checkpoint) if args.checkpoint else create_model(args.model)
    if not args.checkpoint:
        recalibrate_batchnorm(model, images[8:])
    model.eval()
    dense = getattr(model, "task", "classify") != "classify"
    with tempfile.TemporaryDirectory() as tmp:
        files = {"onnx_fp32": export_onnx(model, Path(tmp) / "fp32.onnx", args.resolution)}
        if args.int8:
            files["onnx_int8"] = quantize_onnx(files["onnx_fp32"], Path(tmp) / "int8.onnx",
                                               list(images[8:].split(8)), glue_fp32=dense)  # fmt: skip
        report = export_latency(model, files, images[:1], args.runs, args.threads)
    report = {"model": args.model, "resolution": args.resolution, **report}
    if args.json_out:
        _write_json(args.json_out, report)
    print_json(report)
    return 0


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from mobilenets.bench.tradeoff import RESOLUTIONS, WIDTHS, plot_tradeoff, points_to_dicts, tradeoff_points

    points = tradeoff_points(
        args.model, args.widths or WIDTHS, args.resolutions or RESOLUTIONS, args.runs, args.threads
    )
    plot_tradeoff(points, args.out, args.model)
    if args.json_out:
        _write_json(args.json_out, {"model": args.model, "threads": args.threads, "points": points_to_dicts(points)})
    print(f"wrote {args.out}")
    return 0

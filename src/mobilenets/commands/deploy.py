"""`mobilenets memory` and `export`: deployment and measurement (timing lives in ``mobilenets bench``)."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mobilenets.cli import print_json
from mobilenets.commands.core import add_model_options, model_overrides
from mobilenets.errors import ConfigError, MobilenetsError
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

    p = sub.add_parser("export", help="ONNX export (dynamic batch), checked in ONNX Runtime; optional int8")
    p.add_argument("out", help="output .onnx file (with --int8: the int8 model; the fp32 one is written beside)")
    p.add_argument("--checkpoint", required=True, help="a run folder or .safetensors written by this library")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--resolution", type=int, help="export resolution (default: the one the model was trained at)")
    p.add_argument("--int8", action="store_true", help="int8 static quantization, per-channel weights")
    p.add_argument(
        "--calibration",
        help="calibration images: 'embedded', a Fashion-MNIST IDX folder or an image folder (classifiers); "
        "'embedded' or the model's kind of data folder, training split (detectors, segmenters)",
    )
    p.add_argument("--calibration-count", type=int, default=512)
    p.add_argument(
        "--eval", dest="eval_data",
        help="also measure PyTorch and the ONNX file(s) on this data: top-1, or a detector's COCO mAP / a "
        "segmenter's mIoU on its validation split ('embedded': the scenes the model was trained on)",
    )  # fmt: skip
    p.add_argument(
        "--latency-runs", type=int, default=0, metavar="N",
        help="also time PyTorch and the ONNX file(s) on one image at the export resolution: N calls each, "
        "interleaved in 5 rounds, medians (the network alone: a detector's NMS is not timed)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="threads for --latency-runs (PyTorch and ONNX Runtime)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_memory(args: argparse.Namespace) -> int:
    from mobilenets.analysis.memory import memory_table

    model = create_model(args.model, **model_overrides(args))
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    table = memory_table(
        model, args.model, args.resolution, not args.no_measure, tuple(args.groups), args.batch, args.rss
    )
    if args.json:
        print_json(table.to_dict())
        return 0
    print(f"{args.model} @ {args.resolution}: tensors materialised between ops (block = one op), 16-bit, 1K = 1000 B")
    print(f"  {'size':>9s} {'channels':>9s} {'Kb':>9s}")
    for row in table.rows:
        print(f"  {row.resolution:>4d}x{row.resolution:<4d} {row.max_channels:>9d} {row.kb:>9.1f}")
    print(f"  {'max':>9s} {'':>9s} {table.max_kb:>9.1f}")
    if table.measured:
        print(f"measured, batch {args.batch}, fp32 (live activations; 16-bit equivalent = half):")
        for key, value in table.measured.items():
            if key != "batch":
                print(f"  {key:28s} {value / 1e3:>12.1f} Kb")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilenets.classification.task import eval_transform_of
    from mobilenets.deploy.dense import calibration_batches as dense_calibration
    from mobilenets.deploy.dense import task_metrics
    from mobilenets.deploy.evaluate import fused_top1, onnx_top1, torch_top1
    from mobilenets.deploy.export import calibration_batches, check_onnx, export_graph, export_onnx, quantize_onnx
    from mobilenets.engine.checkpoints import load_trained

    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DATA (real images to calibrate the activation ranges)")
    trained = load_trained(args.checkpoint)
    transform = eval_transform_of(trained.metadata, int(trained.args.get("resolution", 224)))
    if args.resolution:
        transform = dataclasses.replace(transform, resolution=args.resolution)
    resolution = transform.resolution
    out = Path(args.out)
    fp32 = out.with_suffix(".fp32.onnx") if args.int8 else out
    export_onnx(trained.model, fp32, resolution)
    x = torch.randn(4, trained.model.config.in_chans, resolution, resolution)
    summary: dict[str, object] = {
        "onnx": str(fp32),
        "task": trained.task,
        "outputs": list(export_graph(trained.model)[1]),
        "resolution": resolution,
        "fp32_max_abs_diff": check_onnx(fp32, trained.model, x),
    }
    dense = trained.task != "classify"
    if args.int8:
        if dense:
            batches = dense_calibration(trained, args.calibration, args.calibration_count, resolution)
        else:
            batches = calibration_batches(args.calibration, transform, args.calibration_count)
        quantize_onnx(fp32, out, batches, glue_fp32=dense)
        summary["int8"] = str(out)
        summary["calibration"] = {"data": args.calibration, "images": sum(len(b) for b in batches)}
    if args.eval_data and dense:
        data = args.eval_data
        summary["metrics"] = {"pytorch": task_metrics(trained, data, resolution)}
        summary["metrics"]["onnx_fp32"] = task_metrics(trained, data, resolution, fp32)
        if args.int8:
            summary["metrics"]["onnx_int8"] = task_metrics(trained, data, resolution, out)
    elif args.eval_data:
        summary["top1"] = {"pytorch": torch_top1(trained.model, args.eval_data, transform, trained.metadata)}
        summary["top1"]["onnx_fp32"] = onnx_top1(fp32, args.eval_data, transform, trained.metadata)
        if args.int8:
            summary["top1"]["onnx_int8"] = onnx_top1(out, args.eval_data, transform, trained.metadata)
        try:  # our own deploy path, where it applies (V1/V2 classifiers on an x86-64 CPU with AVX2)
            summary["top1"]["fused_fp32"] = fused_top1(trained.model, args.eval_data, transform, trained.metadata)
            if args.int8:
                summary["top1"]["fused_int8"] = fused_top1(
                    trained.model, args.eval_data, transform, trained.metadata, calibration=batches
                )
        except MobilenetsError as e:
            summary["fused_engine"] = f"skipped: {e}"
    if args.latency_runs > 0:
        files = {"onnx_fp32": fp32, **({"onnx_int8": out} if args.int8 else {})}
        from mobilenets.bench.export import export_latency

        summary["latency"] = export_latency(trained.model, files, x[:1], args.latency_runs, args.threads)
    if args.json:
        print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:18s} {value}")
    return 0


"""`mobilenets export --checkpoint C [--format onnx|tflite|openvino] OUT`: a trained model as a file for its
runtime, checked there against PyTorch; optionally int8, its accuracy and latency beside PyTorch's.

OUT is ``*.onnx``, ``*.tflite``, or a folder for OpenVINO (``model.xml`` + ``model.bin``). With ``--int8`` OUT
is the int8 model and the fp32 one is written beside it (``OUT.fp32.onnx`` / ``.fp32.tflite`` /
``OUT/model.fp32.xml``). Everything is written under temporary names in OUT's folder, checked, and only then
renamed into place: a failed check leaves the files that were there before.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenets.cli import print_json
from mobilenets.deploy.formats import FORMATS
from mobilenets.errors import ConfigError, MobilenetsError

SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
# int8 has no element-wise tolerance; the check is that its outputs still follow PyTorch's on real
# (calibration) images. Measured ≥ 0.999 on the test models; a broken quantisation falls far below.
INT8_MIN_CORRELATION = 0.95


class ExportCheckError(MobilenetsError):
    """An exported file whose outputs in its runtime differ from PyTorch's beyond the stated tolerance."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="ONNX / TFLite (LiteRT) / OpenVINO export, checked in its runtime against PyTorch; optional int8"
    )
    p.add_argument(
        "out", help="output: a .onnx or .tflite file, or a folder for openvino (with --int8: the int8 model)"
    )
    p.add_argument("--checkpoint", required=True, help="a run folder or .safetensors written by this library")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--resolution", type=int, help="export resolution (default: the one the model was trained at)")
    p.add_argument("--int8", action="store_true", help="int8 static quantization, per-channel weights")
    p.add_argument(
        "--calibration",
        help="calibration images: 'embedded', a Fashion-MNIST IDX folder or an image folder (classifiers); "
        "'embedded' or the model's kind of data folder, training split (detectors, segmenters)",
    )
    p.add_argument("--calibration-count", type=int, default=512)
    p.add_argument(
        "--nms-in-graph", action="store_true",
        help="detectors, onnx / openvino: NMS inside the graph (ONNX NonMaxSuppression; batch 1), outputs "
        "boxes, scores, labels",
    )  # fmt: skip
    p.add_argument(
        "--eval", dest="eval_data", nargs="?", const="", metavar="DATA",
        help="also measure PyTorch and the exported file(s): top-1, or a detector's COCO mAP / a segmenter's mIoU; "
        "on the run's own validation data (its --val-split held-out part included), or on DATA's validation split",
    )  # fmt: skip
    p.add_argument(
        "--latency-runs", type=int, default=0, metavar="N",
        help="also time PyTorch and the exported file(s) on one image at the export resolution: N calls each, "
        "interleaved in 5 rounds, medians (the network alone: a detector's NMS is not timed)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="threads for --latency-runs (PyTorch and the runtime)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def _check_args(args: argparse.Namespace) -> None:
    from mobilenets.deploy.formats import require

    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DATA (real images to calibrate the activation ranges)")
    if args.calibration_count < 1 or args.threads < 1 or args.latency_runs < 0:
        raise ConfigError("--calibration-count and --threads must be >= 1, --latency-runs >= 0")
    if args.nms_in_graph and args.format == "tflite":
        raise ConfigError("--nms-in-graph: the LiteRT converter has no NMS op here; use --format onnx or openvino")
    if args.nms_in_graph and args.int8:
        raise ConfigError("--nms-in-graph is exported in fp32 (int8 of that graph is not checked); drop --int8")
    suffix = SUFFIX.get(args.format)
    if suffix and Path(args.out).suffix != suffix:
        raise ConfigError(f"--format {args.format} writes a {suffix} file; got {args.out}")
    if args.format == "openvino" and Path(args.out).is_file():
        raise ConfigError(f"--format openvino writes a folder (model.xml, model.bin); {args.out} is a file")
    # The runtime is checked before the checkpoint is loaded: a missing extra is one line, at once.
    modules = {"onnx": ["onnx", "onnxruntime"], "tflite": ["litert_torch", "ai_edge_litert.interpreter"]}
    for module in modules.get(args.format, ["onnx", "onnxruntime", "openvino"]):
        require(module)


def plan_outputs(fmt: str, out: Path, int8: bool) -> dict[str, Path]:
    """The files an export writes, by role: ``fp32`` and, with ``int8``, ``int8`` (the ``out`` the user named)."""
    if fmt == "openvino":
        files = {"fp32": out / ("model.fp32.xml" if int8 else "model.xml")}
        if int8:
            files["int8"] = out / "model.xml"
        return files
    if int8:
        return {"fp32": out.with_suffix(".fp32" + SUFFIX[fmt]), "int8": out}
    return {"fp32": out}


def _ours(path: Path) -> bool:
    """Whether an existing file was written by an earlier export (it carries our metadata)."""
    from mobilenets.deploy.artefact import read_artefact_metadata

    try:
        read_artefact_metadata(path.with_suffix(".xml") if path.suffix == ".bin" else path)
        return True
    except Exception:  # unreadable, foreign, or not a model at all: not ours to replace
        return False


def _written(fmt: str, files: dict[str, Path]) -> list[Path]:
    return [q for p in files.values() for q in ((p, p.with_suffix(".bin")) if fmt == "openvino" else (p,))]


def cmd_export(args: argparse.Namespace) -> int:
    from mobilenets.deploy.formats import check_outputs
    from mobilenets.engine.checkpoints import load_trained, resolve_weights

    _check_args(args)
    out = Path(args.out)
    files = plan_outputs(args.format, out, args.int8)
    written = _written(args.format, files)
    named = set(written) if args.format == "openvino" else {out}
    inputs = [resolve_weights(args.checkpoint)]
    check_outputs(out, written, inputs, lambda p: p in named or _ours(p))
    trained = load_trained(args.checkpoint)
    transform, resolution = _transform(trained, args.resolution)
    summary: dict[str, Any] = {"format": args.format, "task": trained.task, "resolution": resolution}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=_existing_folder(out)))
    try:
        staged = {role: staging / f"{role}{SUFFIX.get(args.format, '')}" for role in files}
        if args.format == "openvino":
            staged = {role: staging / role / "model.xml" for role in files}
        batches = _export(args, trained, transform, resolution, staged, summary)
        _verify(args, trained, resolution, staged, summary, batches)
        if args.eval_data is not None:
            _evaluate(args, trained, transform, resolution, staged, summary, batches)
        for role, path in files.items():  # everything checked: rename into place (same folder, atomic each)
            path.parent.mkdir(parents=True, exist_ok=True)
            pairs = [(".bin", ".bin"), (".xml", ".xml")] if args.format == "openvino" else [("", "")]
            for src_suffix, dst_suffix in pairs:
                src = staged[role].with_suffix(src_suffix) if src_suffix else staged[role]
                dst = path.with_suffix(dst_suffix) if dst_suffix else path
                src.replace(dst)
            summary[role] = str(path)
        if args.latency_runs > 0:
            summary["latency"] = export_latency(trained, resolution, files, args.latency_runs, args.threads)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if args.json:
        print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:18s} {value}")
    return 0


def _existing_folder(out: Path) -> Path:
    """The folder the staging area goes in: OUT's own (created), so the final renames stay on one file system."""
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _transform(trained: Any, resolution: int | None) -> tuple[Any, int]:
    from mobilenets.classification.task import eval_transform_of

    transform = eval_transform_of(trained)
    if resolution:
        transform = dataclasses.replace(transform, resolution=resolution)
    return transform, transform.resolution


def export_metadata(trained: Any, transform: Any, resolution: int, fmt: str, precision: str, outputs: list[str],
                    nms_in_graph: bool = False) -> dict[str, Any]:  # fmt: skip
    """The metadata an export of ``trained`` carries (``mobilenets.deploy.formats.build_metadata``)."""
    from mobilenets.checkpoint import model_config
    from mobilenets.commands.train import task_module
    from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from mobilenets.deploy.formats import build_metadata, input_rule

    task = trained.task
    dynamic = task == "segment" and fmt != "tflite"
    if task == "classify":
        mean, std, order = transform.mean, transform.std, transform.channel_order
    else:  # detectors and segmenters normalise with the statistics their task stored (ImageNet's by default)
        mean = trained.metadata.get("mean", IMAGENET_MEAN)
        std = trained.metadata.get("std", IMAGENET_STD)
        order = "rgb"
    meta = build_metadata(
        task=task,
        model_name=str(getattr(trained.model, "registry_name", "")),
        model_config=model_config(trained.model),
        classes=task_module(task).class_names(trained),
        fmt=fmt,
        precision=precision,
        resolution=resolution,
        mean=mean,
        std=std,
        channel_order=order,
        resize=input_rule(task, transform, resolution, dynamic),
        outputs=outputs,
        layout="NHWC" if fmt == "tflite" else "NCHW",
        dynamic_size=dynamic,
        nms_in_graph=nms_in_graph,
    )
    if task == "classify":  # the whole eval transform, as a checkpoint stores it (predict --model reads it)
        meta["transform"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(transform).items()
        }
    return meta


def exported_task(path: str) -> str:
    """The task an exported file was made for (its metadata)."""
    from mobilenets.deploy.artefact import read_artefact_metadata

    return str(read_artefact_metadata(path)["task"])


def load_exported(path: str, cfg: Any) -> tuple[Any, Any]:
    """``predict --model``: (an exported file standing in for a loaded checkpoint, its task's module)."""
    from mobilenets.commands.train import task_module
    from mobilenets.deploy.artefact import exported_trained, load_artefact

    if cfg.engine != "pytorch":
        raise ConfigError("--engine applies to --checkpoint; --model runs the file in its own runtime")
    trained = exported_trained(load_artefact(path, cfg.threads or 0))
    return trained, task_module(trained.task)


def _calibration(args: argparse.Namespace, trained: Any, transform: Any, resolution: int) -> list[torch.Tensor]:
    from mobilenets.deploy.calibration import calibration_batches

    sized = dataclasses.replace(transform, resolution=resolution)
    return calibration_batches(trained, args.calibration, args.calibration_count, sized)


def _export(args: argparse.Namespace, trained: Any, transform: Any, resolution: int, staged: dict[str, Path],
            summary: dict[str, Any]) -> list[torch.Tensor] | None:  # fmt: skip
    """Write the fp32 (and int8) files into ``staged``; returns the calibration batches (None without --int8)."""
    from mobilenets.deploy.export import export_graph, export_onnx, quantize_onnx

    fmt, model = args.format, trained.model
    outputs = list(export_graph(model, args.nms_in_graph)[1])
    summary["outputs"] = outputs

    def meta(precision: str) -> dict[str, Any]:
        return export_metadata(trained, transform, resolution, fmt, precision, outputs, args.nms_in_graph)

    batches = _calibration(args, trained, transform, resolution) if args.int8 else None
    if batches is not None:
        summary["calibration"] = {"data": args.calibration, "images": sum(len(b) for b in batches)}
    summary["input"] = meta("fp32")["input"]
    if fmt == "tflite":
        from mobilenets.deploy.tflite import export_tflite

        export_tflite(model, staged["fp32"], resolution, meta("fp32"))
        if batches is not None:
            export_tflite(model, staged["int8"], resolution, meta("int8"), calibration=batches)
        return batches
    onnx_fp32 = staged["fp32"] if fmt == "onnx" else staged["fp32"].parent / "model.onnx"
    export_onnx(model, onnx_fp32, resolution, metadata=meta("fp32"), nms_in_graph=args.nms_in_graph)
    onnx_int8 = staged.get("int8") if fmt == "onnx" else staged["fp32"].parent / "model.int8.onnx"
    if batches is not None and onnx_int8 is not None:
        quantize_onnx(onnx_fp32, onnx_int8, batches, glue_fp32=trained.task != "classify", metadata=meta("int8"))
    if fmt == "openvino":
        from mobilenets.deploy.openvino import export_openvino

        export_openvino(onnx_fp32, staged["fp32"], meta("fp32"))
        if batches is not None:
            export_openvino(onnx_int8, staged["int8"], meta("int8"))  # type: ignore[arg-type]
    return batches


def _reference(trained: Any, x: torch.Tensor, nms_in_graph: bool) -> list[np.ndarray]:
    from mobilenets.deploy.export import export_graph

    graph, _ = export_graph(trained.model, nms_in_graph)
    with torch.no_grad():
        ref = graph(x)
    return [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]


def _verify(args: argparse.Namespace, trained: Any, resolution: int, staged: dict[str, Path],
            summary: dict[str, Any], batches: list[torch.Tensor] | None) -> None:  # fmt: skip
    """fp32: every output within the format's tolerance of PyTorch on a random batch (one image with in-graph NMS),
    else :class:`ExportCheckError`; int8: correlation with PyTorch on real images (reported, and below
    ``INT8_MIN_CORRELATION`` an error)."""
    from mobilenets.deploy.artefact import load_artefact

    tolerance = _tolerance(args.format)
    x = torch.randn(1 if args.nms_in_graph else 4, trained.model.config.in_chans, resolution, resolution)
    outs = load_artefact(staged["fp32"], threads=1)(x)
    refs = _reference(trained, x, args.nms_in_graph)
    if args.nms_in_graph:  # detections of near-equal score may come in either order: compare them sorted
        outs, refs = _sorted_detections(outs), _sorted_detections(refs)
    diff = max(float(np.abs(o - r).max()) if o.size else 0.0 for o, r in zip(outs, refs, strict=True))
    summary["fp32_max_abs_diff"] = diff
    summary["fp32_tolerance"] = tolerance
    if not diff <= tolerance:
        raise ExportCheckError(
            f"{args.format} fp32 outputs differ from PyTorch by {diff:.3g} > tolerance {tolerance:g}; nothing written"
        )
    if batches is not None:
        real = batches[0][:8]
        got = load_artefact(staged["int8"], threads=1)(real)
        want = _reference(trained, real, False)
        corr = min(float(np.corrcoef(o.ravel(), r.ravel())[0, 1]) for o, r in zip(got, want, strict=True))
        summary["int8_output_correlation"] = round(corr, 5)
        if not corr >= INT8_MIN_CORRELATION:
            raise ExportCheckError(
                f"{args.format} int8 outputs correlate {corr:.3f} < {INT8_MIN_CORRELATION} with PyTorch's on "
                "calibration images; nothing written"
            )


def _sorted_detections(outputs: list[np.ndarray]) -> list[np.ndarray]:
    boxes, scores, labels = outputs
    order = np.lexsort((*boxes.round(3).T[::-1], labels, -scores.round(5)))
    return [boxes[order], scores[order], labels[order]]


def _tolerance(fmt: str) -> float:
    from mobilenets.deploy.export import ONNX_ATOL

    if fmt == "tflite":
        from mobilenets.deploy.tflite import TFLITE_ATOL

        return TFLITE_ATOL
    if fmt == "openvino":
        from mobilenets.deploy.openvino import OPENVINO_ATOL

        return OPENVINO_ATOL
    return ONNX_ATOL


def _evaluate(args: argparse.Namespace, trained: Any, transform: Any, resolution: int, staged: dict[str, Path],
              summary: dict[str, Any], batches: list[torch.Tensor] | None) -> None:  # fmt: skip
    data: Any = args.eval_data or None  # None: the run's own validation data, from its stored config
    if trained.task != "classify":
        from mobilenets.deploy.dense import task_metrics

        metrics = {"pytorch": task_metrics(trained, data, resolution)}
        for role, path in staged.items():
            metrics[f"{args.format}_{role}"] = task_metrics(trained, data, resolution, path)
        summary["metrics"] = metrics
        return
    from mobilenets.deploy.evaluate import exported_top1, fused_top1, torch_top1

    if data is None:  # the very images training evaluated, in the export's transform
        from mobilenets.classification.task import run_data

        data = run_data(trained.config, transform).val
    top1 = {"pytorch": torch_top1(trained.model, data, transform, trained.metadata)}
    for role, path in staged.items():
        top1[f"{args.format}_{role}"] = exported_top1(path, data, transform, trained.metadata)
    summary["top1"] = top1
    try:  # our own deploy path, where it applies (V1/V2 classifiers on an x86-64 CPU with AVX2)
        top1["fused_fp32"] = fused_top1(trained.model, data, transform, trained.metadata)
        if batches is not None:
            top1["fused_int8"] = fused_top1(trained.model, data, transform, trained.metadata, calibration=batches)
    except MobilenetsError as e:
        summary["fused_engine"] = f"skipped: {e}"


def export_latency(trained: Any, resolution: int, files: dict[str, Path], runs: int, threads: int) -> dict[str, Any]:
    """Batch-1 median milliseconds of PyTorch eager (the exported graph) and of each file in its runtime, ``runs``
    calls each spread over 5 interleaved rounds (as the benchmark times them), each file's precision label, and
    the speed-up of int8 over fp32."""
    from mobilenets.bench.export import batch1_medians
    from mobilenets.deploy.artefact import artefact_format, load_artefact

    x = torch.randn(1, trained.model.config.in_chans, resolution, resolution)
    artefacts = {f"{artefact_format(path)}_{role}": load_artefact(path, threads) for role, path in files.items()}
    xn = x.numpy()
    calls = {role: (lambda a=a: a(xn)) for role, a in artefacts.items()}
    medians = {name: round(ms, 3) for name, ms in batch1_medians(trained.model, x, calls, runs, threads).items()}
    report: dict[str, Any] = {"threads": threads, "runs": runs, "batch1_ms_median": medians}
    report["precision"] = {role: a.precision for role, a in artefacts.items()}
    fp32, int8 = (next((n for n in medians if n.endswith(role)), None) for role in ("_fp32", "_int8"))
    if fp32 and int8:
        report["int8_speedup_over_fp32"] = round(medians[fp32] / medians[int8], 2)
    return report

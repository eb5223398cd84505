"""Inference: our execution paths and peer runtimes side by side, one process, one table for several models.

Every path of a model runs the same weights (timm's row excepted). Unless a trained checkpoint is given, BatchNorm
statistics are re-estimated on real photographs before anything is timed (:mod:`mobilenets.bench.photos`), and
denormals are flushed to zero. Latency is batch 1 (median and p90 over ``runs`` calls in interleaved rounds);
throughput is batch 32; every path's output on 32 photos is compared with our eager model's. Each row says the
precision it really runs (:mod:`mobilenets.bench.peers`), and the goals are computed from the rows within a
precision class (:mod:`mobilenets.bench.goals`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenets.bench import peers
from mobilenets.bench.goals import goal_ratios
from mobilenets.bench.host import host_record, versions
from mobilenets.bench.models import BackboneTaps, FusedTaps, ModelSpec, build, parse_model_spec
from mobilenets.bench.photos import real_images
from mobilenets.bench.timing import Candidate, measure_interleaved
from mobilenets.errors import ConfigError, MobilenetsError

SPLIT_GROUPS = 4
DEFAULT_MODELS = ("mobilenet_v2",)


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    resolution: int | None = None,
    threads: int = 2,
    runs: int = 50,
    batch32_runs: int = 3,
    checkpoint: str | None = None,
    peers_on: bool = True,
    log: Callable[[str], None] = print,
    compile_path: bool = False,
    rounds: int = 5,
) -> dict[str, Any]:
    """Benchmark every model of ``models`` (``name`` or ``name@resolution``) through every path that can run it;
    returns the JSON-ready report: the host, versions, settings and one section per model with its rows, the
    notes saying which rows were skipped and why, and its goals."""
    if runs < 1 or batch32_runs < 1 or threads < 1 or rounds < 1:
        raise ConfigError(
            f"runs, batch32_runs, rounds and threads must be >= 1 (got {runs}, {batch32_runs}, {rounds}, {threads})"
        )
    specs = [parse_model_spec(m, resolution) for m in models]
    if not specs:
        raise ConfigError("name at least one model to benchmark")
    if checkpoint and len(specs) > 1:
        raise ConfigError("--checkpoint holds one model's weights: benchmark one model with it")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    host = host_record()
    sections = []
    for spec in specs:
        log(f"{spec.label} @ {spec.resolution}")
        sections.append(bench_model(spec, threads, runs, batch32_runs, checkpoint, peers_on, log, compile_path,
                                    rounds, host["isa"]))  # fmt: skip
    host["load_avg_end"] = host_record()["load_avg"]
    return {
        "threads": threads,
        "runs": runs,
        "rounds": rounds,
        "batch32_runs": batch32_runs,
        "host": host,
        "versions": versions(),
        "models": sections,
    }


def bench_model(
    spec: ModelSpec,
    threads: int,
    runs: int,
    batch32_runs: int,
    checkpoint: str | None,
    peers_on: bool,
    log: Callable[[str], None],
    compile_path: bool,
    rounds: int,
    isa: Mapping[str, bool | None],
) -> dict[str, Any]:
    """One model's section of the report."""
    images = real_images(spec.resolution, 64)
    model, weights = build(spec, images, checkpoint)
    in_chans = model.config.in_chans
    # Copies, not views: the memory tracer counts a view's whole storage (all 64 images).
    x1 = images[:1, :in_chans].clone()
    x32 = images[:32, :in_chans].clone()
    calibration = list(images[32:, :in_chans].split(8))
    with torch.no_grad():
        reference = model(x32)
    notes: list[str] = []
    candidates = our_candidates(model, x1, threads, spec.resolution, calibration, compile_path, isa, notes)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = peers.export_onnx(model, Path(tmp) / "plain.onnx", x1)
        int8_path = _quantized(fp32_path, Path(tmp) / "int8.onnx", calibration, notes)
        candidates += peers.onnxruntime_candidates(fp32_path, int8_path, threads)
        if peers_on:
            candidates += peers.openvino_candidates(fp32_path, int8_path, threads, isa, notes)
            candidates += peers.litert_candidates(model, spec.resolution, calibration, threads, Path(tmp), notes)
            if not spec.backbone_only:
                candidates += peers.timm_candidates(spec.name, images, notes)
        log(f"timing {len(candidates)} paths in {rounds} interleaved rounds ({runs} batch-1 calls, "
            f"{batch32_runs} batch-32 each)")  # fmt: skip
        results = measure_interleaved(candidates, x1, x32, reference, runs, batch32_runs, rounds, log=log)
    return {
        "model": spec.label,
        "name": spec.name,
        "resolution": spec.resolution,
        "weights": weights,
        "notes": notes,
        "results": [asdict(r) for r in results],
        "goals": goal_ratios(results, isa),
    }


def _quantized(fp32_path: Path, out: Path, calibration: list[torch.Tensor], notes: list[str]) -> Path | None:
    from mobilenets.deploy.export import quantize_onnx

    try:
        return quantize_onnx(fp32_path, out, calibration)
    except Exception as e:  # a graph ONNX Runtime's quantizer cannot handle: the int8 peer rows go, the rest stay
        notes.append(f"int8 ONNX rows skipped: quantization failed ({type(e).__name__}: {e})")
        return None


def our_candidates(
    model: nn.Module,
    x1: torch.Tensor,
    threads: int,
    resolution: int,
    calibration: list[torch.Tensor],
    compile_path: bool,
    isa: Mapping[str, bool | None],
    notes: list[str],
) -> list[Candidate]:
    """Eager, BN-folded channels_last, frozen TorchScript, the fused engine (every precision it offers here),
    optionally torch.compile, and the V2 §5.1 split executor."""
    from mobilenets.deploy.fold import compile_for_inference, fold_batchnorm, optimize_for_inference
    from mobilenets.deploy.split import split_model

    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    out = [
        Candidate("ours eager", True, "fp32", model, model_for_memory=model, runtime="pytorch eager"),
        Candidate("ours BN-folded channels_last", True, "fp32",
                  lambda x: folded(x.contiguous(memory_format=torch.channels_last)), model_for_memory=folded,
                  runtime="pytorch eager, BN folded"),
        Candidate("ours frozen TorchScript", True, "fp32", optimize_for_inference(model, x1),
                  note="BN folded, channels_last, jit.freeze", runtime="torchscript"),
    ]  # fmt: skip
    out += fused_candidates(model, threads, resolution, calibration, isa, notes)
    if compile_path:
        out.append(Candidate("ours torch.compile", True, "fp32", compile_for_inference(model, x1),
                             note="BN folded, channels_last, Inductor freezing", runtime="inductor"))  # fmt: skip
    try:
        split = split_model(model, SPLIT_GROUPS)
    except MobilenetsError as e:
        notes.append(f"§5.1 split row skipped: {e}")
    else:
        out.append(Candidate(f"ours §5.1 split t={SPLIT_GROUPS}", True, "fp32", split, model_for_memory=split,
                             runtime="pytorch eager"))  # fmt: skip
    return out


def fused_candidates(
    model: nn.Module,
    threads: int,
    resolution: int,
    calibration: list[torch.Tensor],
    isa: Mapping[str, bool | None],
    notes: list[str],
) -> list[Candidate]:
    """The fused engine's rows (fp32, int8 and, on a CPU with AMX-BF16 or AVX512-BF16, bf16), labelled by the
    precision and instruction-set level the engine says it runs (``engine.precision``, ``engine.isa``); an SSDLite
    backbone runs as far as its taps (``FusedTaps``)."""
    import inspect

    from mobilenets.deploy.fused import FusedEngine

    engine_for = FusedTaps if isinstance(model, BackboneTaps) else FusedEngine
    builds: list[tuple[str, Callable[[], Any]]] = [
        ("fp32", lambda: engine_for(model, threads)),
        ("int8", lambda: engine_for(model, threads, calibration=calibration)),
    ]
    if not (isa.get("amx_bf16") or isa.get("avx512_bf16")):
        notes.append("fused engine bf16 row skipped: this CPU has neither AMX-BF16 nor AVX512-BF16")
    elif "precision" not in inspect.signature(FusedEngine).parameters:
        notes.append("fused engine bf16 row skipped: this engine has no bf16 precision")
    else:
        builds.append(("bf16", lambda: engine_for(model, threads, precision="bf16")))
    out = []
    for wanted, make in builds:
        try:
            engine = make()
        except MobilenetsError as e:  # a model it does not run, or no compiler / AVX2
            notes.append(f"fused engine {wanted} row skipped: {e}")
            continue
        precision = str(getattr(engine, "precision", wanted))
        isa_used = getattr(engine, "isa", None)
        detail = f"isa={isa_used}" if isa_used else "isa not reported by the engine"
        if callable(getattr(engine, "run_notes", None)):  # thin expansions in fp32, the fp16 depthwise
            detail += "".join(f", {note}" for note in engine.run_notes())
        name = "ours fused engine" if precision == "fp32" else f"ours fused engine {precision}"
        out.append(Candidate(name, True, precision, engine, note="C++: BN folded, row-streamed inverted residuals",
                             activation_bytes=engine.activation_bytes(resolution, resolution), runtime="fused engine",
                             detail=detail))  # fmt: skip
    return out

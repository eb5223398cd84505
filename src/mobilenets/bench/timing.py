"""Timing primitives shared by every benchmark: timed calls, interleaved rounds, rows with their precision.

Compare paths as ratios within one run: absolute numbers depend on what else the machine is doing. Paths are timed
in round-robin passes (every other pass in reverse order) so that a change in load falls on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from mobilenets.analysis.memtrace import peak_activation_bytes

T = TypeVar("T")
Outputs = torch.Tensor | Sequence[torch.Tensor]
# fp32 probability above which a prediction counts as confident in the reduced-precision accuracy check
CONFIDENT = 0.5


@dataclass
class BenchResult:
    """One timed path of one model. ``precision`` is what the path really computes in (fp32 | bf16 | int8), read
    back from the runtime where it can say (OpenVINO's compiled ``INFERENCE_PRECISION_HINT``, the fused engine's
    ``precision``); ``detail`` says how it was established."""

    name: str
    ours: bool
    precision: str
    batch1_ms_median: float
    batch1_ms_p90: float
    batch32_img_s: float
    max_abs_diff: float | None  # vs our eager model on the 32 photos (None: other weights, e.g. timm's)
    peak_activation_bytes: int | None  # live activations in one batch-1 forward (PyTorch eager paths traced)
    note: str = ""
    # the batch-1 median of each interleaved round, in round order: ratios between paths per round
    batch1_ms_round_medians: list[float] = field(default_factory=list)
    runtime: str = ""  # "pytorch eager", "onnxruntime", "openvino", "litert", "fused engine", ...
    detail: str = ""  # e.g. "INFERENCE_PRECISION_HINT=f32", "isa=avx512"
    rel_error: float | None = None  # ‖y − y_eager‖₂ / ‖y_eager‖₂ over the 32 photos
    reference_max_abs: float | None = None  # max |y_eager|: the scale of the outputs the differences are read against
    top1_agreement: float | None = None  # argmax equal to eager's, over the 32 photos (classifiers)
    confident: int | None = None  # photos on which eager's top probability exceeds CONFIDENT
    confident_agreement: float | None = None  # top-1 agreement on those


@dataclass
class Candidate:
    """One execution path to time: ``predict`` maps a batch to the model's output(s)."""

    name: str
    ours: bool
    precision: str
    predict: Callable[[torch.Tensor], Outputs]
    compare: bool = True  # same weights as our eager model: report the differences
    model_for_memory: nn.Module | None = None
    activation_bytes: int | None = None  # known without tracing (the fused engine's scratch)
    note: str = ""
    runtime: str = ""
    detail: str = ""


def time_calls(fn: Callable[[], object], runs: int, warmup: int, warmup_s: float = 0.0) -> list[float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` untimed ones, and more untimed ones until they have
    taken ``warmup_s`` seconds in all."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    while time.perf_counter() - start < warmup_s:
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def p90(times: list[float]) -> float:
    """The 90th percentile of ``times`` (the value at index ⌊0.9·n⌋ of the sorted list, capped at the last)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def round_order(items: list[T], r: int) -> list[T]:
    """The order of round ``r``: reversed every other round, so that no path always runs first or last (measured in
    the training benchmark: always first cost ours 3–8 % in every run)."""
    return items if r % 2 == 0 else items[::-1]


# Untimed calls at the start of each timed block: at least WARMUP_CALLS, and as many more as WARMUP_S allows. After
# the pause before a block the host is slow for a few calls: measured on a 2-vCPU Xeon, with 0.2 s of sleep before
# each block, the fused engine's V2 int8 calls took 1.94, 1.38, 1.24, 1.18 ms and then ~1.11 (1.95 at one thread
# from the 5th call on, 2.72 for the first) and ONNX Runtime fp32's 4.87, 3.92, 3.64, 3.50, then ~3.35. With only
# 2 untimed calls the timed ones fell partly into that ramp (V2 int8 1.29 ms against 1.18 back to back).
WARMUP_CALLS = 5
WARMUP_S = 0.025


def interleaved_times(
    calls: dict[str, Callable[[], object]], runs: int, rounds: int, pause_s: float = 0.2
) -> dict[str, list[list[float]]]:
    """Milliseconds of ``runs`` calls of each entry, spread over ``rounds`` round-robin passes (each block: a sleep
    of ``pause_s``, untimed calls (:data:`WARMUP_CALLS`, :data:`WARMUP_S`), then its share of the timed ones), as one
    list per pass; see :func:`measure_interleaved`. Each pass runs in the reverse order of the one before
    (:func:`round_order`)."""
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    times: dict[str, list[list[float]]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in round_order(list(calls), r):
            time.sleep(pause_s)
            times[name].append(time_calls(calls[name], per_round[r], WARMUP_CALLS, WARMUP_S))
    return times


def pooled(rounds: list[list[float]]) -> list[float]:
    """The times of every round of :func:`interleaved_times` in one list."""
    return [t for round_times in rounds for t in round_times]


def as_list(y: Outputs) -> list[torch.Tensor]:
    return [y] if isinstance(y, torch.Tensor) else list(y)


def accuracy(y: Outputs, reference: Outputs) -> dict[str, float | int | None]:
    """How far ``y`` is from ``reference`` (our eager model on the same batch): max abs difference, relative L2
    error over all outputs and, for logits (N×K), top-1 agreement overall and on eager's confident predictions."""
    ys, refs = as_list(y), as_list(reference)
    diff = max(float((a.float() - b).abs().max()) for a, b in zip(ys, refs, strict=True))
    err = sum(float((a.float() - b).square().sum()) for a, b in zip(ys, refs, strict=True))
    norm = sum(float(b.square().sum()) for b in refs)
    scale = max(float(b.abs().max()) for b in refs)
    report: dict[str, float | int | None] = {
        "max_abs_diff": diff,
        "rel_error": (err / max(norm, 1e-30)) ** 0.5,
        "reference_max_abs": scale,
    }
    if len(refs) == 1 and refs[0].dim() == 2 and refs[0].shape[1] > 1:
        same = ys[0].argmax(1) == refs[0].argmax(1)
        confident = refs[0].softmax(1).amax(1) > CONFIDENT
        report["top1_agreement"] = float(same.float().mean())
        report["confident"] = int(confident.sum())
        report["confident_agreement"] = float(same[confident].float().mean()) if confident.any() else None
    return report


def measure_interleaved(
    candidates: list[Candidate],
    x1: torch.Tensor,
    x32: torch.Tensor,
    reference: Outputs,
    runs: int,
    batch32_runs: int,
    rounds: int = 5,
    log: Callable[[str], None] = print,
    pause_s: float = 0.2,
) -> list[BenchResult]:
    """Time every path in ``rounds`` round-robin passes (each pass: untimed calls, then its share of ``runs``
    timed batch-1 calls; then one timed batch-32 call per path and round), so that a change in machine load
    during the run falls on all paths alike instead of on whichever ran last. Before each block the process
    sleeps ``pause_s``: the previous runtime's worker threads spin-wait for a while after their last call, and on a
    2-core machine that spinning would be charged to the next runtime (measured: ONNX Runtime fp32 8.3 ms right after
    PyTorch paths without the pause, 5.2 ms when it ran on its own). ``reference`` is our eager model's output on
    ``x32``: every path with ``compare`` is checked against it (:func:`accuracy`)."""
    b32: dict[str, list[float]] = {c.name: [] for c in candidates}
    checks: dict[str, dict[str, float | int | None]] = {}
    with torch.no_grad():
        for c in candidates:
            checks[c.name] = accuracy(c.predict(x32), reference) if c.compare else {}
            time_calls(lambda c=c: c.predict(x1), 0, warmup=max(3, runs // 10))
        calls = {c.name: (lambda c=c: c.predict(x1)) for c in candidates}
        b1 = interleaved_times(calls, runs, rounds, pause_s)
        for r in range(batch32_runs):
            for c in round_order(candidates, r):
                time.sleep(pause_s)
                b32[c.name] += time_calls(lambda c=c: c.predict(x32), 1, warmup=0)
    results = []
    for c in candidates:
        times = pooled(b1[c.name])
        peak = peak_activation_bytes(c.model_for_memory, x1) if c.model_for_memory is not None else c.activation_bytes
        check = checks[c.name]
        result = BenchResult(
            name=c.name,
            ours=c.ours,
            precision=c.precision,
            batch1_ms_median=statistics.median(times),
            batch1_ms_p90=p90(times),
            batch32_img_s=len(x32) * 1e3 / statistics.median(b32[c.name]),
            max_abs_diff=check.get("max_abs_diff"),  # type: ignore[arg-type]
            peak_activation_bytes=peak,
            note=c.note,
            batch1_ms_round_medians=[statistics.median(round_times) for round_times in b1[c.name]],
            runtime=c.runtime,
            detail=c.detail,
            rel_error=check.get("rel_error"),  # type: ignore[arg-type]
            top1_agreement=check.get("top1_agreement"),  # type: ignore[arg-type]
            confident=check.get("confident"),  # type: ignore[arg-type]
            confident_agreement=check.get("confident_agreement"),  # type: ignore[arg-type]
            reference_max_abs=check.get("reference_max_abs"),  # type: ignore[arg-type]
        )
        log(
            f"  {result.name:34s} {result.precision:5s} {result.batch1_ms_median:8.2f} ms"
            f"  {result.batch32_img_s:8.1f} img/s"
        )
        results.append(result)
    return results

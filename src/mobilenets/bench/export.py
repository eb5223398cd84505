"""Latency of an exported model against the PyTorch graph it was exported from (``mobilenets export
--latency-runs``), timed in interleaved rounds as the inference benchmark times its paths."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mobilenets.bench.timing import interleaved_times, pooled


def batch1_medians(
    model: torch.nn.Module, x: torch.Tensor, calls: Mapping[str, Callable[[], object]], runs: int, threads: int
) -> dict[str, float]:
    """Batch-1 median milliseconds of the PyTorch graph ``model`` exports (as ``pytorch``) and of each of ``calls``
    (an exported file run in its runtime), ``runs`` calls each spread over 5 interleaved rounds."""
    from mobilenets.deploy.export import export_graph

    torch.set_num_threads(threads)
    graph, _ = export_graph(model)
    with torch.no_grad():
        times = interleaved_times({"pytorch": lambda: graph(x), **calls}, runs, rounds=5)
    return {name: statistics.median(pooled(rounds)) for name, rounds in times.items()}


def export_latency(
    model: torch.nn.Module, files: Mapping[str, str | Path], x: torch.Tensor, runs: int, threads: int
) -> dict[str, Any]:
    """Batch-1 median milliseconds of ``model`` (PyTorch eager, the graph the ONNX files hold) and of each ONNX
    file in ONNX Runtime (:func:`batch1_medians`), and each file's speed-up over the first (fp32) file."""
    from mobilenets.deploy.export import ort_session, run_onnx_all

    sessions = {name: ort_session(f, threads) for name, f in files.items()}
    calls = {name: (lambda s=s: run_onnx_all(s, x)) for name, s in sessions.items()}
    medians = {name: round(ms, 2) for name, ms in batch1_medians(model, x, calls, runs, threads).items()}
    first = next(iter(files))
    report: dict[str, Any] = {"threads": threads, "runs": runs, "batch1_ms_median": medians}
    report["speedup_over_" + first] = {n: round(medians[first] / medians[n], 2) for n in files if n != first}
    return report

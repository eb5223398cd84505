"""Batch-1 detection latency with post-processing (decode + softmax + NMS), as a JSON-able dict.

``mobilenets bench-detect ssdlite_mobilenet_v2 --resolution 320 --out latency.json``. Weights are random, so
the post-processing sees the untrained model's many low-score candidates: the score threshold and pre-NMS
top-k bound that work exactly as they would for a trained model.
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch

from mobilenets.analysis.bench import p90, time_calls
from mobilenets.registry import create_model


@torch.no_grad()
def bench_latency(
    name: str = "ssdlite_mobilenet_v2",
    resolution: int = 320,
    num_classes: int = 80,
    threads: int = 0,
    warmup: int = 5,
    runs: int = 30,
) -> dict[str, Any]:
    """Median / p90 milliseconds of ``model.predict`` on one image, and of the network alone."""
    if threads:
        torch.set_num_threads(threads)
    model = create_model(name, num_classes=num_classes).eval()
    x = torch.rand(1, 3, resolution, resolution)

    time_calls(lambda: model.predict(x), 0, warmup)
    # Interleaved, so that a change in the machine's load hits both measurements alike.
    total, raw = [], []
    for _ in range(runs):
        total += time_calls(lambda: model.predict(x), 1, 0)
        raw += time_calls(lambda: model.forward_raw(x), 1, 0)

    def stats(ms: list[float]) -> dict[str, float]:
        return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(p90(ms), 2)}

    return {
        "model": name,
        "resolution": resolution,
        "num_classes": num_classes,
        "batch": 1,
        "with_postprocessing": stats(total),
        "network_only": stats(raw),
        "runs": runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }

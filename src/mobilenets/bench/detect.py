"""Batch-1 detection latency with post-processing (decode + softmax + NMS) and of the network alone.

Weights are random, so the post-processing sees the untrained model's many low-score candidates: the score
threshold and pre-NMS top-k bound that work exactly as they would for a trained model (its worst case).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from mobilenets.bench.host import host_record, versions
from mobilenets.bench.timing import p90, time_calls
from mobilenets.errors import ConfigError


@torch.no_grad()
def detection_latency(
    name: str = "ssdlite_mobilenet_v2",
    resolution: int = 320,
    num_classes: int = 80,
    threads: int = 0,
    warmup: int = 5,
    runs: int = 30,
) -> dict[str, Any]:
    """Median / p90 milliseconds of ``model.predict`` on one image, and of ``forward_raw``, interleaved call by
    call so that a change in the machine's load hits both alike."""
    from mobilenets.registry import create_model

    if runs < 1 or warmup < 0 or threads < 0:
        raise ConfigError(f"need runs >= 1, warmup >= 0, threads >= 0 (got {runs}, {warmup}, {threads})")
    if threads:
        torch.set_num_threads(threads)
    model = create_model(name, num_classes=num_classes).eval()
    if not hasattr(model, "predict") or not hasattr(model, "forward_raw"):
        raise ConfigError(f"{name} is not a detector (bench detect times SSDLite models)")
    x = torch.rand(1, 3, resolution, resolution)
    time_calls(lambda: model.predict(x), 0, warmup)
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
        "host": host_record(),
        "versions": versions(),
    }

"""Training throughput of our MobileNetV2 vs timm's ``mobilenetv2_100`` (same batch, resolution, memory format,
threads, optimiser): ``python -m mobilenets.classification.bench --json out.json``.

timm is a test/bench dependency only (it imports torchvision, whose wheel here is CUDA-only: the two operator
schemas it needs are declared first). Rounds alternate between the two models so load from other processes hits
both alike; the median images/s of each is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.analysis.bench import round_order
from mobilenets.registry import create_model


def import_timm():  # type: ignore[no-untyped-def]
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm

    return timm


def step_time(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    timm = import_timm()
    models = {"mobilenets": create_model("mobilenet_v2"), "timm": timm.create_model("mobilenetv2_100")}
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = torch.randn(a.batch_size, 3, a.resolution, a.resolution).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (a.batch_size,))
    opts = {}
    for name, m in models.items():
        m.train().to(memory_format=fmt)
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        step_time(m, opts[name], x, y, 2)  # warm-up: oneDNN primitive creation
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(a.rounds):
        for name in round_order(list(models), r):
            times[name].append(step_time(models[name], opts[name], x, y, a.steps))
    ips = {k: a.batch_size / statistics.median(v) for k, v in times.items()}
    result = {
        "batch_size": a.batch_size, "resolution": a.resolution, "threads": a.threads,
        "channels_last": a.channels_last, "rounds": a.rounds, "steps_per_round": a.steps,
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "ratio_ours_over_timm": round(ips["mobilenets"] / ips["timm"], 3),
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

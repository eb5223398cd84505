"""Training throughput: our model against timm's counterpart, same batch, resolution, memory format, threads and
optimiser (forward, cross-entropy, backward, SGD step). Rounds alternate which model goes first so that load from
other processes hits both alike; the median images/s of each is reported, with the ratio per round."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.bench.host import host_record, versions
from mobilenets.bench.peers import TIMM_NAMES, _import_timm
from mobilenets.bench.timing import round_order
from mobilenets.errors import ConfigError


def step_time(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds per optimiser step, averaged over ``steps``."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def train_throughput(
    model_name: str = "mobilenet_v2",
    batch_size: int = 32,
    resolution: int = 224,
    rounds: int = 5,
    steps: int = 3,
    threads: int = 2,
    channels_last: bool = False,
    peer: bool = True,
) -> dict[str, Any]:
    """Images/s of training steps of ``model_name`` (and of timm's counterpart with ``peer``), as a JSON-able dict."""
    from mobilenets.registry import create_model

    if min(batch_size, resolution, rounds, steps, threads) < 1:
        raise ConfigError("batch size, resolution, rounds, steps and threads must all be >= 1")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {"ours": create_model(model_name)}
    notes = []
    if peer and model_name in TIMM_NAMES:
        models["timm"] = _import_timm().create_model(TIMM_NAMES[model_name])
    elif peer:
        notes.append(f"timm row skipped: no timm counterpart registered for {model_name}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, resolution, resolution).contiguous(memory_format=fmt)
    y = torch.randint(0, models["ours"].config.num_classes, (batch_size,))
    opts = {}
    for name, m in models.items():
        m.train().to(memory_format=fmt)
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        step_time(m, opts[name], x, y, 2)  # warm-up: oneDNN primitive creation
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        for name in round_order(list(models), r):
            times[name].append(step_time(models[name], opts[name], x, y, steps))
    ips = {k: batch_size / statistics.median(v) for k, v in times.items()}
    report: dict[str, Any] = {
        "model": model_name, "batch_size": batch_size, "resolution": resolution, "threads": threads,
        "channels_last": channels_last, "rounds": rounds, "steps_per_round": steps,
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "notes": notes, "host": host_record(), "versions": versions(),
    }  # fmt: skip
    if "timm" in ips:
        report["ratio_ours_over_timm"] = round(ips["ours"] / ips["timm"], 3)
        report["ratio_per_round"] = [round(b / a, 3) for a, b in zip(times["ours"], times["timm"], strict=True)]
    return report

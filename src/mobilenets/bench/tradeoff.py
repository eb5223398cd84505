"""A trade-off figure in the spirit of V2 Figure 5, from our own counts and timings.

Every width multiplier × resolution of a model: multiply-adds against parameters (from ``profile``), and the
measured batch-1 CPU latency of our fastest fp32 path (the fused engine where it runs, else frozen TorchScript)
against multiply-adds. The paper plots ImageNet top-1 against MAdds; no ImageNet weights exist here, so the
second panel shows what can be measured: latency.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mobilenets.analysis.profile import profile
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import time_calls

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class TradeoffPoint:
    width: float
    resolution: int
    params: int
    madds: int
    latency_ms: float | None  # batch-1 median of `path`
    path: str | None = None  # "fused engine" or "frozen TorchScript"


def tradeoff_points(
    model_name: str = "mobilenet_v2",
    widths: Sequence[float] = WIDTHS,
    resolutions: Sequence[int] = RESOLUTIONS,
    runs: int = 20,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> list[TradeoffPoint]:
    """Params, MAdds and (``runs`` > 0) measured latency for every width × resolution."""
    from mobilenets.registry import create_model

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    points = []
    for width in widths:
        torch.manual_seed(0)
        model = create_model(model_name, width=width).eval()
        for resolution in resolutions:
            counts = profile(model, resolution)
            latency, path = None, None
            if runs > 0:
                images = real_images(resolution, 8)
                recalibrate_batchnorm(model, images)
                fast, path = fastest_fp32_path(model, images[:1], threads)
                with torch.no_grad():
                    latency = statistics.median(time_calls(lambda f=fast, x=images[:1]: f(x), runs, warmup=3))
            points.append(TradeoffPoint(width, resolution, counts.params, counts.madds, latency, path))
            shown = "-" if latency is None else f"{latency:.2f} ms ({path})"
            log(
                f"  width {width:<5} {resolution:>4d}px {counts.params / 1e6:6.2f}M params "
                f"{counts.madds / 1e6:7.1f}M MAdds {shown}"
            )
    return points


def fastest_fp32_path(
    model: torch.nn.Module, example: torch.Tensor, threads: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """Our fastest fp32 path for ``model`` here: the fused engine where it can run, else frozen TorchScript."""
    from mobilenets.deploy.fold import optimize_for_inference
    from mobilenets.deploy.fused import FusedEngine
    from mobilenets.errors import MobilenetsError

    try:
        return FusedEngine(model, threads), "fused engine"
    except MobilenetsError:  # V3, or no compiler / AVX2 here
        return optimize_for_inference(model, example), "frozen TorchScript"


def plot_tradeoff(points: Sequence[TradeoffPoint], path: str | Path, title: str) -> None:
    """Two panels: MAdds vs params, and latency vs MAdds; one line per width, one marker per resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = any(p.latency_ms is not None for p in points)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 6, 5), squeeze=False)
    widths = sorted({p.width for p in points})
    for width in widths:
        row = sorted((p for p in points if p.width == width), key=lambda p: p.resolution)
        madds = [p.madds / 1e6 for p in row]
        axes[0][0].plot(madds, [p.params / 1e6 for p in row], "o-", label=f"α = {width}")
        for p, m in zip(row, madds, strict=True):
            axes[0][0].annotate(str(p.resolution), (m, p.params / 1e6), fontsize=7, alpha=0.7)
        if timed:
            axes[0][1].plot(madds, [p.latency_ms for p in row], "o-", label=f"α = {width}")
    axes[0][0].set(xscale="log", xlabel="multiply-adds (M)", ylabel="parameters (M)", title=f"{title}: cost")
    axes[0][0].legend()
    if timed:
        paths = sorted({p.path for p in points if p.path})
        axes[0][1].set(xscale="log", xlabel="multiply-adds (M)", ylabel="batch-1 latency, median (ms)",
                       title=f"{title}: measured CPU latency ({', '.join(paths)})")  # fmt: skip
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def points_to_dicts(points: Sequence[TradeoffPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]

"""The MobileNetV2 paper's Figure 6 repeated on real data: (a) linear vs ReLU6 after the projection,
(b) shortcut between bottlenecks (the design) vs between expansion layers vs none — several seeds each,
reported as mean ± sample standard deviation of the final held-out top-1."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mobilenets.checkpoint import atomic_write
from mobilenets.config import TrainConfig
from mobilenets.engine.checkpoints import POINTER, find_last, read_state
from mobilenets.engine.task import Task

# name → model overrides; the first is the paper's design, the reference for both ablations
VARIANTS: dict[str, dict[str, str]] = {
    "design": {"project_act": "linear", "shortcut": "bottleneck"},
    "relu6_projection": {"project_act": "relu6", "shortcut": "bottleneck"},
    "expansion_shortcut": {"project_act": "linear", "shortcut": "expansion"},
    "no_shortcut": {"project_act": "linear", "shortcut": "none"},
}


def _finished_rows(folder: Path, epochs: int) -> list[dict[str, Any]] | None:
    """The log rows of a run that already reached ``epochs`` (so an interrupted ablation skips it)."""
    if not (folder / POINTER).is_file():
        return None
    state = read_state(find_last(folder)[1])  # safetensors + JSON: reading a run folder never runs code
    return state["rows"] if state["epoch"] >= epochs else None


def run_ablation(
    train: Callable[[Callable[[TrainConfig], Task], TrainConfig], dict[str, Any]],
    build_task: Callable[[TrainConfig], Task],
    base: TrainConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: Path,
) -> dict[str, Any]:
    """Train every (variant, seed) under ``out/<variant>/seed<k>`` (finished ones are reused); summarise."""
    results: dict[str, list[float]] = {}
    for name in variants:
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            resume = str(folder) if (folder / POINTER).is_file() else None
            config = base.replace(
                {"classify": VARIANTS[name], "run": {"seed": seed, "out": str(folder), "resume": resume}}
            )
            rows = _finished_rows(folder, config.optim.epochs)
            if rows is None:
                train(build_task, config)
                rows = _finished_rows(folder, config.optim.epochs) or []
            results.setdefault(name, []).append(float(rows[-1]["val_top1"]))
    summary = {
        "variants": {k: VARIANTS[k] for k in variants},
        "seeds": list(seeds),
        "top1": results,
        "mean": {k: statistics.fmean(v) for k, v in results.items()},
        "std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in results.items()},
    }
    atomic_write(out / "ablation.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    atomic_write(out / "ablation.md", lambda tmp: tmp.write_text(markdown_table(summary)))
    plot(summary, out / "ablation.png")
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| variant | projection | shortcut | top-1 mean ± std | seeds |", "|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        m, s = summary["mean"][name], summary["std"][name]
        per = ", ".join(f"{x:.4f}" for x in summary["top1"][name])
        lines.append(f"| {name} | {v['project_act']} | {v['shortcut']} | {m:.4f} ± {s:.4f} | {per} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        ys = summary["top1"][name]
        ax.scatter([i] * len(ys), ys, color="grey", s=12, zorder=2)
        ax.errorbar(i, summary["mean"][name], yerr=summary["std"][name], fmt="o", capsize=6, color="C0", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set(ylabel="held-out top-1", title=f"V2 Figure 6 ablations, {len(summary['seeds'])} seeds (mean ± std)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

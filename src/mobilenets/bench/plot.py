"""The inference benchmark as a figure: one panel per model, batch-1 median latency per path, ours in blue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PRECISION_HATCH = {"fp32": "", "bf16": "//", "fp16": "//", "int8": ".."}


def plot_bench(report: dict[str, Any], path: str | Path) -> None:
    """Horizontal bars of batch-1 median latency (hatched: bf16 / int8), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    sections = report["models"]
    heights = [0.4 * len(s["results"]) + 1.0 for s in sections]
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    host = report["host"]
    flags = ", ".join(name for name, on in host["isa"].items() if on) or "flags unknown"
    for ax, section in zip(axes[:, 0], sections, strict=True):
        rows = sorted(section["results"], key=lambda r: r["batch1_ms_median"])
        bars = ax.barh([f"{r['name']} ({r['precision']})" for r in rows], [r["batch1_ms_median"] for r in rows],
                       color=["tab:blue" if r["ours"] else "tab:gray" for r in rows])  # fmt: skip
        for bar, r in zip(bars, rows, strict=True):
            bar.set_hatch(PRECISION_HATCH.get(r["precision"], "xx"))
            ax.annotate(f"{r['batch1_ms_median']:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)  # fmt: skip
        ax.invert_yaxis()
        ax.set_xscale("log")  # eager paths and compiled runtimes differ by one to two orders of magnitude
        # Plain numbers at 1-2-5 steps (the default labels powers of ten, and every minor tick as 2×10^0, which
        # overlap)
        ax.xaxis.set_major_locator(FixedLocator([m * 10**e for e in range(-2, 4) for m in (1, 2, 5)]))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(f"{section['model']} @ {section['resolution']}, batch 1, {report['threads']} threads", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("batch-1 latency, median (ms, log scale); blue: ours; hatched: bf16 (//) / int8 (..)")
    fig.suptitle(f"{host['cpu_model']} ({flags})", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=120)
    plt.close(fig)

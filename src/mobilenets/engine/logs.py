"""Per-epoch records: a CSV, TensorBoard scalars and a PNG of the curves (rank 0 only)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mobilenets.checkpoint import atomic_write


class RunLog:
    """Rows of per-epoch metrics, kept in memory (and in the checkpoint) and rewritten atomically each epoch,
    so a resumed run's CSV has exactly one row per finished epoch."""

    def __init__(self, out: Path, rows: list[dict[str, Any]] | None = None, tensorboard: bool = True) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.scalar(f"epoch/{key}", float(value), int(row["epoch"]))
        if self.writer is not None:
            self.writer.flush()
        self.write_csv()
        plot_curves(self.rows, self.out / "curves.png")

    def write_csv(self) -> None:
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.out / "metrics.csv", write)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss (train, and val when present) on the left, every other validation metric on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        pts = [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if isinstance(r.get(key), (int, float))]
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    metric_keys = [k for k in rows[-1] if k.startswith("val_") and k != "val_loss"]
    for key in metric_keys:
        pts = [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if isinstance(r.get(key), (int, float))]
        if pts:
            ax_metric.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax_metric.set(xlabel="epoch", title="validation")
    if metric_keys:
        ax_metric.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

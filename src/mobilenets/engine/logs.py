"""Per-epoch records: a CSV, TensorBoard scalars and a PNG of the curves (rank 0 only), and the progress
display — a bar on a terminal, a few plain lines in a log file."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mobilenets.checkpoint import atomic_write

# Validation metrics that are fractions (higher is better), by task: what the curves' metric axis shows.
# Counts (``n``, ``skipped``, ``pixels``) and losses never go there.
FRACTION_METRICS = ("top1", "top5", "mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "miou", "pixel_acc")
_LABELS = {"top1": "top-1", "top5": "top-5", "miou": "mIoU", "pixel_acc": "pixel accuracy"}
_tensorboard_noted = False


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
            except ImportError:  # tensorboard is optional at run time; say so once per process, not per run
                _note_no_tensorboard()

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


def _note_no_tensorboard() -> None:
    global _tensorboard_noted
    if not _tensorboard_noted:
        _tensorboard_noted = True
        print(
            "note: TensorBoard is not installed, so no tb/ logs are written (metrics.csv and curves.png are); "
            "pip install tensorboard to have them",
            file=sys.stderr,
        )


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`curves_figure` of ``rows`` as a PNG (nothing for no rows)."""
    if not rows:
        return
    import matplotlib.pyplot as plt

    fig = curves_figure(rows)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def curves_figure(rows: list[dict[str, Any]]) -> Any:
    """Loss (train, and val when present) on the left; the validation metrics that are fractions (top-1, mAP,
    mIoU, …: ``FRACTION_METRICS``) on the right, on a 0–1 axis of their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]

    def series(key: str) -> list[tuple[Any, float]]:
        return [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if isinstance(r.get(key), (int, float))]

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if pts := series(key):
            ax_loss.plot(*zip(*pts, strict=True), marker="o", label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    present = {k for r in rows for k in r}
    metrics = [m for m in FRACTION_METRICS if f"val_{m}" in present]
    for m in metrics:
        if pts := series(f"val_{m}"):
            ax_metric.plot(*zip(*pts, strict=True), marker="o", label=_LABELS.get(m, m))
    names = ", ".join(_LABELS.get(m, m) for m in metrics[:3])
    ax_metric.set(xlabel="epoch", ylabel="fraction", ylim=(0, 1), title=f"validation {names}".strip())
    if metrics:
        ax_metric.legend()
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class Progress:
    """The progress of one epoch with tqdm's interface (``update``, ``set_postfix``, ``close``).

    On a terminal it is a tqdm bar. Otherwise (a log file, a pipe, a CI job) a bar's redraws would be one line
    per step, so it writes a plain line only when the epoch passes another tenth *and* at least
    ``min_interval_s`` have gone by since its last line: a short epoch writes nothing (the epoch's summary row
    follows), an hour-long one at most ten lines."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        disable: bool = False,
        file: TextIO | None = None,
        min_interval_s: float = 60.0,
        **bar_options: Any,
    ) -> None:
        self.file = file if file is not None else sys.stderr
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.min_interval_s = min_interval_s
        self.postfix: dict[str, Any] = {}
        self.bar = None
        if not disable and _is_terminal(self.file):
            self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.file, **bar_options)
        self.last_line = time.monotonic()
        self.last_tenth = self._tenth()

    def _tenth(self) -> int:
        return 10 * self.n // max(self.total, 1)

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.disable:
            return
        tenth, now = self._tenth(), time.monotonic()
        if tenth > self.last_tenth and now - self.last_line >= self.min_interval_s:
            self.last_tenth, self.last_line = tenth, now
            extra = "  ".join(f"{k}={v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} steps ({10 * tenth}%)  {extra}".rstrip(), file=self.file)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(f: TextIO) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):  # a closed or file-like object without a terminal
        return False

"""Classification metrics from one sufficient statistic — the confusion matrix — plus top-5 hits and loss."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.checkpoint import atomic_write


@dataclass
class Counts:
    """What evaluation accumulates; sums over batches and ranks."""

    confusion: torch.Tensor  # C×C int64, rows = true class, columns = predicted
    top5: int = 0
    loss_sum: float = 0.0
    skipped: int = 0

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def as_tensor(self) -> torch.Tensor:
        extra = torch.tensor([self.top5, self.loss_sum, self.skipped], dtype=torch.float64)
        return torch.cat([self.confusion.flatten().double(), extra])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, num_classes: int) -> Counts:
        c = num_classes * num_classes
        conf = t[:c].round().long().reshape(num_classes, num_classes)
        return cls(conf, round(t[c].item()), float(t[c + 1].item()), round(t[c + 2].item()))


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of the class probabilities for an image and its mirror image.

    Returns log-probabilities, so arg-max, top-k and cross-entropy read them like logits.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:  # a module or the fused engine
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.model(torch.cat([x, x.flip(-1)])).float().log_softmax(1)
        # log of the mean probability, without underflow for confident wrong answers
        return both.view(2, len(x), -1).logsumexp(0) - math.log(2)


def accumulate(model: nn.Module, batches: Iterable[dict[str, Any]], num_classes: int) -> Counts:
    counts = Counts(torch.zeros(num_classes, num_classes, dtype=torch.long))
    for batch in batches:
        logits = model(batch["images"]).float()
        labels = batch["labels"]
        pred = logits.argmax(1)
        counts.confusion += torch.bincount(
            labels.cpu() * num_classes + pred.cpu(), minlength=num_classes * num_classes
        ).reshape(num_classes, num_classes)
        k = min(5, num_classes)
        counts.top5 += int((logits.topk(k, 1).indices == labels[:, None]).any(1).sum())
        counts.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        counts.skipped += int(batch.get("skipped", 0))
    return counts


def summarise(counts: Counts) -> dict[str, float]:
    n = max(counts.n, 1)
    return {
        "top1": float(counts.confusion.diag().sum()) / n,
        "top5": counts.top5 / n,
        "loss": counts.loss_sum / n,
        "n": float(counts.n),
        "skipped": float(counts.skipped),
    }


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    totals = confusion.sum(1).clamp(min=1)
    return (confusion.diag().double() / totals).tolist()


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = confusion.double()
    norm = c / c.sum(1, keepdim=True).clamp(min=1)
    k = len(classes)
    # 0.6 in per class, but wide enough for a title and bounded for ImageNet's 1000 classes (names then unlabelled)
    side = min(max(5.0, 1.0 + 0.6 * k), 16.0)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), classes, rotation=60, ha="right")
        ax.set_yticks(range(k), classes)
    title = title or "confusion matrix (row-normalised; counts shown)"
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, width=int(side * 11)), fontsize=9)  # ~11 characters per inch at 9 pt
    if k <= 30:
        for i in range(k):
            for j in range(k):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(c[i, j])), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

"""What the one training engine needs from a task (classification, detection, segmentation).

The engine owns the loop: devices, DDP, autocast, channels_last, optimiser and schedule, EMA, progress, logs,
curves, atomic checkpoints, exact resume, non-finite-loss stops. A task owns what differs: its model, data,
loss and metric. Nothing else may grow a second training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset


class Task(Protocol):
    name: str  # "classify" | "detect" | "segment"
    primary_metric: str  # the key of ``evaluate``'s result used to pick the best checkpoint (higher is better)

    def build_model(self) -> nn.Module:
        """The model to train (a registered model; ``model.config`` and ``model.registry_name`` set)."""
        ...

    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets; items are whatever ``collate`` understands. Decoding happens in workers."""
        ...

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch items; the engine moves every tensor in the result to the device (nested dicts/lists ok)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward a training batch: (scalar loss to backpropagate, named scalars to log)."""
        ...

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader, distributed: bool) -> dict[str, float]:
        """Metrics over the whole validation set; under DDP each rank sees a shard and the task reduces
        its sufficient statistics (counts, confusion matrix, detections) across ranks before computing."""
        ...

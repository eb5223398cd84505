"""What the one training engine needs from a task (classification, detection, segmentation).

The engine owns the loop: devices, DDP, autocast, channels_last, optimiser and schedule, EMA, progress, logs,
curves, atomic checkpoints, exact resume, non-finite-loss stops. A task owns what differs: its model, data,
loss and metric. Nothing else may grow a second training loop.

THE CONTRACT (classification, detection and segmentation implement exactly this; none of them prints)
=====================================================================================================

1. A task package exposes a module ``mobilenets.<package>.task`` (``TASK_MODULES``) with:

   ``build_task(config: mobilenets.config.TrainConfig) -> Task``
       Called on every rank, and on ``--resume`` with the run's stored config. Everything a task needs is in
       ``config`` (``config.model``, ``config.data``, ``config.optim``, ``config.run`` and its own section
       ``config.options``); store nothing outside it.
   ``evaluate_checkpoint(trained, cfg: EvalConfig, predictor=None) -> dict``
       ``mobilenets eval``: the task's metrics of a loaded checkpoint (``engine.checkpoints.load_trained``: model
       in eval mode, its stored ``TrainConfig``, its ``metadata()``) on ``cfg.data``, by default the run's own
       validation data rebuilt from the stored config. ``predictor`` (a deploy path: the fused engine, an ONNX
       session) takes the model's place, so a deployed model is scored by the same metric code.
   ``eval_lines(result, cfg) -> list[str]``
       The text summary the command prints (``--json`` prints ``result``).
   ``predict_images(trained, cfg: PredictConfig, paths, ...) -> list[dict]`` and ``prediction_line(result)``
       ``mobilenets predict``: one result per input; an unreadable input gets an ``error`` entry instead.

   The commands (``mobilenets.commands.train`` / ``eval`` / ``predict``) import the module lazily; eval and
   predict read the task from the checkpoint's metadata.

2. The ``Task`` object (below). Rules the engine relies on:
   - ``loss`` must run the model through ``model(...)`` (its ``forward``): under DDP ``model`` is the
     ``DistributedDataParallel`` wrapper and any other method would skip gradient synchronisation.
     ``evaluate`` gets the bare module (or the EMA copy) in eval mode, so it may call any method.
   - Every tensor in what ``collate`` returns (nested dicts/lists/tuples) is moved to the device; 4-D float
     tensors are also made channels_last when ``run.channels_last`` is on.
   - Randomness in ``__getitem__`` (augmentation) is made reproducible by the engine: it wraps each dataset
     in ``engine.data.SeededDataset``, which seeds ``torch``, ``random`` and ``numpy`` from (seed, epoch,
     index) around each item. Use those global generators; do not seed anything yourself.
   - ``evaluate`` under DDP receives a loader over this rank's shard (no padding, no duplicates) and must
     all-reduce its sufficient statistics (``torch.distributed.all_reduce`` on counts, or
     ``engine.distributed.all_gather_object`` for detections) so every rank returns the same metrics.
   - ``primary_metric`` names a key of ``evaluate``'s result, higher is better; it picks ``best.safetensors``.
   - Optional: ``metadata() -> dict`` (class names, transform) stored in every checkpoint and returned by
     ``load_trained``.

3. What a run writes under ``run.out`` (rank 0 only): ``last.json`` (pointer to the newest complete
   checkpoint, written last and atomically), ``checkpoints/<tag>.safetensors`` (model weights, loadable by
   ``create_model(name, weights=...)``; its metadata also holds the task name and the whole ``TrainConfig``)
   with the training state beside it, ``best.safetensors`` (best ``primary_metric``, EMA weights when EMA is
   on), ``metrics.csv``, ``tb/`` (TensorBoard), ``curves.png``. ``mobilenets eval --checkpoint`` accepts the run
   folder, ``last.json``, or any ``*.safetensors`` above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

TASK_MODULES = {
    "classify": "mobilenets.classification.task",
    "detect": "mobilenets.detection.task",
    "segment": "mobilenets.segmentation.task",
}


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

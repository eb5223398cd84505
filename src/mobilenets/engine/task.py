"""What the one training engine needs from a task (classification, detection, segmentation).

The engine owns the loop: devices, DDP, autocast, channels_last, optimiser and schedule, EMA, progress, logs,
curves, atomic checkpoints, exact resume, non-finite-loss stops. A task owns what differs: its model, data,
loss and metric. Nothing else may grow a second training loop.

THE CONTRACT (detection and segmentation implement exactly this)
================================================================

1. A task package exposes a module ``mobilenets.<package>.task`` (``classification``, ``detection``,
   ``segmentation``; see ``TASK_MODULES``) with four module-level functions:

   ``add_arguments(parser: argparse.ArgumentParser, command: str) -> None``
       Add the task's OWN flags for ``command`` in {"train", "eval", "predict"}. Never re-add a common flag
       (``COMMON_TRAIN_FLAGS`` / ``COMMON_EVAL_FLAGS`` / ``COMMON_PREDICT_FLAGS`` below): argparse would raise.
       Set defaults here; ``args`` then always has every attribute.
   ``build_task(args: argparse.Namespace) -> Task``
       ``args`` is the parsed ``mobilenets train`` namespace (common + task flags). Called on every rank and
       again on ``--resume`` with the namespace stored in the checkpoint (so store nothing outside ``args``).
   ``evaluate_main(args: argparse.Namespace) -> int``
       ``mobilenets eval --checkpoint C ...`` after the CLI read the task name from C. Load with
       ``mobilenets.engine.checkpoints.load_trained(args.checkpoint, device)`` (model in eval mode, EMA weights
       when the run had EMA, the stored train namespace and the task's ``metadata()``). Print a summary, or
       JSON with ``--json`` (``mobilenets.cli.print_json``). Return the exit status.
   ``predict_main(args: argparse.Namespace) -> int``
       ``mobilenets predict --checkpoint C INPUTS...`` likewise (``args.inputs``: list of paths).

   The CLI (``mobilenets.commands.classify``) imports the module lazily: ``mobilenets train --task detect``
   imports ``mobilenets.detection.task``; eval/predict read the task from the checkpoint's metadata.

2. Common flags the CLI defines (attribute names on ``args``):
   train:   task, model, width, resolution, num_classes, output_stride, dropout, data, val_data, val_split,
            epochs, batch_size (per process), accum_steps, lr, weight_decay, preset ("paper" | "modern"),
            optimizer, warmup_epochs, label_smoothing, ema_decay, out, resume, seed, workers, init, threads,
            device ("cpu" | "cuda" | "auto"), bf16, channels_last, checkpoint_every (steps, 0 = per epoch
            only), eval_every (epochs), max_steps (0 = no limit; for smoke tests), log_every, no_progress.
            ``label_smoothing`` is for the task's loss to read (classification uses it; others may ignore it).
   eval:    checkpoint, data, batch_size, workers, device, threads, json, out (folder for plots; optional).
   predict: checkpoint, inputs (positional, files or folders), top_k, device, threads, json.

3. The ``Task`` object (below). Rules the engine relies on:
   - ``loss`` must run the model through ``model(...)`` (its ``forward``): under DDP ``model`` is the
     ``DistributedDataParallel`` wrapper and any other method would skip gradient synchronisation.
     ``evaluate`` gets the bare module (or the EMA copy) in eval mode, so it may call any method.
   - Every tensor in what ``collate`` returns (nested dicts/lists/tuples) is moved to the device; 4-D float
     tensors are also made channels_last when ``--channels-last`` is on.
   - Randomness in ``__getitem__`` (augmentation) is made reproducible by the engine: it wraps each dataset
     in ``engine.data.SeededDataset``, which seeds ``torch``, ``random`` and ``numpy`` from (seed, epoch,
     index) around each item. Use those global generators; do not seed anything yourself.
   - ``evaluate`` under DDP receives a loader over this rank's shard (no padding, no duplicates) and must
     all-reduce its sufficient statistics (``torch.distributed.all_reduce`` on counts, or
     ``engine.distributed.all_gather_object`` for detections) so every rank returns the same metrics.
   - ``primary_metric`` names a key of ``evaluate``'s result, higher is better; it picks ``best.safetensors``.
   - Optional: ``metadata() -> dict[str, str]`` (e.g. class names as JSON) stored in every checkpoint and
     returned by ``load_trained``; ``train_transform_summary() -> str`` is not needed.

4. What a run writes under ``--out`` (rank 0 only): ``last.json`` (pointer to the newest complete
   checkpoint, written last and atomically), ``checkpoints/<tag>.safetensors`` (model weights, loadable by
   ``create_model(name, weights=...)``; metadata also holds the task name and train args) +
   ``checkpoints/<tag>.state.pt`` (optimiser, EMA, RNG states, epoch, step), ``best.safetensors`` (best
   ``primary_metric``, EMA weights when EMA is on), ``metrics.csv``, ``tb/`` (TensorBoard), ``curves.png``.
   ``mobilenets eval --checkpoint`` accepts the run folder, ``last.json``, or any ``*.safetensors`` above.
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

COMMON_TRAIN_FLAGS = [
    "--task",
    "--model",
    "--width",
    "--resolution",
    "--num-classes",
    "--output-stride",
    "--dropout",
    "--data",
    "--val-data",
    "--val-split",
    "--epochs",
    "--batch-size",
    "--accum-steps",
    "--lr",
    "--weight-decay",
    "--preset",
    "--optimizer",
    "--warmup-epochs",
    "--label-smoothing",
    "--ema-decay",
    "--out",
    "--resume",
    "--seed",
    "--workers",
    "--init",
    "--threads",
    "--device",
    "--bf16",
    "--channels-last",
    "--checkpoint-every",
    "--eval-every",
    "--max-steps",
    "--log-every",
    "--no-progress",
]
COMMON_EVAL_FLAGS = ["--checkpoint", "--data", "--batch-size", "--workers", "--device", "--threads", "--json", "--out"]
COMMON_PREDICT_FLAGS = ["--checkpoint", "--top-k", "--device", "--threads", "--json"]


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

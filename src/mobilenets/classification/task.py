"""The classification task for the engine (contract: ``mobilenets.engine.task``): build, data, loss, metric, and
the checkpoint's evaluation and prediction as data — the commands print."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobilenets.classification.metrics import (
    Counts,
    FlipAverage,
    accumulate,
    per_class_accuracy,
    plot_confusion,
    summarise,
)
from mobilenets.classification.sources import EMBEDDED, SCENE_VIEWS, is_idx_folder, load_data, load_eval_data
from mobilenets.config import EvalConfig, PredictConfig, TrainConfig
from mobilenets.data.datasets import collate
from mobilenets.data.images import UnreadableImage, load_rgb
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, eval_transform
from mobilenets.engine.checkpoints import Trained
from mobilenets.engine.data import EvalBatchSampler
from mobilenets.engine.runs import free_path
from mobilenets.errors import ConfigError
from mobilenets.registry import create_model

# Fashion-MNIST's pixel statistics (grey, replicated to 3 channels), used for the embedded and IDX data.
FMNIST_MEAN, FMNIST_STD = (0.2860,) * 3, (0.3530,) * 3
Predictor = Callable[[torch.Tensor], torch.Tensor]  # image batch -> logits: the model, the fused engine, ONNX


class ClassifyTask:
    """Cross-entropy on a MobileNet classifier; top-1 picks the best checkpoint."""

    name = "classify"
    primary_metric = "top1"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.transform = transform_config(config)
        self.data = run_data(config, self.transform)
        self.classes = self.data.classes
        if len(self.classes) < 2:
            raise ConfigError(f"{config.data.data} has {len(self.classes)} class; a classifier needs at least 2")
        n = config.model.num_classes
        if n is not None and n != len(self.classes):
            raise ConfigError(f"--num-classes {n} but the data has {len(self.classes)} classes")
        self.label_smoothing = config.recipe.label_smoothing

    def build_model(self) -> nn.Module:
        m, o = self.config.model, self.config.options
        overrides: dict[str, object] = {"num_classes": len(self.classes)}
        for key, value in (("width", m.width), ("output_stride", m.output_stride), ("dropout", m.dropout),
                           ("project_act", o.project_act), ("shortcut", o.shortcut)):  # fmt: skip
            if value is not None:
                overrides[key] = value
        return create_model(m.name, **overrides)

    def datasets(self) -> tuple[Dataset, Dataset]:
        return self.data.train, self.data.val

    def collate(self, items: Sequence[Any]) -> Any:
        return collate(items)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["images"])
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)
        return loss, {"skipped": float(batch["skipped"])}

    def evaluate(self, model: nn.Module, loader: DataLoader, distributed: bool) -> dict[str, float]:
        counts = accumulate(model, loader, len(self.classes))
        if distributed:  # sum the confusion matrix, top-5 hits and loss over ranks, then compute
            totals = counts.as_tensor()
            torch.distributed.all_reduce(totals)
            counts = Counts.from_tensor(totals, len(self.classes))
        return summarise(counts)

    def metadata(self) -> dict[str, Any]:
        return {"classes": self.classes, "transform": transform_dict(self.transform)}


def run_data(config: TrainConfig, transform: TransformConfig) -> Any:
    """The run's (train, val) data as its config names it (``--val-split``'s held-out part is the val set)."""
    d = config.data
    return load_data(d.data, transform, d.val_data, d.val_split, config.run.seed)


def transform_config(config: TrainConfig) -> TransformConfig:
    data, o = config.data.data, config.options
    grey_digits = data == EMBEDDED or is_idx_folder(Path(data))
    small_objects = grey_digits or data in SCENE_VIEWS  # whole small views: mild crops, no centre crop
    scale = tuple(o.crop_scale) if o.crop_scale else ((0.6, 1.0) if small_objects else (0.08, 1.0))
    crop_pct = o.crop_pct if o.crop_pct else (1.0 if small_objects else 0.875)
    return TransformConfig(
        resolution=config.model.resolution, scale=scale, hflip=o.hflip, crop_pct=crop_pct,  # type: ignore[arg-type]
        mean=FMNIST_MEAN if grey_digits else IMAGENET_MEAN, std=FMNIST_STD if grey_digits else IMAGENET_STD,
    )  # fmt: skip


def transform_dict(cfg: TransformConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}


def build_task(config: TrainConfig) -> ClassifyTask:
    return ClassifyTask(config)


def eval_transform_of(trained: Trained) -> TransformConfig:
    """The eval transform a checkpoint stores (else the one its config implies)."""
    t = trained.metadata.get("transform")
    if not t:
        if trained.config.task != "classify":  # a dense model's export: only the size matters
            return TransformConfig(resolution=trained.config.model.resolution)
        return transform_config(trained.config)
    return TransformConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})


def class_names(trained: Trained) -> list[str]:
    return list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])


def eval_data(trained: Trained, data: str | None) -> tuple[str, Dataset]:
    """(name, dataset) to evaluate on: ``data`` if given, else the run's own validation set."""
    transform, classes = eval_transform_of(trained), class_names(trained)
    if data:
        return data, load_eval_data(data, transform, classes)
    d = trained.config.data
    split = f" (held-out {d.val_split:g} of the training data, seed {trained.config.run.seed})" if d.val_split else ""
    return f"{d.val_data or d.data}{split}", run_data(trained.config, transform).val


def evaluate_checkpoint(trained: Trained, cfg: EvalConfig, predictor: Predictor | None = None) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix of ``predictor`` (default: the model) on
    ``eval_data``."""
    device = next(trained.model.parameters()).device
    classes = class_names(trained)
    name, dataset = eval_data(trained, cfg.data)
    loader = DataLoader(
        dataset, batch_sampler=EvalBatchSampler(len(dataset), cfg.batch_size), collate_fn=collate,
        num_workers=cfg.workers,
    )  # fmt: skip
    path = predictor or trained.model
    model = FlipAverage(path) if cfg.flip else path
    with torch.no_grad():
        counts = accumulate(model, ({k: v.to(device) for k, v in b.items()} for b in loader), len(classes))
    result: dict[str, Any] = {"checkpoint": str(trained.path), "data": name, "flip": cfg.flip, "engine": cfg.engine}
    result.update(summarise(counts))
    result["per_class"] = dict(zip(classes, per_class_accuracy(counts.confusion), strict=True))
    result["confusion"] = counts.confusion.tolist()
    return result


def plot_result(result: dict[str, Any], trained: Trained, folder: Path) -> dict[str, str]:
    """The confusion matrix of an ``evaluate_checkpoint`` result drawn as ``folder/confusion.png``, or, where that
    file exists (an earlier evaluation's, maybe on other data), the first free ``confusion-2.png``, ``-3`` …: an
    evaluation never replaces a figure already in a run folder."""
    png = free_path(folder / "confusion.png")
    data = Path(str(result["data"]).split(" (")[0]).name
    classes = list(result["per_class"])
    plot_confusion(torch.tensor(result["confusion"]), classes, png, f"{trained.path.name} on {data}: top-1 "
                   f"{result['top1']:.4f}")  # fmt: skip
    return {"confusion_png": str(png)}


def eval_lines(result: dict[str, Any], cfg: EvalConfig) -> list[str]:
    views = "  (mean of image and mirror)" if cfg.flip else ""
    lines = [
        f"{result['checkpoint']}  on {result['data']}  ({int(result['n'])} images, {int(result['skipped'])} "
        f"unreadable skipped){views}",
        f"  top-1 {result['top1']:.4f}   top-5 {result['top5']:.4f}   loss {result['loss']:.4f}",
    ]
    if cfg.per_class:
        lines += [f"    {name:24s} {acc:.4f}" for name, acc in result["per_class"].items()]
    return [*lines, f"  confusion matrix: {result['confusion_png']}"]


def predict_images(
    trained: Trained, cfg: PredictConfig, paths: Sequence[Path], predictor: Predictor | None = None
) -> list[dict[str, Any]]:
    """The ``cfg.top_k`` classes with names and probabilities per image; an unreadable image gets ``error``."""
    device = next(trained.model.parameters()).device
    classes, transform = class_names(trained), eval_transform_of(trained)
    k = min(cfg.top_k, len(classes))
    model = FlipAverage(predictor or trained.model) if cfg.flip else predictor or trained.model
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            x = eval_transform(transform, load_rgb(path))[None].to(device)
        except UnreadableImage as e:
            results.append({"image": str(path), "error": str(e)})
            continue
        with torch.no_grad():
            probs = model(x).float().softmax(1)[0]
        top = probs.topk(k)
        results.append({
            "image": str(path),
            "top": [{"class": classes[i], "index": int(i), "prob": round(float(p), 5)}
                    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)],
        })  # fmt: skip
    return results


def prediction_line(result: dict[str, Any]) -> str:
    return f"{result['image']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in result["top"])

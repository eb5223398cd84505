"""The classification task for the engine, and the hooks ``mobilenets train/eval/predict`` dispatch to
(the contract is in ``mobilenets.engine.task``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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
from mobilenets.data.datasets import collate
from mobilenets.data.images import UnreadableImage, is_image_file, load_rgb
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, eval_transform
from mobilenets.engine.checkpoints import load_trained
from mobilenets.engine.data import EvalBatchSampler
from mobilenets.engine.distributed import resolve_device, setup
from mobilenets.engine.optim import resolve_recipe
from mobilenets.errors import ConfigError, InputError
from mobilenets.registry import create_model

# Fashion-MNIST's pixel statistics (grey, replicated to 3 channels), used for the embedded and IDX data.
FMNIST_MEAN, FMNIST_STD = (0.2860,) * 3, (0.3530,) * 3


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Classification's own flags (see ``mobilenets.engine.task`` for the common ones)."""
    if command == "train":
        g = parser.add_argument_group("classification")
        g.add_argument(
            "--crop-scale",
            type=float,
            nargs=2,
            metavar=("MIN", "MAX"),
            help="random-resized-crop area range (default 0.08 1 for image folders, 0.6 1 for Fashion-MNIST)",
        )
        g.add_argument(
            "--crop-pct",
            type=float,
            help="eval: resize to resolution/crop_pct, centre crop "
            "(default 0.875 for image folders, 1.0 for Fashion-MNIST)",
        )
        g.add_argument("--no-hflip", action="store_true", help="no random horizontal flips")
        g.add_argument("--project-act", choices=("linear", "relu6"), help="V2 Figure 6a ablation")
        g.add_argument("--shortcut", choices=("bottleneck", "expansion", "none"), help="V2 Figure 6b ablation")
    elif command == "eval":
        parser.add_argument("--per-class", action="store_true", help="print every class's accuracy")
        parser.add_argument(
            "--flip", action="store_true", help="test-time augmentation: average the probabilities of image and mirror"
        )
    if command in ("eval", "predict"):
        e = parser.add_argument_group("inference path")
        e.add_argument("--engine", choices=ENGINES, default="pytorch",
                       help="pytorch, or our fused C++ engine in fp32 or int8 (CPU; V1/V2/minimal V3)")  # fmt: skip
        e.add_argument("--calibration", help="fused-int8: calibration images ('embedded', an IDX or image folder)")
        e.add_argument("--calibration-count", type=int, default=512)


ENGINES = ("pytorch", "fused", "fused-int8")


def inference_path(args: argparse.Namespace, model: nn.Module, transform: TransformConfig, device: torch.device) -> Any:
    """The model itself, or the fused engine built from it (``--engine``), as a callable on image batches."""
    engine = getattr(args, "engine", "pytorch")
    if engine == "pytorch":
        return model
    from mobilenets.deploy.export import calibration_batches
    from mobilenets.deploy.fused import FusedEngine

    if device.type != "cpu":
        raise ConfigError(f"--engine {engine} runs on the CPU; add --device cpu")
    calibration = None
    if engine == "fused-int8":
        if not args.calibration:
            raise ConfigError("--engine fused-int8 needs --calibration DATA (real images for the activation ranges)")
        calibration = calibration_batches(args.calibration, transform, args.calibration_count)
    return FusedEngine(model, args.threads or None, calibration=calibration)


class ClassifyTask:
    """Cross-entropy on a MobileNet classifier; top-1 picks the best checkpoint."""

    name = "classify"
    primary_metric = "top1"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.transform = transform_config(args)
        self.data = load_data(args.data, self.transform, args.val_data, args.val_split, args.seed)
        self.classes = self.data.classes
        if args.num_classes is not None and args.num_classes != len(self.classes):
            raise ConfigError(f"--num-classes {args.num_classes} but the data has {len(self.classes)} classes")
        recipe = resolve_recipe(
            args.preset, args.optimizer, args.lr, args.weight_decay, args.warmup_epochs, args.label_smoothing,
            args.ema_decay,
        )  # fmt: skip
        self.label_smoothing = recipe.label_smoothing

    def build_model(self) -> nn.Module:
        overrides: dict[str, object] = {"num_classes": len(self.classes)}
        for key in ("width", "output_stride", "dropout", "project_act", "shortcut"):
            if getattr(self.args, key, None) is not None:
                overrides[key] = getattr(self.args, key)
        return create_model(self.args.model, **overrides)

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


def transform_config(args: argparse.Namespace) -> TransformConfig:
    grey_digits = args.data == EMBEDDED or is_idx_folder(Path(args.data))
    small_objects = grey_digits or args.data in SCENE_VIEWS  # whole small views: mild crops, no centre crop
    scale = (
        tuple(args.crop_scale) if getattr(args, "crop_scale", None) else ((0.6, 1.0) if small_objects else (0.08, 1.0))
    )
    crop_pct = args.crop_pct if getattr(args, "crop_pct", None) else (1.0 if small_objects else 0.875)
    return TransformConfig(
        resolution=args.resolution, scale=scale, hflip=not getattr(args, "no_hflip", False), crop_pct=crop_pct,  # type: ignore[arg-type]
        mean=FMNIST_MEAN if grey_digits else IMAGENET_MEAN, std=FMNIST_STD if grey_digits else IMAGENET_STD,
    )  # fmt: skip


def transform_dict(cfg: TransformConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}


def build_task(args: argparse.Namespace) -> ClassifyTask:
    return ClassifyTask(args)


def eval_transform_of(meta: dict[str, Any], fallback_resolution: int) -> TransformConfig:
    t = meta.get("transform")
    if not t:
        return TransformConfig(resolution=fallback_resolution)
    return TransformConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})


def evaluate_main(args: argparse.Namespace) -> int:
    """``mobilenets eval``: top-1, top-5, per-class accuracy, a confusion-matrix PNG; ``--json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    d = setup(args.device)
    trained = load_trained(args.checkpoint, d.device)
    classes = list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])
    cfg = eval_transform_of(trained.metadata, int(trained.args.get("resolution", 224)))
    data = args.data or trained.args.get("val_data") or trained.args.get("data") or EMBEDDED
    dataset = load_eval_data(data, cfg, classes)
    loader = DataLoader(
        dataset, batch_sampler=EvalBatchSampler(len(dataset), args.batch_size), collate_fn=collate,
        num_workers=args.workers,
    )  # fmt: skip
    path = inference_path(args, trained.model, cfg, d.device)
    model = FlipAverage(path) if args.flip else path
    with torch.no_grad():
        counts = accumulate(model, ({k: v.to(d.device) for k, v in b.items()} for b in loader), len(classes))
    result: dict[str, Any] = {"checkpoint": str(trained.path), "data": str(data), "flip": bool(args.flip)}
    result["engine"] = args.engine
    result.update(summarise(counts))
    result["per_class"] = dict(zip(classes, per_class_accuracy(counts.confusion), strict=True))
    result["confusion"] = counts.confusion.tolist()
    out = Path(args.out) if args.out else trained.path.parent
    png = out / "confusion.png"
    plot_confusion(
        counts.confusion, classes, png, f"{trained.path.name} on {Path(str(data)).name}: top-1 {result['top1']:.4f}"
    )
    result["confusion_png"] = str(png)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    views = "  (mean of image and mirror)" if args.flip else ""
    print(f"{trained.path}  on {data}  ({int(result['n'])} images, {int(result['skipped'])} unreadable skipped){views}")
    print(f"  top-1 {result['top1']:.4f}   top-5 {result['top5']:.4f}   loss {result['loss']:.4f}")
    if args.per_class:
        for name, acc in result["per_class"].items():
            print(f"    {name:24s} {acc:.4f}")
    print(f"  confusion matrix: {png}")
    return 0


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders → their image files (sorted, recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not files:
                raise InputError(f"no image files in folder {p}")
            paths += files
        else:
            paths.append(p)
    return paths


def predict_main(args: argparse.Namespace) -> int:
    """``mobilenets predict``: top-k classes with names per image; unreadable inputs are reported, not fatal
    (exit status 1 if any)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    trained = load_trained(args.checkpoint, device)
    classes = list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])
    cfg = eval_transform_of(trained.metadata, int(trained.args.get("resolution", 224)))
    k = max(1, min(args.top_k, len(classes)))
    model = inference_path(args, trained.model, cfg, device)
    results: list[dict[str, Any]] = []
    for path in expand_inputs(args.inputs):
        try:
            x = eval_transform(cfg, load_rgb(path))[None].to(device)
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
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
                continue
            best = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['image']}: {best}")
    return 1 if any("error" in r for r in results) else 0

"""The segmentation task for the one training engine, and ``mobilenets eval`` / ``predict`` for segmenters
(the contract is in ``mobilenets.engine.task``).

``mobilenets train --task segment --model deeplabv3_mobilenet_v2 --data embedded|VOC|FOLDER --resolution CROP``:
per-pixel cross-entropy ignoring 255; the best checkpoint is picked by validation mIoU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobilenets.data.images import UnreadableImage, load_rgb
from mobilenets.data.transforms import to_tensor
from mobilenets.errors import ConfigError, InputError
from mobilenets.registry import create_model
from mobilenets.segmentation.data import (
    EMBEDDED,
    VOC_CLASSES,
    SceneDataset,
    SegmentationDataset,
    SegTransform,
    class_names_of,
    collate,
    layout_of,
    pairs_for,
    scene_classes,
    voc_palette,
)
from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES, inference_madds, predict_labels, predict_probs
from mobilenets.segmentation.metrics import IGNORE_INDEX, confusion_matrix, reduce_confusion, summarise


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Segmentation's own flags (see ``mobilenets.engine.task`` for the common ones)."""
    g = parser.add_argument_group("segmentation")
    if command == "train":
        g.add_argument("--aspp", dest="aspp", action="store_true", default=None, help="DeepLabv3: full ASPP")
        g.add_argument("--no-aspp", dest="aspp", action="store_false", help="DeepLabv3: reduced head (Table 7)")
        g.add_argument(
            "--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
            help="random scale jitter before the crop (DeepLab: 0.5 2.0)",
        )  # fmt: skip
        g.add_argument("--no-hflip", action="store_true", help="no random left-right flips")
        g.add_argument(
            "--head-context", dest="context", type=int, default=None, metavar="K",
            help="LR-ASPP: a K×K depthwise-separable block on the 1/16 branch (odd K; not in the paper)",
        )  # fmt: skip
        g.add_argument(
            "--naming-pool", dest="naming_pool", type=int, default=None, metavar="K",
            help="LR-ASPP: a branch naming object classes from K×K-pooled 1/16 features, started from --init's "
            "classifier when its classes match (odd K; not in the paper)",
        )  # fmt: skip
        g.add_argument(
            "--top-k-pixels", dest="top_k_pixels", type=float, default=1.0, metavar="F",
            help="average the loss over the hardest fraction F of labelled pixels only (DeepLab's "
            "top_k_percent_pixels; 1 = every pixel)",
        )  # fmt: skip
        g.add_argument("--classes", help="class names file (one per line) for folder data; default: VOC's 21")
        g.add_argument("--scenes", type=int, nargs=2, default=(2000, 200), metavar=("TRAIN", "VAL"),
                       help="embedded data: number of generated scenes per split")  # fmt: skip
        g.add_argument("--scene-size", type=int, default=128, help="embedded data: scene side in pixels")
    elif command in ("eval", "predict"):
        g.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales (MF: 0.5 0.75 ... 1.75)")
        g.add_argument("--flip", action="store_true", help="also average the left-right mirrored input (MF)")
        g.add_argument("--mf", action="store_true", help=f"DeepLab's MF: scales {DEEPLAB_EVAL_SCALES} + flips")
        if command == "eval":
            g.add_argument("--per-class", action="store_true", help="print every class's IoU")
        else:
            g.add_argument("--out", default="predictions", help="folder for <name>_mask.png and <name>_overlay.png")


def _read_classes(path: str | None) -> list[str]:
    if path is None:
        return list(VOC_CLASSES)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"class names file not found: {p}")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"class names file {p} is empty")
    return names


def build_datasets(
    data: str, classes: list[str] | None, transform: SegTransform, scenes: Sequence[int], scene_size: int
) -> tuple[list[str], Dataset, Dataset]:
    """(class names, train set, val set) for ``--data`` ('embedded', a VOC folder or an images/masks folder)."""
    eval_tf = SegTransform(mean=transform.mean, std=transform.std)
    if data == EMBEDDED:
        n_train, n_val = scenes
        train = SceneDataset("train", n_train, scene_size, transform, train=True)
        return scene_classes(), train, SceneDataset("val", n_val, scene_size, eval_tf)
    layout = layout_of(data)
    named = class_names_of(data) if classes is None else (classes, "--classes")
    if named is None:  # never guess: VOC's names on other data label every output wrongly
        raise ConfigError(
            f"{data} does not name its classes: give --classes FILE or write {Path(data) / 'classes.txt'} "
            "(one name per line, line i naming mask value i, background first)"
        )
    names = named[0]
    if layout == "folder":
        raise ConfigError(f"{data} has a single images/ + masks/ pair; give train/ and val/ folders (or VOC)")
    train = SegmentationDataset(pairs_for(data, "train"), len(names), transform, train=True)
    return names, train, SegmentationDataset(pairs_for(data, "val"), len(names), eval_tf)


class SegmentTask:
    """Per-pixel cross-entropy (ignore 255) on a registered segmentation model; mIoU picks the best checkpoint."""

    name = "segment"
    primary_metric = "miou"
    top_k = 1.0  # fraction of labelled pixels the loss averages (--top-k-pixels)

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.transform = SegTransform(
            crop=args.resolution,
            scale=tuple(args.scale_range),
            hflip=not args.no_hflip,  # type: ignore[arg-type]
        )
        given = _read_classes(args.classes) if args.classes else None
        self.classes, self.train_set, self.val_set = build_datasets(
            args.data, given, self.transform, args.scenes, args.scene_size
        )
        if args.num_classes is not None and args.num_classes != len(self.classes):
            raise ConfigError(f"--num-classes {args.num_classes} but the data has {len(self.classes)} classes")
        self.top_k = float(getattr(args, "top_k_pixels", 1.0))
        if not 0 < self.top_k <= 1:
            raise ConfigError(f"--top-k-pixels must be in (0, 1], got {self.top_k}")

    def build_model(self) -> nn.Module:
        overrides: dict[str, object] = {"num_classes": len(self.classes)}
        for key in ("width", "output_stride", "dropout", "aspp", "context", "naming_pool"):
            if getattr(self.args, key, None) is not None:
                overrides[key] = getattr(self.args, key)
        return create_model(self.args.model, **overrides)

    def datasets(self) -> tuple[Dataset, Dataset]:
        return self.train_set, self.val_set

    def collate(self, items: Sequence[Any]) -> Any:
        return collate(items)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["images"])
        return pixel_loss(logits, batch["masks"], self.top_k), {}

    def evaluate(self, model: nn.Module, loader: DataLoader, distributed: bool) -> dict[str, float]:
        confusion = accumulate(model, loader, len(self.classes))
        if distributed:
            confusion = reduce_confusion(confusion)
        result = summarise(confusion, self.classes)
        return {"miou": float(result["miou"]), "pixel_acc": float(result["pixel_acc"])}  # type: ignore[arg-type]

    def metadata(self) -> dict[str, Any]:
        return {"classes": self.classes, "mean": list(self.transform.mean), "std": list(self.transform.std)}


def pixel_loss(logits: torch.Tensor, masks: torch.Tensor, top_k: float = 1.0) -> torch.Tensor:
    """Per-pixel cross-entropy over the labelled pixels (``IGNORE_INDEX`` left out). ``top_k`` < 1 averages the
    hardest ``ceil(top_k · labelled)`` pixels of the batch only (DeepLab's ``top_k_percent_pixels``, online hard
    example mining): easy pixels, mostly background, stop diluting the gradient of the misnamed ones."""
    if top_k >= 1:
        return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    losses = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="none")
    labelled = losses[masks != IGNORE_INDEX]
    if labelled.numel() == 0:  # an all-ignore batch: a zero that still reaches every logit
        return logits.sum() * 0.0
    k = max(1, math.ceil(top_k * labelled.numel()))
    return labelled.topk(k, sorted=False).values.mean()


def build_task(args: argparse.Namespace) -> SegmentTask:
    return SegmentTask(args)


@torch.no_grad()
def accumulate(
    model: nn.Module, batches: Any, num_classes: int, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """The confusion matrix of ``model`` over ``batches`` (dicts with ``images`` and ``masks``)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in batches:
        images, masks = batch["images"], batch["masks"]
        pred = predict_labels(model, images, scales, flip)
        confusion += confusion_matrix(pred.cpu(), masks.cpu(), num_classes)
    return confusion


def _strategy(args: argparse.Namespace) -> tuple[list[float], bool]:
    if args.mf:
        return list(DEEPLAB_EVAL_SCALES), True
    return list(args.scales), bool(args.flip)


def _load(args: argparse.Namespace) -> Any:
    from mobilenets.engine.checkpoints import load_trained
    from mobilenets.engine.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return load_trained(args.checkpoint, device), device


def split_of(trained: Any, data: str | None, split: str = "val") -> tuple[str, list[str], Dataset]:
    """(data, class names, dataset) of a trained segmenter's ``split`` in its eval transform: ``data`` (default:
    the data it was trained on) is 'embedded' — the scenes it was trained with, same count and size — a VOC folder
    or a train/ + val/ images/masks folder."""
    targs = trained.args
    classes = list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])
    mean, std = tuple(trained.metadata.get("mean", (0.485, 0.456, 0.406))), tuple(trained.metadata.get("std", ()))
    transform = SegTransform(mean=mean, std=std or (0.229, 0.224, 0.225))
    data = data or (targs.get("val_data") if split == "val" else None) or targs.get("data") or EMBEDDED
    if data == EMBEDDED:
        if len(classes) != len(scene_classes()):
            raise InputError(
                f"the embedded scenes have {len(scene_classes())} classes but checkpoint {trained.path} was trained "
                f"for {len(classes)}"
            )
        count = (targs.get("scenes") or (2000, 200))[split == "val"]
        size = int(targs.get("scene_size") or 128)
        return data, classes, SceneDataset(split, count, size, transform)
    return data, classes, SegmentationDataset(pairs_for(data, split), len(classes), transform)


def evaluate_main(args: argparse.Namespace) -> int:
    """``mobilenets eval``: mIoU, per-class IoU and pixel accuracy (single scale, or ``--scales``/``--flip``/``--mf``),
    with the strategy's multiply-adds per image."""
    trained, device = _load(args)
    data, classes, dataset = split_of(trained, args.data)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate, num_workers=args.workers)
    scales, flip = _strategy(args)
    batches = ({k: v.to(device) for k, v in b.items()} for b in loader)
    confusion = accumulate(trained.model, batches, len(classes), scales, flip)
    first = dataset[0]["mask"].shape
    madds = inference_madds(trained.model.cpu(), int(first[0]), scales, flip) if first[0] == first[1] else None
    result: dict[str, Any] = {
        "checkpoint": str(trained.path),
        "data": str(data),
        "images": len(dataset),
        "scales": scales,
        "flip": flip,
        "madds_per_image": madds,
        **summarise(confusion, classes),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    strategy = "single scale" if scales == [1.0] and not flip else f"scales {scales}{' + flips' if flip else ''}"
    print(f"{trained.path}  on {data}  ({len(dataset)} images, {strategy})")
    print(f"  mIoU {result['miou']:.4f}   pixel acc {result['pixel_acc']:.4f}")
    if madds is not None:
        print(f"  multiply-adds per image {madds / 1e9:.3f}B")
    print("  per-class IoU:")
    for name, iou in result["per_class_iou"].items():
        print(f"    {name:24s} {'-' if iou is None else f'{iou:.4f}'}")
    return 0


def colourise(labels: np.ndarray) -> np.ndarray:
    """Class indices → VOC palette colours (H×W×3 uint8)."""
    return voc_palette()[labels]


def write_prediction(image: Image.Image, labels: np.ndarray, out: Path, stem: str) -> tuple[Path, Path]:
    """``stem_mask.png`` (palette PNG: pixel value = class index) and ``stem_overlay.png`` (image blended 50/50
    with the class colours, background left as is)."""
    out.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    mask.putpalette(voc_palette().ravel().tolist())
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
    mask.save(mask_path)
    rgb = np.asarray(image, np.float32)
    blend = np.where((labels > 0)[..., None], 0.5 * rgb + 0.5 * colourise(labels), rgb)
    Image.fromarray(blend.round().astype(np.uint8)).save(overlay_path)
    return mask_path, overlay_path


def predict_main(args: argparse.Namespace) -> int:
    """``mobilenets predict``: a mask PNG and a colour overlay per image; unreadable inputs are reported, not
    fatal (exit status 1 if any)."""
    from mobilenets.classification.task import expand_inputs

    trained, device = _load(args)
    classes = list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])
    mean = tuple(trained.metadata.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(trained.metadata.get("std", (0.229, 0.224, 0.225)))
    scales, flip = _strategy(args)
    out = Path(args.out)
    results: list[dict[str, Any]] = []
    for path in expand_inputs(args.inputs):
        try:
            image = load_rgb(path)
        except UnreadableImage as e:
            results.append({"image": str(path), "error": str(e)})
            continue
        x = to_tensor(np.asarray(image, np.uint8), mean, std)[None].to(device)
        probs = predict_probs(trained.model, x, scales, flip)[0]
        labels = probs.argmax(0).cpu().numpy()
        mask_path, overlay_path = write_prediction(image, labels, out, path.stem)
        counts = np.bincount(labels.ravel(), minlength=len(classes))
        present = {classes[i]: round(float(c) / labels.size, 4) for i, c in enumerate(counts) if c}
        results.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "classes": present})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
                continue
            shares = ", ".join(f"{k} {v:.1%}" for k, v in r["classes"].items())
            print(f"{r['image']}: {r['mask']}  {r['overlay']}  ({shares})")
    return 1 if any("error" in r for r in results) else 0

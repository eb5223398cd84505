"""The segmentation task for the one training engine (contract: ``mobilenets.engine.task``), and the evaluation
and prediction of segmentation checkpoints as data (the commands print).

``mobilenets train --task segment --model deeplabv3_mobilenet_v2 --data embedded|VOC|FOLDER --resolution CROP``:
per-pixel cross-entropy ignoring 255; the best checkpoint is picked by validation mIoU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobilenets.config import EvalConfig, PredictConfig, TrainConfig
from mobilenets.data.images import UnreadableImage, load_rgb
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
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
from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES, predict_labels, predict_probs
from mobilenets.segmentation.metrics import IGNORE_INDEX, confusion_matrix, reduce_confusion, summarise


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

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        o = config.options
        self.transform = SegTransform(crop=config.model.resolution, scale=tuple(o.scale_range), hflip=o.hflip)  # type: ignore[arg-type]
        given = _read_classes(o.classes) if o.classes else None
        self.classes, self.train_set, self.val_set = build_datasets(
            config.data.data, given, self.transform, o.scenes, o.scene_size
        )
        n = config.model.num_classes
        if n is not None and n != len(self.classes):
            raise ConfigError(f"--num-classes {n} but the data has {len(self.classes)} classes")
        self.top_k = o.top_k_pixels

    def build_model(self) -> nn.Module:
        m, o = self.config.model, self.config.options
        overrides: dict[str, object] = {"num_classes": len(self.classes)}
        for key, value in (("width", m.width), ("output_stride", m.output_stride), ("dropout", m.dropout),
                           ("aspp", o.aspp), ("context", o.context), ("naming_pool", o.naming_pool)):  # fmt: skip
            if value is not None:
                overrides[key] = value
        from mobilenets.segmentation.model import backbone_overrides

        overrides |= backbone_overrides(m.init)  # the BN eps / padding of the weights the backbone starts from
        return create_model(segmenter_name(m.name), **overrides)

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


def segmenter_name(model: str) -> str:
    """``--model`` may name the segmenter (``deeplabv3_mobilenet_v2``, ``lraspp_mobilenet_v3_small``) or its
    backbone (``mobilenet_v2`` → DeepLabv3 on it, the V2 paper's §6.3 head)."""
    from mobilenets.registry import list_models

    if model.startswith(("deeplabv3_", "lraspp_")):
        return model
    if f"deeplabv3_{model}" in list_models():
        return f"deeplabv3_{model}"
    raise ConfigError(f"--task segment needs a deeplabv3_* or lraspp_* model (or its backbone's name), got {model!r}")


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


def build_task(config: TrainConfig) -> SegmentTask:
    return SegmentTask(config)


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


def strategy(cfg: EvalConfig | PredictConfig) -> tuple[list[float], bool]:
    """(scales, flip) of an eval / predict config: DeepLab's MF, or the scales and flip asked for."""
    if cfg.mf:
        return list(DEEPLAB_EVAL_SCALES), True
    return list(cfg.scales), bool(cfg.flip)


def class_names(trained: Any) -> list[str]:
    return list(trained.metadata.get("classes") or [str(i) for i in range(trained.model.config.num_classes)])


def split_of(trained: Any, data: str | None, split: str = "val") -> tuple[str, list[str], Dataset]:
    """(data, class names, dataset) of a trained segmenter's ``split`` in its eval transform: ``data`` (default:
    the data it was trained on) is 'embedded' — the scenes it was trained with, same count and size — a VOC folder
    or a train/ + val/ images/masks folder."""
    config = trained.config
    classes = class_names(trained)
    mean, std = tuple(trained.metadata.get("mean", IMAGENET_MEAN)), tuple(trained.metadata.get("std", IMAGENET_STD))
    transform = SegTransform(mean=mean, std=std)
    data = data or (config.data.val_data if split == "val" else None) or config.data.data
    if data == EMBEDDED:
        if len(classes) != len(scene_classes()):
            raise InputError(
                f"the embedded scenes have {len(scene_classes())} classes but checkpoint {trained.path} was trained "
                f"for {len(classes)}"
            )
        scenes, size = config.options.scenes, config.options.scene_size  # the scenes it was trained with
        return data, classes, SceneDataset(split, scenes[split == "val"], size, transform)
    return data, classes, SegmentationDataset(pairs_for(data, split), len(classes), transform)


def evaluate_checkpoint(trained: Any, cfg: EvalConfig, predictor: Any = None) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy on ``cfg.data`` (default: the run's validation data), single scale
    or ``cfg.scales`` / ``flip`` / ``mf``, of ``predictor`` (image batch -> logits; default: the model)."""
    device = next(trained.model.parameters()).device
    data, classes, dataset = split_of(trained, cfg.data)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate, num_workers=cfg.workers)
    scales, flip = strategy(cfg)
    batches = ({k: v.to(device) for k, v in b.items()} for b in loader)
    confusion = accumulate(predictor or trained.model, batches, len(classes), scales, flip)
    first = dataset[0]["mask"].shape
    return {
        "checkpoint": str(trained.path),
        "data": str(data),
        "images": len(dataset),
        "image_size": int(first[0]) if first[0] == first[1] else None,
        "scales": scales,
        "flip": flip,
        **summarise(confusion, classes),
    }


def eval_lines(result: dict[str, Any], cfg: EvalConfig) -> list[str]:
    scales, flip = result["scales"], result["flip"]
    strategy_ = "single scale" if scales == [1.0] and not flip else f"scales {scales}{' + flips' if flip else ''}"
    lines = [f"{result['checkpoint']}  on {result['data']}  ({result['images']} images, {strategy_})"]
    lines.append(f"  mIoU {result['miou']:.4f}   pixel acc {result['pixel_acc']:.4f}")
    if result.get("madds_per_image") is not None:
        lines.append(f"  multiply-adds per image {result['madds_per_image'] / 1e9:.3f}B")
    lines.append("  per-class IoU:")
    for name, iou in result["per_class_iou"].items():
        lines.append(f"    {name:24s} {'-' if iou is None else f'{iou:.4f}'}")
    return lines


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


def predict_images(trained: Any, cfg: PredictConfig, paths: Sequence[Path], stems: Sequence[str]) -> list[dict]:
    """A mask PNG and a colour overlay per image (``<stem>_mask.png``, ``<stem>_overlay.png`` under ``cfg.out``)
    and each class's share of the pixels; an unreadable image gets ``error``."""
    device = next(trained.model.parameters()).device
    classes = class_names(trained)
    mean = tuple(trained.metadata.get("mean", IMAGENET_MEAN))
    std = tuple(trained.metadata.get("std", IMAGENET_STD))
    scales, flip = strategy(cfg)
    results: list[dict[str, Any]] = []
    for path, stem in zip(paths, stems, strict=True):
        try:
            image = load_rgb(path)
        except UnreadableImage as e:
            results.append({"image": str(path), "error": str(e)})
            continue
        x = to_tensor(np.asarray(image, np.uint8), mean, std)[None].to(device)
        probs = predict_probs(trained.model, x, scales, flip)[0]
        labels = probs.argmax(0).cpu().numpy()
        mask_path, overlay_path = write_prediction(image, labels, Path(cfg.out), stem)
        counts = np.bincount(labels.ravel(), minlength=len(classes))
        present = {classes[i]: round(float(c) / labels.size, 4) for i, c in enumerate(counts) if c}
        results.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "classes": present})
    return results


def prediction_line(result: dict[str, Any]) -> str:
    shares = ", ".join(f"{k} {v:.1%}" for k, v in result["classes"].items())
    return f"{result['image']}: {result['mask']}  {result['overlay']}  ({shares})"

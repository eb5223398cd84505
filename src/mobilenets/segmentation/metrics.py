"""Semantic segmentation metrics from one confusion matrix (PASCAL VOC's mean intersection-over-union).

The confusion matrix is the sufficient statistic: it adds over images and over DDP ranks, and every metric is a
pure function of it. ``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``; pixels labelled
``ignore_index`` (VOC's 255 borders) are not counted.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """K×K int64 counts of (true, predicted) class pairs over the pixels whose target is not ``ignore_index``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target values must be in [0, {num_classes}) or {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from both targets and predictions."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes present in targets or predictions (VOC's mIoU)."""
    iou = iou_per_class(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Correct pixels / counted pixels."""
    total = int(confusion.sum())
    return float(confusion.diagonal().sum()) / total if total else float("nan")


def reduce_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Sum the confusion matrix over DDP ranks when a process group is initialised (identity otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        confusion = confusion.clone()
        torch.distributed.all_reduce(confusion)
    return confusion


def summarise(confusion: torch.Tensor, classes: list[str] | None = None) -> dict[str, object]:
    """mIoU, pixel accuracy, per-class IoU (by name), the pixel count and the confusion matrix (rows: true class,
    columns: predicted class, in ``classes`` order)."""
    names = classes or [str(i) for i in range(confusion.shape[0])]
    ious = iou_per_class(confusion).tolist()
    per_class = {n: (None if math.isnan(v) else v) for n, v in zip(names, ious, strict=True)}
    return {
        "miou": mean_iou(confusion),
        "pixel_acc": pixel_accuracy(confusion),
        "pixels": int(confusion.sum()),
        "per_class_iou": per_class,
        "confusion": confusion.tolist(),
    }

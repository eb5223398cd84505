"""Inference strategies (V2 §6.3 Table 7): single scale, or multi-scale inputs + left-right flips ("MF").

MF runs the model on the image resized by each scale, and on its mirror image, and averages the class
probabilities after resizing them back to the input size (DeepLab's ``predict_labels_multi_scale``). Scaled
sizes follow DeepLab: ``int((size - 1) * scale + 1)``, which keeps 513-style sizes (≡ 1 mod 2^k) aligned with
the strides — 513 at scales 0.5 … 1.75 gives 257, 385, 513, 641, 769, 897.

The multiply-adds of a strategy are counted in ``mobilenets.analysis.dense``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import ConfigError

SINGLE_SCALE: tuple[float, ...] = (1.0,)
# DeepLab's PASCAL VOC evaluation scales (its README: --eval_scales=0.5:0.25:1.75) with --add_flipped_images.
DEEPLAB_EVAL_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scaled_size(size: int, scale: float) -> int:
    """DeepLab's ``scale_dimension``: ``int((size - 1) * scale + 1)``."""
    return max(1, int((size - 1) * scale + 1))


def _check_scales(scales: Sequence[float]) -> None:
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"scales must be a non-empty list of positive numbers, got {list(scales)}")


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = SINGLE_SCALE, flip: bool = False
) -> torch.Tensor:
    """Class probabilities N×K×H×W averaged over ``scales`` (and their left-right mirrors when ``flip``)."""
    _check_scales(scales)
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    for scale in scales:
        size = (scaled_size(h, scale), scaled_size(w, scale))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for view, mirrored in views:
            probs = model(view).softmax(1)
            if mirrored:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=True)
            total = probs if total is None else total + probs
            passes += 1
    assert total is not None
    return total / passes


def predict_labels(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = SINGLE_SCALE, flip: bool = False
) -> torch.Tensor:
    """Per-pixel class indices N×H×W (the arg-max of ``predict_probs``)."""
    return predict_probs(model, images, scales, flip).argmax(1)

"""Calibration images for int8 (ONNX static quantisation, the fused engine's int8 path): the first images of a
model's training data, in the eval transform it was trained with — one entry point for every task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mobilenets.data.transforms import TransformConfig
from mobilenets.errors import ConfigError, InputError

CALIBRATION_BATCH = 16  # images per batch of a detector's or segmenter's calibration set


def calibration_batches(trained: Any, data: str, count: int, transform: TransformConfig) -> list[torch.Tensor]:
    """The first ``count`` training images of ``data`` as model inputs: a classifier's through ``transform``
    ('embedded', a Fashion-MNIST IDX folder or an image folder); a detector's or segmenter's through the task's
    own eval transform at ``transform.resolution`` ('embedded': the scenes it was trained on)."""
    if count < 1:
        raise ConfigError(f"calibration needs at least one image, got {count}")
    if trained.task == "classify":
        return _classifier_batches(data, transform, count)
    from mobilenets.deploy.dense import split_loader

    _, loader = split_loader(trained, data, "train", transform.resolution, CALIBRATION_BATCH, count)
    return [b["images"] for b in loader]


def _classifier_batches(data: str, transform: TransformConfig, count: int, batch: int = 32) -> list[torch.Tensor]:
    from PIL import Image

    from mobilenets.classification.sources import EMBEDDED, is_idx_folder
    from mobilenets.data import embedded, fashion_mnist
    from mobilenets.data.datasets import scan_folder
    from mobilenets.data.images import load_rgb
    from mobilenets.data.transforms import eval_transform

    if data == EMBEDDED or is_idx_folder(Path(data)):
        arrays, _ = embedded.load("train") if data == EMBEDDED else fashion_mnist.load_split("train", data)
        images = [Image.fromarray(a) for a in arrays[:count]]
    else:
        root = Path(data)
        _, samples = scan_folder(root / "train" if (root / "train").is_dir() else root)
        images = [load_rgb(p) for p, _ in samples[:count]]
    if not images:
        raise InputError(f"no calibration images in {data}")
    tensors = torch.stack([eval_transform(transform, img) for img in images])
    return list(tensors.split(batch))

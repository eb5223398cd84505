"""Top-1 of a PyTorch model or an exported file on a labelled evaluation set (the checkpoint's eval transform)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mobilenets.data.transforms import TransformConfig


def _dataset(data: Any, transform: TransformConfig, metadata: dict[str, Any]) -> Any:
    """``data`` names a labelled set ('embedded', an IDX or image folder), or is a dataset already."""
    if not isinstance(data, (str, Path)):
        return data
    from mobilenets.classification.sources import load_eval_data

    return load_eval_data(str(data), transform, list(metadata.get("classes") or []))


def top1(predict: Callable[[torch.Tensor], torch.Tensor], data: str, transform: TransformConfig,
         metadata: dict[str, Any], batch: int = 256) -> float:  # fmt: skip
    """Fraction of images of ``data`` whose arg-max logit is the label: the classification task's own metric
    (``classification.metrics``) with ``predict`` in the model's place."""
    from mobilenets.classification.metrics import accumulate, summarise
    from mobilenets.data.datasets import collate

    dataset = _dataset(data, transform, metadata)
    with torch.no_grad():
        batches = DataLoader(dataset, batch_size=batch, collate_fn=collate)
        num_classes = len(getattr(dataset, "classes", None) or metadata.get("classes") or [])
        counts = accumulate(predict, batches, num_classes)  # type: ignore[arg-type]
    return float(summarise(counts)["top1"])


def torch_top1(model: nn.Module, data: str, transform: TransformConfig, metadata: dict[str, Any]) -> float:
    model = model.eval()
    with torch.no_grad():
        return top1(model, data, transform, metadata)


def exported_top1(path: str | Path, data: str, transform: TransformConfig, metadata: dict[str, Any]) -> float:
    """Top-1 of an exported file (ONNX, TFLite or OpenVINO) in its runtime."""
    from mobilenets.deploy.artefact import artefact_logits, load_artefact

    return top1(artefact_logits(load_artefact(path)), data, transform, metadata)


def fused_top1(model: nn.Module, data: str, transform: TransformConfig, metadata: dict[str, Any],
               calibration: list[torch.Tensor] | None = None) -> float:  # fmt: skip
    """Top-1 through the fused C++ engine: fp32, or int8 calibrated on ``calibration``."""
    from mobilenets.deploy.fused import FusedEngine

    return top1(FusedEngine(model, calibration=calibration), data, transform, metadata)

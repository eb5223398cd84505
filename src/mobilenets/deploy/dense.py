"""Detectors and segmenters through their exported files (ONNX Runtime, LiteRT, OpenVINO), fp32 and int8:
calibration scenes and each task's own metric (COCO mAP for SSDLite, mIoU for DeepLabv3 / LR-ASPP), for PyTorch
and for the exported files alike.

What int8 covers: every node inside the network's modules (backbone, extra layers, predictors, segmentation
head), as for classifiers; the graph-level glue stays fp32 — a detector's anchor generation, box decoding and
softmax (quantising box coordinates to 256 steps of the image would move every box), a segmenter's final
upsampling to the input size and its sum of branch logits (``export.glue_nodes`` names them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from mobilenets.errors import InputError


def split_loader(trained: Any, data: str | None, split: str, resolution: int, batch: int, count: int | None) -> Any:
    """(dataset, loader) of a trained detector's or segmenter's ``split`` in its eval transform."""
    if trained.task == "detect":
        from mobilenets.detection.data import collate
        from mobilenets.detection.task import split_of as detection_split

        dataset: Any = detection_split(trained, data, resolution, split)
    else:
        from mobilenets.segmentation.data import collate  # type: ignore[assignment]
        from mobilenets.segmentation.task import split_of as segmentation_split

        _, _, dataset = segmentation_split(trained, data, split)
    if len(dataset) == 0:
        raise InputError(f"no {split} images for {trained.path} in {data or 'its training data'}")
    items = dataset if count is None else Subset(dataset, range(min(count, len(dataset))))
    return dataset, DataLoader(items, batch_size=batch, collate_fn=collate)


def task_metrics(trained: Any, data: str | None, resolution: int, exported: str | Path | None = None,
                 batch: int = 16) -> dict[str, float]:  # fmt: skip
    """The task's metric on ``data``'s validation split: COCO AP / AP50 / AP75 for a detector, mIoU and pixel
    accuracy for a segmenter (single scale), through PyTorch or, with ``exported``, an exported file in its
    runtime (``artefact.load_artefact``: ONNX Runtime, LiteRT or OpenVINO)."""
    from mobilenets.deploy.artefact import ArtefactDetector, artefact_logits, load_artefact

    model = trained.model.eval()
    artefact = load_artefact(exported) if exported is not None else None
    in_graph_nms = artefact is not None and artefact.metadata["outputs"] == ["boxes", "scores", "labels"]
    dataset, loader = split_loader(trained, data, "val", resolution, 1 if in_graph_nms else batch, None)
    if trained.task == "detect":
        from mobilenets.detection.task import coco_metrics, detect_batches

        predictor: Any = model if artefact is None else ArtefactDetector(artefact)
        metrics = coco_metrics(dataset, detect_batches(predictor, loader, dataset.category_ids))
        return {k: metrics[k] for k in ("mAP", "AP50", "AP75")}
    from mobilenets.segmentation.metrics import summarise
    from mobilenets.segmentation.task import accumulate

    logits: Callable[[torch.Tensor], torch.Tensor] = model if artefact is None else artefact_logits(artefact)
    result = summarise(accumulate(logits, loader, model.config.num_classes))
    return {"mIoU": float(result["miou"]), "pixel_acc": float(result["pixel_acc"])}  # type: ignore[arg-type]

"""The detection task for the one training engine (contract: ``mobilenets.engine.task``), and the evaluation and
prediction of detection checkpoints as data (the commands print).

``mobilenets train --task detect --model ssdlite_mobilenet_v2 --data DATA --resolution 320``. ``DATA`` is
``embedded`` (the default scene set, generated once into ``~/.cache/mobilenets``), a folder holding
``train/annotations.json`` and ``val/annotations.json`` (what ``mobilenets data scenes`` writes), or a COCO JSON
for training with ``--val-data`` another. ``--backbone-init`` starts the backbone from a classification checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobilenets.config import EvalConfig, PredictConfig, TrainConfig
from mobilenets.data.images import UnreadableImage, load_rgb
from mobilenets.data.transforms import to_tensor
from mobilenets.detection.boxes import nms
from mobilenets.detection.data import CocoDetection, CocoSource, CountSkipped, collate, find_sources, find_split
from mobilenets.detection.loss import build_targets, ssd_loss
from mobilenets.detection.transforms import EvalTransform, TrainTransform, resize
from mobilenets.errors import ConfigError, InputError
from mobilenets.registry import create_model

EMBEDDED = "embedded"
EMBEDDED_COUNTS = {"train": 2000, "val": 200}
METRIC_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


# -- data -------------------------------------------------------------------------------------------------
def embedded_scenes() -> Path:
    """The default scene set (``SceneConfig()``, 2000 train / 200 val), generated once and cached."""
    from mobilenets.data.scenes import SceneConfig, write_split

    cache = Path(os.environ.get("MOBILENETS_CACHE", Path.home() / ".cache" / "mobilenets"))
    root = cache / f"scenes-{EMBEDDED_COUNTS['train']}-{EMBEDDED_COUNTS['val']}-seed0"
    if (root / "val" / "annotations.json").is_file():
        return root
    tmp = cache / f".{root.name}.{os.getpid()}"
    for split, count in EMBEDDED_COUNTS.items():
        write_split(tmp, split, count, SceneConfig())
    with contextlib.suppress(OSError):  # another process finished first: keep theirs (identical bytes)
        tmp.rename(root)
    return root


def resolve_data(
    data: str, val_data: str | None, images: str | None = None, val_images: str | None = None
) -> tuple[CocoSource, CocoSource]:
    """(train, val) annotations and image folders from ``--data`` / ``--images`` / ``--val-data`` /
    ``--val-images`` (layouts: ``detection.data.find_split``)."""
    root = embedded_scenes() if data == EMBEDDED else Path(data)
    return find_sources(root, images, val_data, val_images)


def _size(resolution: int) -> tuple[int, int]:
    if resolution < 32 or resolution % 32:
        raise ConfigError(f"detection resolution must be a multiple of 32, got {resolution}")
    return resolution, resolution


def _report_problems(dataset: CocoDetection) -> None:
    """Skipped annotations are a warning (the command layer shows warnings as one line each)."""
    if dataset.problems:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(dataset.problems.items()))
        warnings.warn(f"{dataset.source}: {counts}", stacklevel=2)


# -- the task ---------------------------------------------------------------------------------------------
class DetectTask:
    """SSD loss on an SSDLite model; COCO mAP@[.5:.95] picks the best checkpoint."""

    name = "detect"
    primary_metric = "mAP"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        size = _size(config.model.resolution)
        require_pycocotools()  # the metric of every evaluation: missing, it must stop the run now, not after an epoch
        train, val = resolve_data(
            config.data.data, config.data.val_data, config.options.images, config.options.val_images
        )
        train_json, val_json = train.annotations, val.annotations
        transform = TrainTransform(size, config.options.zoom_out, config.options.photometric)
        self.train_set = CocoDetection(train_json, train.images, transform=transform)
        self.val_set = CocoDetection(val_json, val.images, transform=EvalTransform(size))
        for ds in (self.train_set, self.val_set):
            _report_problems(ds)
        if self.val_set.category_ids != self.train_set.category_ids:
            raise InputError(f"{val_json} has categories {self.val_set.category_ids}, {train_json} has "
                             f"{self.train_set.category_ids}")  # fmt: skip
        n = config.model.num_classes
        if n is not None and n != self.train_set.num_classes:
            raise ConfigError(f"--num-classes {n} but {train_json} has {self.train_set.num_classes}")

    def build_model(self) -> nn.Module:
        m, o = self.config.model, self.config.options
        overrides: dict[str, object] = {"num_classes": self.train_set.num_classes}
        if m.width is not None:
            overrides["width"] = m.width
        if o.full_lowest_layer:
            overrides["reduce_lowest_layer"] = False
        from mobilenets.detection.model import backbone_overrides

        overrides |= backbone_overrides(m.init or o.backbone_init)  # the BN eps / padding its weights need
        model = create_model(detector_name(m.name), **overrides)
        if o.backbone_init:
            from mobilenets.engine.checkpoints import resolve_weights

            model.load_backbone(str(resolve_weights(o.backbone_init)))
        return model

    def datasets(self) -> tuple[Dataset, Dataset]:
        return self.train_set, self.val_set

    def collate(self, items: Sequence[Any]) -> Any:
        return collate(list(items))

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raw = model(batch["images"])
        targets = batch["targets"]
        labels, codes = build_targets([t["boxes"] for t in targets], [t["labels"] for t in targets], raw["anchors"])
        loss, scalars = ssd_loss(raw["cls_logits"].float(), raw["box_codes"].float(), labels, codes)
        return loss, {**scalars, "skipped": float(batch.get("skipped", 0))}

    def evaluate(self, model: nn.Module, loader: DataLoader, distributed: bool) -> dict[str, float]:
        counted = CountSkipped(loader)  # unreadable images: counted (val_skipped), each named by a warning
        detections = detect_batches(model, counted, self.val_set.category_ids)
        skipped = counted.skipped
        if distributed:
            from mobilenets.engine.distributed import all_gather_object

            detections = [d for part in all_gather_object(detections) for d in part]
            skipped = sum(all_gather_object(skipped))
        return {**coco_metrics(self.val_set, detections), "skipped": float(skipped)}

    def metadata(self) -> dict[str, Any]:
        return {"classes": self.train_set.class_names, "category_ids": self.train_set.category_ids}


def detector_name(model: str) -> str:
    """``--model`` may name the detector (``ssdlite_mobilenet_v2``) or its backbone (``mobilenet_v2``)."""
    from mobilenets.registry import list_models

    if model.startswith("ssdlite_"):
        return model
    if f"ssdlite_{model}" in list_models():
        return f"ssdlite_{model}"
    raise ConfigError(f"--task detect needs an ssdlite_* model (or its backbone's name), got {model!r}")


def build_task(config: TrainConfig) -> DetectTask:
    return DetectTask(config)


# -- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def detect_batches(model: nn.Module, loader: Any, category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO result entries (original-image pixels, ``[x, y, w, h]``) for every image the loader yields."""
    results = []
    for batch in loader:
        images = batch["images"]
        outputs = model.predict(images)
        in_h, in_w = images.shape[-2:]
        for out, target in zip(outputs, batch["targets"], strict=True):
            oh, ow = target["orig_size"].tolist()
            scale = torch.tensor([ow / in_w, oh / in_h, ow / in_w, oh / in_h], device=out["boxes"].device)
            boxes = (out["boxes"] * scale).tolist()
            for box, score, label in zip(boxes, out["scores"].tolist(), out["labels"].tolist(), strict=True):
                x0, y0, x1, y1 = box
                bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
                image_id, category = int(target["image_id"]), category_ids[label - 1]
                results.append({"image_id": image_id, "category_id": category, "bbox": bbox, "score": round(score, 5)})
    return results


def require_pycocotools() -> None:
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise ConfigError(
            "detection is scored with COCO mAP, which needs pycocotools: pip install pycocotools"
        ) from None


def coco_metrics(dataset: CocoDetection, detections: list[dict[str, Any]]) -> dict[str, float]:
    """AP, AP50, AP75, AP small/medium/large with pycocotools, against the dataset's cleaned boxes (box areas)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ConfigError("COCO mAP needs pycocotools (pip install pycocotools)") from None
    images, annotations = [], []
    for r in dataset.records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height})
        for (x0, y0, x1, y1), label in zip(r.boxes.tolist(), r.labels.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": r.image_id, "category_id": dataset.category_ids[label - 1],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.class_names, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        if not detections:
            return {name: 0.0 for name in METRIC_NAMES}
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats: AP@[.5:.95], AP50, AP75, AP small, medium, large (-1 where a size has no ground truth)
    return {name: float(max(v, 0.0)) for name, v in zip(METRIC_NAMES, ev.stats[:6], strict=True)}


def class_agnostic_metrics(dataset: CocoDetection, detections: list[dict[str, Any]], iou: float) -> dict[str, float]:
    """The same metrics with every class merged into one: the detections of each image pooled and NMS-ed across
    classes at ``iou`` (the model's own threshold), scored against every box as one category. The gap to the
    class-aware figures is what naming the objects costs; the gap to 1 is the boxes'."""
    merged = copy.copy(dataset)
    merged.category_ids, merged.class_names = dataset.category_ids[:1], ["object"]
    merged.records = [dataclasses.replace(r, labels=np.ones_like(r.labels)) for r in dataset.records]
    per_image: dict[int, list[dict[str, Any]]] = {}
    for d in detections:
        per_image.setdefault(d["image_id"], []).append(d)
    pooled = []
    for dets in per_image.values():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=torch.float32)
        keep = nms(boxes, torch.tensor([d["score"] for d in dets]), iou)
        pooled += [{**dets[i], "category_id": merged.category_ids[0]} for i in keep.tolist()]
    return coco_metrics(merged, pooled)


def class_names(trained: Any) -> list[str]:
    classes = list(trained.metadata.get("classes") or [])
    num_classes = trained.model.config.num_classes
    return classes if len(classes) == num_classes else [str(i + 1) for i in range(num_classes)]


def split_of(trained: Any, data: str | None, resolution: int, split: str = "val") -> CocoDetection:
    """A trained detector's ``split`` at ``resolution`` in the eval transform: ``data`` (default: what it was
    trained on; for "val" its ``--val-data`` first) is 'embedded', a COCO annotations file or a folder holding
    one (or ``train/`` and ``val/`` ones)."""
    stored = trained.config.data
    if data is None and split == "val" and stored.val_data:
        data, images = stored.val_data, trained.config.options.val_images
    elif data is None:
        data, images = stored.data, trained.config.options.images if split == "train" else None
    else:
        images = None
    source = find_split(embedded_scenes() if data == EMBEDDED else data, split, images)
    path = source.annotations
    dataset = CocoDetection(path, source.images, transform=EvalTransform(_size(resolution)))
    _report_problems(dataset)
    if dataset.num_classes != trained.model.config.num_classes:
        raise InputError(
            f"{path} has {dataset.num_classes} categories but checkpoint {trained.path} was trained for "
            f"{trained.model.config.num_classes}"
        )
    return dataset


def evaluate_checkpoint(trained: Any, cfg: EvalConfig, predictor: Any = None) -> dict[str, Any]:
    """COCO AP, AP50, AP75, AP small/medium/large on ``cfg.data`` (default: the run's validation data) of
    ``predictor`` (anything with the detector's ``predict``; default: the model)."""
    dataset = split_of(trained, cfg.data, trained.config.model.resolution)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate, num_workers=cfg.workers)
    device = next(trained.model.parameters()).device
    counted = CountSkipped(loader)
    batches = ({"images": b["images"].to(device), "targets": b["targets"]} for b in counted)
    detections = detect_batches(predictor or trained.model, batches, dataset.category_ids)
    metrics = coco_metrics(dataset, detections)
    result = {"checkpoint": str(trained.path), "data": str(dataset.source), "images": len(dataset), **metrics,
              "skipped": counted.skipped, "problems": dict(dataset.problems)}  # fmt: skip
    if cfg.class_agnostic:
        result["class_agnostic"] = class_agnostic_metrics(dataset, detections, trained.model.config.nms_iou)
    return result


def eval_lines(result: dict[str, Any], cfg: EvalConfig) -> list[str]:
    lines = [f"{result['checkpoint']}  on {result['data']}  ({result['images']} images)"]
    lines.append("  " + "   ".join(f"{k} {result[k]:.4f}" for k in METRIC_NAMES))
    if "class_agnostic" in result:
        lines.append("  class-agnostic: " + "   ".join(f"{k} {result['class_agnostic'][k]:.4f}" for k in METRIC_NAMES))
    return lines


def draw_detections(image: np.ndarray, detections: list[dict[str, Any]], path: Path) -> None:
    """Save ``image`` with each detection's box, class name and score drawn on it."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for k, d in enumerate(detections):
        color = tuple(int(c) for c in np.array([(k * 97) % 255, (k * 57 + 120) % 255, (k * 151 + 60) % 255]))
        x0, y0, x1, y1 = d["box"]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
        label = f"{d['class']} {d['score']:.2f}"
        top = max(0.0, y0 - 11)
        draw.rectangle([x0, top, x0 + 6 * len(label) + 2, top + 11], fill=color)
        draw.text((x0 + 1, top), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def predict_images(trained: Any, cfg: PredictConfig, paths: Sequence[Path], stems: Sequence[str]) -> list[dict]:
    """Boxes, classes and scores per image — every detection scoring at least ``cfg.score_threshold``, at most
    ``cfg.max_detections`` (default: the model's own limit) — and a PNG per image with them drawn, named
    ``<stem>_detections.png`` under ``cfg.out``. An unreadable image gets ``error``."""
    classes = class_names(trained)
    size = _size(trained.config.model.resolution)
    device = next(trained.model.parameters()).device
    limit = cfg.max_detections or trained.model.config.max_detections
    results: list[dict[str, Any]] = []
    for path, stem in zip(paths, stems, strict=True):
        try:
            image = np.asarray(load_rgb(path))
        except UnreadableImage as e:  # reported, and the other images still predicted
            results.append({"image": str(path), "error": str(e)})
            continue
        resized, _, _ = resize(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), size)
        with torch.no_grad():
            out = trained.model.predict(to_tensor(resized)[None].to(device))[0]
        h, w = image.shape[:2]
        scale = torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]], device=out["boxes"].device)
        dets = [
            {"class": classes[label - 1], "label": label, "score": round(score, 4),
             "box": [round(v, 1) for v in box]}
            for box, score, label in zip((out["boxes"] * scale).tolist(), out["scores"].tolist(),
                                         out["labels"].tolist(), strict=True)
            if score >= cfg.score_threshold
        ][:limit]  # fmt: skip
        png = Path(cfg.out) / f"{stem}_detections.png"
        draw_detections(image, dets, png)
        results.append({"image": str(path), "detections": dets, "png": str(png)})
    return results


def prediction_line(result: dict[str, Any]) -> str:
    found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in result["detections"]) or "nothing"
    return f"{result['image']}: {found}  -> {result['png']}"

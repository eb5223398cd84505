"""The detection task for the one training engine (contract: ``mobilenets.engine.task``), plus ``eval`` and
``predict`` for detection checkpoints.

``mobilenets train --task detect --model ssdlite_mobilenet_v2 --data DATA --resolution 320``. ``DATA`` is
``embedded`` (the default scene set, generated once into ``~/.cache/mobilenets``), a folder holding
``train/annotations.json`` and ``val/annotations.json`` (what ``mobilenets data scenes`` writes), or a COCO JSON
for training with ``--val-data`` another. ``--backbone-init`` starts the backbone from a classification checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobilenets.data.transforms import to_tensor
from mobilenets.detection.boxes import nms
from mobilenets.detection.data import CocoDetection, collate
from mobilenets.detection.loss import build_targets, ssd_loss
from mobilenets.detection.transforms import EvalTransform, TrainTransform, resize
from mobilenets.errors import ConfigError, InputError
from mobilenets.registry import create_model

EMBEDDED = "embedded"
EMBEDDED_COUNTS = {"train": 2000, "val": 200}
METRIC_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Detection's own flags."""
    if command == "train":
        g = parser.add_argument_group("detection")
        g.add_argument("--backbone-init", help="classification checkpoint (same backbone and width) for the backbone")
        g.add_argument("--zoom-out", type=float, default=2.0, help="max zoom-out ratio (SSD: 4; 1 disables)")
        g.add_argument("--no-photometric", action="store_true", help="no photometric distortion")
        g.add_argument("--full-lowest-layer", action="store_true",
                       help="six anchors per location on the stride-16 map instead of TF's three")  # fmt: skip
    elif command == "eval":
        parser.add_argument("--class-agnostic", action="store_true",
                            help="also score boxes alone: every class merged into one, NMS across classes")  # fmt: skip
    elif command == "predict":
        parser.add_argument("--score-threshold", type=float, default=0.3, help="report detections above this")
        parser.add_argument("--out", default="predictions", help="folder for the PNGs with drawn boxes")


# -- data -------------------------------------------------------------------------------------------------
def embedded_scenes() -> Path:
    """The default scene set (``SceneConfig()``, 2000 train / 200 val), generated once and cached."""
    from mobilenets.data.scenes import SceneConfig, write_split

    cache = Path(os.environ.get("MOBILENETS_CACHE", Path.home() / ".cache" / "mobilenets"))
    root = cache / f"scenes-{EMBEDDED_COUNTS['train']}-{EMBEDDED_COUNTS['val']}-seed0"
    if (root / "val" / "annotations.json").is_file():
        return root
    tmp = cache / f".{root.name}.{os.getpid()}"
    print(f"generating the embedded scenes into {root} (once) ...", file=sys.stderr)
    for split, count in EMBEDDED_COUNTS.items():
        write_split(tmp, split, count, SceneConfig())
    with contextlib.suppress(OSError):  # another process finished first: keep theirs (identical bytes)
        tmp.rename(root)
    return root


def resolve_data(data: str, val_data: str | None) -> tuple[Path, Path]:
    """(train annotations, val annotations) from the ``--data`` / ``--val-data`` flags."""
    root = embedded_scenes() if data == EMBEDDED else Path(data)
    if root.is_dir():
        train, val = root / "train" / "annotations.json", root / "val" / "annotations.json"
        if not train.is_file():
            train = root / "annotations.json"
    else:
        train, val = root, root.parent / "val" / "annotations.json"
    if val_data:
        val = Path(val_data)
        if val.is_dir():
            val = val / "annotations.json"
    if not train.is_file():
        raise InputError(f"no COCO annotations for training at {train} (from --data {data})")
    if not val.is_file():
        raise InputError(f"no validation annotations at {val}; pass --val-data")
    return train, val


def _size(resolution: int) -> tuple[int, int]:
    if resolution < 32 or resolution % 32:
        raise ConfigError(f"detection resolution must be a multiple of 32, got {resolution}")
    return resolution, resolution


def _report_problems(dataset: CocoDetection) -> None:
    if dataset.problems:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(dataset.problems.items()))
        print(f"{dataset.source}: {counts}", file=sys.stderr)


# -- the task ---------------------------------------------------------------------------------------------
class DetectTask:
    """SSD loss on an SSDLite model; COCO mAP@[.5:.95] picks the best checkpoint."""

    name = "detect"
    primary_metric = "mAP"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        size = _size(args.resolution)
        train_json, val_json = resolve_data(args.data, args.val_data)
        transform = TrainTransform(size, getattr(args, "zoom_out", 2.0), not getattr(args, "no_photometric", False))
        self.train_set = CocoDetection(train_json, transform=transform)
        self.val_set = CocoDetection(val_json, transform=EvalTransform(size))
        for ds in (self.train_set, self.val_set):
            _report_problems(ds)
        if self.val_set.category_ids != self.train_set.category_ids:
            raise InputError(f"{val_json} has categories {self.val_set.category_ids}, {train_json} has "
                             f"{self.train_set.category_ids}")  # fmt: skip
        if args.num_classes is not None and args.num_classes != self.train_set.num_classes:
            raise ConfigError(f"--num-classes {args.num_classes} but {train_json} has {self.train_set.num_classes}")

    def build_model(self) -> nn.Module:
        overrides: dict[str, object] = {"num_classes": self.train_set.num_classes}
        if self.args.width is not None:
            overrides["width"] = self.args.width
        if getattr(self.args, "full_lowest_layer", False):
            overrides["reduce_lowest_layer"] = False
        model = create_model(detector_name(self.args.model), **overrides)
        if getattr(self.args, "backbone_init", None):
            from mobilenets.engine.checkpoints import resolve_weights

            model.load_backbone(str(resolve_weights(self.args.backbone_init)))
        return model

    def datasets(self) -> tuple[Dataset, Dataset]:
        return self.train_set, self.val_set

    def collate(self, items: Sequence[Any]) -> Any:
        return collate(list(items))

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raw = model(batch["images"])
        targets = batch["targets"]
        labels, codes = build_targets([t["boxes"] for t in targets], [t["labels"] for t in targets], raw["anchors"])
        return ssd_loss(raw["cls_logits"].float(), raw["box_codes"].float(), labels, codes)

    def evaluate(self, model: nn.Module, loader: DataLoader, distributed: bool) -> dict[str, float]:
        detections = detect_batches(model, loader, self.val_set.category_ids)
        if distributed:
            from mobilenets.engine.distributed import all_gather_object

            detections = [d for part in all_gather_object(detections) for d in part]
        return coco_metrics(self.val_set, detections)

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


def build_task(args: argparse.Namespace) -> DetectTask:
    return DetectTask(args)


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


def _load(args: argparse.Namespace) -> Any:
    from mobilenets.engine.checkpoints import load_trained
    from mobilenets.engine.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    trained = load_trained(args.checkpoint, resolve_device(args.device))
    classes = list(trained.metadata.get("classes") or [])
    num_classes = trained.model.config.num_classes
    if len(classes) != num_classes:
        classes = [str(i + 1) for i in range(num_classes)]
    return trained, classes, int(trained.args.get("resolution", 320))


def split_of(trained: Any, data: str | None, resolution: int, split: str = "val") -> CocoDetection:
    """A trained detector's ``split`` at ``resolution`` in the eval transform: ``data`` (default: what it was
    trained on; for "val" its ``--val-data`` first) is 'embedded', a COCO annotations file or a folder holding
    one (or ``train/`` and ``val/`` ones)."""
    data = data or (trained.args.get("val_data") if split == "val" else None)
    if data and data != EMBEDDED:
        path = Path(data) / "annotations.json" if Path(data).is_dir() else Path(data)
        if Path(data).is_dir() and not path.is_file():
            path = Path(data) / split / "annotations.json"
    else:
        train, val = resolve_data(data or trained.args.get("data", EMBEDDED), None)
        path = val if split == "val" else train
    dataset = CocoDetection(path, transform=EvalTransform(_size(resolution)))
    _report_problems(dataset)
    if dataset.num_classes != trained.model.config.num_classes:
        raise InputError(
            f"{path} has {dataset.num_classes} categories but checkpoint {trained.path} was trained for "
            f"{trained.model.config.num_classes}"
        )
    return dataset


def evaluate_main(args: argparse.Namespace) -> int:
    """``mobilenets eval``: COCO AP, AP50, AP75, AP small/medium/large; ``--json``."""
    trained, _, resolution = _load(args)
    dataset = split_of(trained, args.data, resolution)
    val = dataset.source
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate, num_workers=args.workers)
    device = next(trained.model.parameters()).device
    batches = ({"images": b["images"].to(device), "targets": b["targets"]} for b in loader)
    detections = detect_batches(trained.model, batches, dataset.category_ids)
    metrics = coco_metrics(dataset, detections)
    result = {"checkpoint": str(trained.path), "data": str(val), "images": len(dataset), **metrics,
              "problems": dict(dataset.problems)}  # fmt: skip
    if getattr(args, "class_agnostic", False):
        result["class_agnostic"] = class_agnostic_metrics(dataset, detections, trained.model.config.nms_iou)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{trained.path}  on {val}  ({len(dataset)} images)")
    print("  " + "   ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_NAMES))
    if "class_agnostic" in result:
        print("  class-agnostic: " + "   ".join(f"{k} {result['class_agnostic'][k]:.4f}" for k in METRIC_NAMES))
    return 0


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


def predict_main(args: argparse.Namespace) -> int:
    """``mobilenets predict``: boxes, classes and scores per image (JSON with ``--json``) and a PNG per image
    with them drawn, under ``--out``. Unreadable inputs are reported; exit status 1 if any."""
    from mobilenets.classification.task import expand_inputs

    trained, classes, resolution = _load(args)
    size = _size(resolution)
    device = next(trained.model.parameters()).device
    out_dir = Path(args.out)
    results: list[dict[str, Any]] = []
    for path in expand_inputs(args.inputs):
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as e:
            results.append({"image": str(path), "error": f"cannot read image: {e}"})
            continue
        resized, _, _ = resize(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), size)
        out = trained.model.predict(to_tensor(resized)[None].to(device))[0]
        h, w = image.shape[:2]
        scale = torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]], device=out["boxes"].device)
        dets = [
            {"class": classes[label - 1], "label": label, "score": round(score, 4),
             "box": [round(v, 1) for v in box]}
            for box, score, label in zip((out["boxes"] * scale).tolist(), out["scores"].tolist(),
                                         out["labels"].tolist(), strict=True)
            if score >= args.score_threshold
        ][: args.top_k if args.top_k and args.top_k > 0 else None]  # fmt: skip
        png = out_dir / f"{path.stem}_detections.png"
        draw_detections(image, dets, png)
        results.append({"image": str(path), "detections": dets, "png": str(png)})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
                continue
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
            print(f"{r['image']}: {found}  -> {r['png']}")
    return 1 if any("error" in r for r in results) else 0

"""COCO-format detection data: a validated loader and box-preserving augmentations (SSD paper §2.2 style).

Bad input is either repaired and counted (``CocoDetection.problems``) or refused with an ``InputError`` that
names the file and the entry:

- malformed JSON, a missing top-level list, an entry without its required keys, a non-numeric bbox -> error;
- an image file that does not exist -> the image is skipped (``images_missing``);
- a box partly outside the image -> clipped (``boxes_clipped``); zero or negative size, before or after
  clipping -> dropped (``boxes_degenerate``);
- an annotation whose ``category_id`` is not in ``categories`` -> dropped (``unknown_category``); one whose
  ``image_id`` is unknown -> dropped (``unknown_image``); ``iscrowd`` regions -> dropped (``crowd``);
- an image with no (remaining) annotation -> kept as a pure-background example (``images_without_boxes``).

Category ids are mapped, in increasing order, to contiguous labels 1..K (0 is the background of SSD's
classifier); ``category_ids[label - 1]`` maps back for COCO evaluation.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mobilenets.data.transforms import to_tensor
from mobilenets.errors import InputError


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # K×4 float32, pixels, [x0, y0, x1, y1]
    labels: np.ndarray  # K int64, 1..num_classes


def _require(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise InputError(f"{where}: missing {', '.join(repr(k) for k in missing)}")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


class CocoDetection(torch.utils.data.Dataset):
    """Images + boxes from a COCO ``instances`` JSON. ``images_root`` defaults to the JSON's folder."""

    def __init__(self, annotations: str | Path, images_root: str | Path | None = None, transform: Any = None) -> None:
        path = Path(annotations)
        if path.is_dir():
            path = path / "annotations.json"
        if not path.is_file():
            raise InputError(f"annotation file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"{path} is not UTF-8 text: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a COCO object with images/annotations/categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise InputError(f"{path}: {key!r} must be a list")
        root = Path(images_root) if images_root is not None else path.parent
        self.source = path
        self.transform = transform
        self.problems: Counter[str] = Counter()

        categories = data["categories"]
        for i, c in enumerate(categories):
            _require(c, ("id", "name"), f"{path}: categories[{i}]")
        if not categories:
            raise InputError(f"{path}: no categories")
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        self.category_ids = [int(c["id"]) for c in ordered]
        self.class_names = [str(c["name"]) for c in ordered]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise InputError(f"{path}: duplicate category ids {self.category_ids}")
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        for i, img in enumerate(data["images"]):
            _require(img, ("id", "file_name"), f"{path}: images[{i}]")
            images[int(img["id"])] = img
        per_image: dict[int, list[tuple[list[float], int]]] = {k: [] for k in images}
        for i, ann in enumerate(data["annotations"]):
            where = f"{path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
            _require(ann, ("image_id", "category_id", "bbox"), where)
            if ann.get("iscrowd", 0):
                self.problems["crowd"] += 1
                continue
            if int(ann["image_id"]) not in images:
                self.problems["unknown_image"] += 1
                continue
            if int(ann["category_id"]) not in label_of:
                self.problems["unknown_category"] += 1
                continue
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
                raise InputError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            if not all(math.isfinite(v) for v in bbox):
                raise InputError(f"{where}: bbox has a non-finite value {bbox!r}")
            per_image[int(ann["image_id"])].append((bbox, label_of[int(ann["category_id"])]))

        self.records: list[ImageRecord] = []
        for image_id, img in images.items():
            file = root / str(img["file_name"])
            if not file.is_file():
                self.problems["images_missing"] += 1
                continue
            if "width" in img and "height" in img:
                width, height = int(img["width"]), int(img["height"])
            else:
                width, height = _image_size(file)
            boxes, labels = self._clean(per_image[image_id], width, height)
            if len(boxes) == 0:
                self.problems["images_without_boxes"] += 1
            self.records.append(ImageRecord(image_id, file, width, height, boxes, labels))
        if not self.records:
            raise InputError(f"{path}: none of its {len(images)} images could be found under {root}")

    def _clean(self, anns: list[tuple[list[float], int]], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, labels = [], []
        for (x, y, w, h), label in anns:
            if w <= 0 or h <= 0:
                self.problems["boxes_degenerate"] += 1
                continue
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                self.problems["boxes_clipped"] += 1
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                self.problems["boxes_degenerate"] += 1
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(label)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> np.ndarray:
        record = self.records[index]
        try:
            with Image.open(record.path) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read image {record.path} (image id {record.image_id}): {e}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        image, boxes, labels = self.load_image(index), record.boxes.copy(), record.labels.copy()
        if image.shape[:2] != (record.height, record.width):
            # trust the file over the JSON: rescale the boxes to the real size
            sy, sx = image.shape[0] / record.height, image.shape[1] / record.width
            boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        h, w = image.shape[:2]
        target = {
            "boxes": torch.from_numpy(boxes / np.array([w, h, w, h], np.float32)).float(),  # normalised
            "labels": torch.from_numpy(labels).long(),
            "image_id": torch.tensor(record.image_id),
            "orig_size": torch.tensor([record.height, record.width]),
        }
        return to_tensor(image), target


def collate(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """Stack the images; keep per-image targets as a list (their box counts differ)."""
    return {"images": torch.stack([image for image, _ in items]), "targets": [t for _, t in items]}

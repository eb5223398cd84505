"""COCO-format detection data: a validated loader and box-preserving augmentations (SSD paper §2.2 style).

Bad input is either repaired and counted (``CocoDetection.problems``) or refused with an ``InputError`` that
names the file and the entry:

- malformed JSON, a missing top-level list, an entry without its required keys, a non-numeric or non-finite
  bbox, an id that is not an integer, two images with one id, a zero or negative width or height -> error;
- a ``file_name`` that leads outside the images folder (``..``, an absolute path, a symlink out) -> error;
- an image file that does not exist (or is not a regular file) -> the image is skipped (``images_missing``);
- an image that cannot be decoded or declares more pixels than ``data.images.max_pixels()`` -> skipped when it is
  loaded: the item is a ``Skipped``, ``collate`` drops and counts it, and a warning line names the file;
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
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenets.data.datasets import Skipped, readable
from mobilenets.data.images import UnreadableImage, inside, load_rgb, open_image
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
    with open_image(path) as img:
        return img.size


def _int(value: Any, where: str, key: str) -> int:
    """A COCO id: a JSON integer. ``"7"``, ``7.5``, ``true`` or ``null`` would silently become another entry's id
    (or crash later), so they are refused here, naming the entry."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def _side(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
        raise InputError(f"{where}: {key} must be a positive number of pixels, got {value!r}")
    return int(value)


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
        for i, c in enumerate(categories):
            _int(c["id"], f"{path}: categories[{i}]", "id")
        ordered = sorted(categories, key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in ordered]
        self.class_names = [str(c["name"]) for c in ordered]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise InputError(f"{path}: duplicate category ids {self.category_ids}")
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        first: dict[int, int] = {}
        for i, img in enumerate(data["images"]):
            where = f"{path}: images[{i}]"
            _require(img, ("id", "file_name"), where)
            image_id = _int(img["id"], where, "id")
            if image_id in images:  # a second entry would take over the first one's boxes
                raise InputError(f"{where}: duplicate image id {image_id} (also images[{first[image_id]}])")
            if not isinstance(img["file_name"], str) or not img["file_name"]:
                raise InputError(f"{where}: file_name must be a non-empty string, got {img['file_name']!r}")
            for key in ("width", "height"):
                if key in img:
                    _side(img[key], f"{where} (id {image_id})", key)
            images[image_id], first[image_id] = img, i
        per_image: dict[int, list[tuple[list[float], int]]] = {k: [] for k in images}
        for i, ann in enumerate(data["annotations"]):
            where = f"{path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
            _require(ann, ("image_id", "category_id", "bbox"), where)
            if ann.get("iscrowd", 0):
                self.problems["crowd"] += 1
                continue
            if _int(ann["image_id"], where, "image_id") not in images:
                self.problems["unknown_image"] += 1
                continue
            if _int(ann["category_id"], where, "category_id") not in label_of:
                self.problems["unknown_category"] += 1
                continue
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
                raise InputError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            if not all(math.isfinite(v) for v in bbox):
                raise InputError(f"{where}: bbox has a non-finite value {bbox!r}")
            per_image[ann["image_id"]].append((bbox, label_of[ann["category_id"]]))

        self.records: list[ImageRecord] = []
        for image_id, img in images.items():
            file = inside(root, img["file_name"], f"{path}: image id {image_id}")
            if not file.is_file():
                self.problems["images_missing"] += 1
                continue
            if "width" in img and "height" in img:
                width, height = int(img["width"]), int(img["height"])
            else:
                try:
                    width, height = _image_size(file)
                except UnreadableImage as e:
                    raise InputError(f"{path}: image id {image_id} has no width/height and {e}") from None
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
        """The image as H×W×3 uint8; ``UnreadableImage`` naming the file (and its id) when it cannot be."""
        record = self.records[index]
        try:
            return np.asarray(load_rgb(record.path))
        except UnreadableImage as e:
            raise UnreadableImage(f"{e} (image id {record.image_id})") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | Skipped:
        record = self.records[index]
        try:
            image = self.load_image(index)
        except UnreadableImage as e:  # one bad file costs its item, not the batch or the run
            print(f"warning: skipping {e}", file=sys.stderr)
            return Skipped(str(record.path), str(e))
        boxes, labels = record.boxes.copy(), record.labels.copy()
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


class CountSkipped:
    """The batches of a loader, adding up the unreadable images ``collate`` dropped from them (``skipped``), so an
    evaluation can report how many of its images it could not score."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.skipped = batches, 0

    def __iter__(self) -> Any:
        for batch in self.batches:
            self.skipped += int(batch.get("skipped", 0))
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def collate(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]] | Skipped]) -> dict[str, Any]:
    """Stack the images; keep per-image targets as a list (their box counts differ). Skipped (unreadable)
    items are dropped and counted in ``skipped``."""
    good, skipped = readable(items)
    return {
        "images": torch.stack([image for image, _ in good]),
        "targets": [t for _, t in good],
        "skipped": torch.tensor(skipped),
    }


# -- where the annotations and images are ---------------------------------------------------------------------
# COCO's own release layout: ROOT/annotations/instances_<split>.json with images in ROOT/<split>/
COCO_SPLITS = (("train2017", "val2017"), ("train2014", "val2014"), ("train", "val"))


@dataclass(frozen=True)
class CocoSource:
    """One split's annotation file and the folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path


def _listing(folder: Path) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError as e:
        return f"(cannot list: {e.strerror})"
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "(empty)"


def _default_images(annotations: Path) -> Path:
    """``ROOT/<split>/`` for COCO's ``ROOT/annotations/instances_<split>.json``, else the JSON's own folder."""
    split = annotations.stem.removeprefix("instances_")
    coco = annotations.parent.name == "annotations" and annotations.stem != split
    return (
        annotations.parent.parent / split
        if coco and (annotations.parent.parent / split).is_dir()
        else annotations.parent
    )


def _source(annotations: Path, images: str | Path | None) -> CocoSource:
    if not annotations.is_file():
        raise InputError(f"annotation file not found: {annotations}")
    folder = Path(images) if images is not None else _default_images(annotations)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder} (for {annotations})")
    return CocoSource(annotations, folder)


def find_split(data: str | Path, split: str, images: str | Path | None = None) -> CocoSource:
    """``split`` ('train' or 'val') of ``data``: a COCO JSON file (images beside it unless ``images``), or a folder
    in one of three layouts, tried in this order —

    - COCO's own: ``annotations/instances_train2017.json`` with images in ``train2017/`` (likewise 2014, or plain
      ``train``/``val``);
    - split folders: ``train/annotations.json`` with its images beside it (what ``mobilenets data scenes`` writes);
    - one file: ``annotations.json`` (both splits then need their own ``--data`` / ``--val-data``).

    A folder in none of them is an error saying what was looked for and what is there."""
    path = Path(data)
    if path.is_file():
        return _source(path, images)
    if not path.is_dir():
        raise InputError(f"detection data not found: {path}")
    index = 0 if split == "train" else 1
    looked = []
    for names in COCO_SPLITS:
        name = names[index]
        annotations = path / "annotations" / f"instances_{name}.json"
        looked.append(f"annotations/instances_{name}.json")
        if annotations.is_file():
            folder = Path(images) if images is not None else path / name
            if not folder.is_dir():
                raise InputError(
                    f"{path} has {annotations.relative_to(path)} but no image folder {name}/ (found: "
                    f"{_listing(path)}); pass the images with --{'val-' if split == 'val' else ''}images DIR"
                )
            return _source(annotations, folder)
    for candidate in (path / split / "annotations.json", path / "annotations.json"):
        looked.append(str(candidate.relative_to(path)))
        if candidate.is_file():
            return _source(candidate, images)
    raise InputError(
        f"no {split} annotations in {path}: looked for {', '.join(looked)}; found {_listing(path)}"
        + (f"; in annotations/: {_listing(path / 'annotations')}" if (path / "annotations").is_dir() else "")
    )


def find_sources(
    data: str | Path,
    images: str | Path | None = None,
    val_data: str | Path | None = None,
    val_images: str | Path | None = None,
) -> tuple[CocoSource, CocoSource]:
    """(train, val) from ``--data`` / ``--images`` / ``--val-data`` / ``--val-images``. Without ``--val-data``
    the validation split comes from the same place: the folder's val split, or for a JSON file a sibling
    ``instances_val*.json`` (COCO's layout) or ``../val/annotations.json`` (split folders)."""
    train = find_split(data, "train", images)
    if val_data is not None:
        return train, find_split(val_data, "val", val_images)
    path = Path(data)
    if path.is_dir():
        return train, find_split(path, "val", val_images)
    # a train JSON named by file: its validation file where COCO's layout or the split folders would have it
    siblings = [path.parent / f"instances_{v}.json" for t, v in COCO_SPLITS if path.name == f"instances_{t}.json"]
    for candidate in [*siblings, path.parent.parent / "val" / "annotations.json"]:
        if candidate.is_file():
            return train, _source(candidate, val_images)
    raise InputError(f"no validation annotations found for {path}; pass --val-data (and --val-images)")

"""Where classification data comes from: ``--data`` names one of

- ``embedded`` — the Fashion-MNIST subset shipped in the package (train / test splits);
- ``scene-objects`` — Fashion-MNIST objects drawn as the embedded detection / segmentation scenes draw them
  (tint, aspect, soft edge, on a photo crop; ``mobilenets.data.scenes.object_view``): train views from the train
  split, fresh every epoch; val views from the test split, fixed. The system dataset, else the embedded subset;
- ``scene-clutter`` — the same views cut from a crowd: other garments around the object, under it and over it
  (as a box cut from a scene shows it; ``object_view(..., clutter=...)``);
- a Fashion-MNIST IDX folder (``train-images-idx3-ubyte[.gz]`` …) — train split, val = its test split;
- an image folder: ``root/train/<class>/…`` and ``root/val/<class>/…``, or ``root/<class>/…`` with
  ``--val-split`` (or a separate ``--val-data`` folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mobilenets.data import embedded, fashion_mnist
from mobilenets.data.datasets import ArrayDataset, FolderDataset, scan_folder, split_indices
from mobilenets.data.transforms import TransformConfig, eval_transform, train_transform
from mobilenets.errors import InputError

EMBEDDED = "embedded"
SCENE_OBJECTS = "scene-objects"
SCENE_CLUTTER = "scene-clutter"
SCENE_VIEWS = (SCENE_OBJECTS, SCENE_CLUTTER)


@dataclass
class ClassificationData:
    """The two datasets and the label names they share."""

    train: Dataset
    val: Dataset
    classes: list[str]


class _Pipeline:
    """A picklable transform (workers receive it): train or eval pipeline of one ``TransformConfig``."""

    def __init__(self, cfg: TransformConfig, train: bool) -> None:
        self.cfg, self.train = cfg, train

    def __call__(self, img):  # type: ignore[no-untyped-def]
        return train_transform(self.cfg, img) if self.train else eval_transform(self.cfg, img)


def is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("train-images-idx3-ubyte*"))


def _arrays(
    images: np.ndarray, labels: np.ndarray, classes: list[str], cfg: TransformConfig, train: bool
) -> ArrayDataset:
    return ArrayDataset(images, labels, classes, _Pipeline(cfg, train))


def _views(split: str, cfg: TransformConfig, train: bool, clutter: bool) -> Dataset:
    """The scene-object views of ``split``, drawn at the training resolution (one resampling, not two)."""
    from mobilenets.data.scenes import ObjectViews

    size = max(32, cfg.resolution)
    return ObjectViews(split, size, train, _Pipeline(cfg, train), clutter)  # type: ignore[return-value]


def load_data(
    data: str, cfg: TransformConfig, val_data: str | None = None, val_split: float | None = None, seed: int = 0
) -> ClassificationData:
    """Resolve ``--data`` / ``--val-data`` / ``--val-split`` into (train, val) datasets."""
    if data in SCENE_VIEWS:
        clutter = data == SCENE_CLUTTER
        train, val = _views("train", cfg, True, clutter), _views("val", cfg, False, clutter)
        return ClassificationData(train, val, list(fashion_mnist.CLASSES))
    if data == EMBEDDED or is_idx_folder(Path(data)):
        classes = list(embedded.CLASSES)
        if data == EMBEDDED:
            (xt, yt), (xv, yv) = embedded.load("train"), embedded.load("test")
        else:
            (xt, yt), (xv, yv) = fashion_mnist.load_split("train", data), fashion_mnist.load_split("test", data)
        yt, yv = yt.astype(np.int64), yv.astype(np.int64)
        if val_split:  # hold out part of the training split instead of using the test split
            tr, va = split_indices(len(yt), val_split, seed, yt.tolist())
            xt, yt, xv, yv = xt[tr], yt[tr], xt[va], yt[va]
        return ClassificationData(_arrays(xt, yt, classes, cfg, True), _arrays(xv, yv, classes, cfg, False), classes)

    root = Path(data)
    if not root.exists():
        raise InputError(f"data path not found: {root} (use 'embedded', an IDX folder or an image folder)")
    if (root / "train").is_dir() and val_data is None and not val_split:
        classes, train_samples = scan_folder(root / "train")
        if not (root / "val").is_dir():
            raise InputError(f"{root} has train/ but no val/ folder; add one, or pass --val-split or --val-data")
        _, val_samples = scan_folder(root / "val", classes)
    else:
        base = root / "train" if (root / "train").is_dir() else root
        classes, train_samples = scan_folder(base)
        if val_data is not None:
            _, val_samples = scan_folder(val_data, classes)
        elif val_split:
            tr, va = split_indices(len(train_samples), val_split, seed, [label for _, label in train_samples])
            train_samples, val_samples = [train_samples[i] for i in tr], [train_samples[i] for i in va]
        else:
            raise InputError(f"{root} has no val/ folder; pass --val-split FRACTION or --val-data FOLDER")
    return ClassificationData(
        FolderDataset(train_samples, classes, _Pipeline(cfg, True)),
        FolderDataset(val_samples, classes, _Pipeline(cfg, False)),
        classes,
    )


def load_eval_data(data: str, cfg: TransformConfig, classes: list[str]) -> Dataset:
    """A labelled evaluation set: ``embedded`` (test split), an IDX folder (test split) or an image folder
    (``root/val`` if present, else ``root/<class>/…``) whose class folders match the checkpoint's."""
    if data in SCENE_VIEWS:
        return _views("val", cfg, False, data == SCENE_CLUTTER)
    if data == EMBEDDED or is_idx_folder(Path(data)):
        x, y = embedded.load("test") if data == EMBEDDED else fashion_mnist.load_split("test", data)
        return _arrays(x, y.astype(np.int64), list(embedded.CLASSES), cfg, False)
    root = Path(data)
    base = root / "val" if (root / "val").is_dir() else root
    _, samples = scan_folder(base, classes)
    return FolderDataset(samples, classes, _Pipeline(cfg, False))

"""Classification datasets: image folders, in-memory arrays (Fashion-MNIST, the embedded subset).

Bad input policy (documented in the README, tested in tests/test_data.py):
- a missing path, a folder with no images, or an empty class folder stop the run at start-up with one line
  naming the path (an empty class would silently shift every later class index);
- files whose extension is not an image's are ignored;
- an image that cannot be decoded (corrupt, truncated, unreadable) is skipped and counted: the item comes back as
  ``Skipped(path, reason)``, ``collate`` drops it and reports the count (``skipped`` in the train log and the
  eval result), and one warning line names the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenets.data.images import UnreadableImage, is_image_file, load_rgb
from mobilenets.errors import InputError

Transform = Callable[[Image.Image], torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class Skipped:
    """An item whose image could not be decoded."""

    path: str
    reason: str


def readable(items: Sequence[T | Skipped]) -> tuple[list[T], int]:
    """A batch's readable items and how many were skipped; a batch with none readable is an error naming one."""
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it.path for it in items if isinstance(it, Skipped)]
    if not good:
        raise InputError(f"every image in a batch was unreadable, e.g. {skipped[0]}")
    return good, len(skipped)


def scan_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """``root/<class>/<image>`` → (class names, [(path, label)]). ``classes`` fixes the label order (a val
    folder must use the train folder's); otherwise it is the sorted subfolder names."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"data path not found: {root}")
    if not root.is_dir():
        raise InputError(f"data path is not a folder: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise InputError(f"no class folders under {root} (expected {root}/<class>/<image files>)")
    missing = [c for c in classes if c not in found]
    if missing:
        raise InputError(f"{root} lacks class folder(s) {missing} that the training data has")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not os.access(folder, os.R_OK | os.X_OK):  # rglob would silently yield nothing
            raise InputError(f"class folder {folder} is unreadable (permission denied)")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise InputError(f"class folder {root / name} has no image files")
        samples += [(p, label) for p in files]
    return list(classes), samples


class FolderDataset(Dataset):
    """Images decoded in the worker that asks for them; undecodable files come back as ``Skipped``."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], transform: Transform) -> None:
        self.samples, self.classes, self.transform = list(samples), list(classes), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Skipped:
        path, label = self.samples[index]
        try:
            img = load_rgb(path)
        except UnreadableImage as e:
            print(f"warning: skipping {e}", file=sys.stderr)
            return Skipped(str(path), str(e))
        return self.transform(img), label


class ArrayDataset(Dataset):
    """Images held in memory as uint8 arrays N×H×W (grey) or N×H×W×3, with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], transform: Transform) -> None:
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.transform = images, labels, list(classes), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        a = self.images[index]
        img = Image.fromarray(a, "L" if a.ndim == 2 else "RGB")
        return self.transform(img), int(self.labels[index])


def collate(items: Sequence[tuple[torch.Tensor, int] | Skipped]) -> dict[str, object]:
    """Stack the good items; count (and name) the skipped ones."""
    good, skipped = readable(items)
    return {
        "images": torch.stack([img for img, _ in good]),
        "labels": torch.tensor([label for _, label in good], dtype=torch.long),
        "skipped": torch.tensor(skipped),
    }


def split_indices(
    n: int, fraction: float, seed: int, labels: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """(train, val) indices with ``fraction`` held out — per class when labels are given (stratified)."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-split must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c) for c in sorted(set(labels))]
    )
    train: list[int] = []
    val: list[int] = []
    for g in groups:
        g = rng.permutation(g)
        k = max(1, round(len(g) * fraction)) if len(g) > 1 else 0
        val += g[:k].tolist()
        train += g[k:].tolist()
    return sorted(train), sorted(val)

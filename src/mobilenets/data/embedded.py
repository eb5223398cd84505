"""The embedded default data set: a class-balanced Fashion-MNIST subset shipped inside the package.

``fashion_mnist_subset.npz`` holds ``train_images``/``train_labels`` drawn from Fashion-MNIST's training split and
``test_images``/``test_labels`` from its test split (so held-out accuracy is measured on images the full data set
also keeps for testing). Fashion-MNIST is © Zalando SE, MIT licence: see ``fashion_mnist_LICENSE.txt``.
Rebuild with ``mobilenets data embedded --out FILE`` (needs Fashion-MNIST's IDX files, e.g. Debian's
dataset-fashion-mnist).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenets.data import fashion_mnist
from mobilenets.errors import InputError

PATH = Path(__file__).with_name("fashion_mnist_subset.npz")
LICENSE = Path(__file__).with_name("fashion_mnist_LICENSE.txt")
CLASSES = fashion_mnist.CLASSES


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N int64) of the embedded subset; split 'train' or 'test'."""
    if split not in ("train", "test"):
        raise InputError(f"unknown split {split!r} of the embedded data; expected 'train' or 'test'")
    if not PATH.is_file():
        raise InputError(f"the embedded data file {PATH} is missing from the installation")
    with np.load(PATH) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` random items of every class."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def build(out: Path, train_per_class: int, test_per_class: int, root: Path | None = None, seed: int = 0) -> None:
    """Write ``per_class`` random images of every class of each split of the IDX data under ``root`` to ``out``."""
    arrays = {}
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        images, labels = fashion_mnist.load_split(split, root)
        idx = balanced_subset(labels, k, seed)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[idx], labels[idx].astype(np.uint8)
    np.savez_compressed(out, **arrays)

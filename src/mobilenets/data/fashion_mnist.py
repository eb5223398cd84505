"""Fashion-MNIST in its original IDX files (``*-ubyte.gz``), read directly. MIT licence, Zalando Research."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mobilenets.errors import InputError

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or plain): magic 0x0000 + dtype code 0x08 (uint8) + ndim, big-endian sizes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"{path} is not a uint8 IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise InputError(f"{path} is truncated: header says {shape}, file has {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_root(root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else SYSTEM_ROOT
    if not (root / _FILES["train"][0]).is_file() and not (root / _FILES["test"][0]).is_file():
        raise InputError(
            f"no Fashion-MNIST IDX files under {root} (install Debian's dataset-fashion-mnist, or pass the folder)"
        )
    return root


def load_split(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N uint8) for split 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    base = find_root(root)
    images, labels = (read_idx(base / name) for name in _FILES[split])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"Fashion-MNIST {split} files under {base} disagree: {images.shape} vs {labels.shape}")
    return images, labels

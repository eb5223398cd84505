"""What the training-run tests share: a tiny image folder cut from the embedded Fashion-MNIST and the command
line of a small, fast, seeded run on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mobilenets.data import embedded

CLASSES = (0, 1, 7)  # T-shirt, trouser, sneaker


def write_image_folder(root: Path) -> Path:
    """3 classes × 12 train / 4 val images under ``root/train/c<k>/`` and ``root/val/c<k>/``."""
    x, y = embedded.load("train")
    for c in CLASSES:
        idx = np.flatnonzero(y == c)
        for split, sl in (("train", idx[:12]), ("val", idx[12:16])):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in sl:
                Image.fromarray(x[i]).save(root / split / f"c{c}" / f"{i}.png")
    return root


def train_args(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    """``mobilenets train`` on ``data``: V2 α 0.35 at 32 px, batch 9, one thread, seed 3, no progress bar."""
    return [
        "train", "--data", str(data), "--out", str(out), "--model", "mobilenet_v2", "--width", "0.35",
        "--resolution", "32", "--batch-size", "9", "--epochs", str(epochs), "--workers", "0", "--threads", "1",
        "--seed", "3", "--no-progress", "--crop-scale", "0.5", "1", *extra,
    ]  # fmt: skip

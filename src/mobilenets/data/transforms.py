"""Image transforms without torchvision: PIL for geometry, then a normalised float tensor C×H×W.

Randomness comes from ``torch``'s global generator, which the engine's ``SeededDataset`` seeds per item from
(seed, epoch, index) — so augmentation is reproducible whatever the number of workers or processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobilenets.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's resampling filters by the names timm's ``pretrained_cfg`` and torchvision's transforms use.
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class TransformConfig:
    """One description for the train and eval pipelines.

    Train: random-resized crop (area fraction ``scale``, aspect ``ratio``) to ``resolution``, optional
    horizontal flip, normalise. Eval: resize the shorter side to ``resolution / crop_pct``, centre crop,
    normalise. ``crop_pct`` 0.875 is the ImageNet convention (256 → 224); 1.0 keeps the whole image.
    ``interpolation`` is the resampling filter of both resizes; ``channel_order`` "bgr" feeds the network
    blue first (Caffe-trained weights), with ``mean``/``std`` given in that order. A checkpoint stores this
    (``to_dict``) so inference preprocesses exactly as the weights were trained.
    """

    resolution: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ConfigError(f"resolution must be >= 1, got {self.resolution}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")

    @property
    def resize(self) -> int:
        """The shorter side before the eval centre crop (256 for 224 at crop_pct 0.875)."""
        return round(self.resolution / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for a checkpoint's metadata (read back by :meth:`from_dict`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> TransformConfig:
        """The inverse of :meth:`to_dict`; unknown fields are an error naming ``source``."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{source}: unknown transform fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def random_resized_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A crop (left, top, right, bottom) covering a random area fraction and aspect ratio (Inception's
    augmentation, as torchvision draws it: 10 tries, then a centre crop clamped to the ratio range)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,)))
            top = int(torch.randint(0, height - h + 1, (1,)))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_tensor(
    img: Image.Image | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """An image (PIL, or H×W / H×W×3 uint8) as a normalised float32 tensor 3×H×W, ``(x / 255 - mean) / std``.

    The arithmetic is NumPy's, in float32: a data-loading step stays off torch's intra-op thread pool, which
    the training step is using (the torch version, timed ad hoc for a 160-px image on two loaded cores, took
    about 30 ms against 0.6 ms quiet)."""
    a = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if a.ndim == 2:  # grey → 3 channels
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def train_transform(cfg: TransformConfig, img: Image.Image) -> torch.Tensor:
    box = random_resized_box(img.width, img.height, cfg.scale, cfg.ratio)
    img = img.resize((cfg.resolution, cfg.resolution), INTERPOLATIONS[cfg.interpolation], box=box)
    if cfg.hflip and float(torch.rand(1)) < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalise(cfg, img)


def eval_transform(cfg: TransformConfig, img: Image.Image) -> torch.Tensor:
    short = cfg.resize
    w, h = img.size
    size = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    img = img.resize(size, INTERPOLATIONS[cfg.interpolation])
    left, top = (size[0] - cfg.resolution) // 2, (size[1] - cfg.resolution) // 2
    img = img.crop((left, top, left + cfg.resolution, top + cfg.resolution))
    return _normalise(cfg, img)


def _normalise(cfg: TransformConfig, img: Image.Image) -> torch.Tensor:
    if cfg.channel_order == "rgb":
        return to_tensor(img, cfg.mean, cfg.std)
    # mean / std are in the network's (BGR) order: normalise the RGB image with them reversed, then flip.
    return to_tensor(img, cfg.mean[::-1], cfg.std[::-1]).flip(0)

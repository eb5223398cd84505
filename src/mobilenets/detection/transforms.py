"""Box-preserving augmentations (SSD paper §2.2, the TF OD API's ``ssd_random_crop`` + flip, and the
photometric distortion / zoom-out of the SSD reference code).

Every function takes (image H×W×3 uint8, boxes K×4 float32 pixels [x0, y0, x1, y1], labels K) and returns the
same triple. Randomness comes from ``rng`` (default: NumPy's global generator, which the engine seeds per item).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mobilenets.data.transforms import IMAGENET_MEAN

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]
_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)  # SSD: no crop, or a crop overlapping some box by at least this


def _iou_matrix(crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of every crop (T×4) with every box (K×4): T×K."""
    lt = np.maximum(crops[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(crops[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_c = (crops[:, 2:] - crops[:, :2]).prod(1)
    area_b = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (area_c[:, None] + area_b[None, :] - inter)


def hflip(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Sample:
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image[:, ::-1].copy(), flipped, labels


def resize(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> Sample:
    """Resize to ``size`` = (height, width); boxes scale with the image."""
    h, w = image.shape[:2]
    out = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    scale = np.array([size[1] / w, size[0] / h, size[1] / w, size[0] / h], np.float32)
    return out, boxes * scale, labels


def zoom_out(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, max_ratio: float, rng: Any = np.random
) -> Sample:
    """Place the image at a random spot of a canvas up to ``max_ratio`` times larger, filled with the mean."""
    h, w = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    ch, cw = int(h * ratio), int(w * ratio)
    top, left = rng.randint(0, ch - h + 1), rng.randint(0, cw - w + 1)
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    canvas[top : top + h, left : left + w] = image
    return canvas, boxes + np.array([left, top, left, top], np.float32), labels


def min_iou_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: Any = np.random) -> Sample:
    """SSD's sampler: a crop (side 0.3–1, aspect ½–2) whose IoU with some box is at least a random minimum;
    boxes whose centre falls inside are kept and clipped. Without boxes any crop is allowed.

    Each minimum gets 50 trials, drawn at once and tested together; the first trial that passes is taken, as
    the one-at-a-time loop of the reference code would take it."""
    h, w = image.shape[:2]
    trials = 50
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    while True:
        min_iou = _MIN_IOUS[rng.randint(len(_MIN_IOUS))]
        if min_iou is None:
            return image, boxes, labels
        cw, ch = rng.uniform(0.3 * w, w, trials), rng.uniform(0.3 * h, h, trials)
        left, top = rng.uniform(0, 1, trials) * (w - cw), rng.uniform(0, 1, trials) * (h - ch)
        crops = np.round(np.stack([left, top, left + cw, top + ch], 1).astype(np.float32))
        ok = (ch / cw >= 0.5) & (ch / cw <= 2) & (crops[:, 2] - crops[:, 0] >= 1) & (crops[:, 3] - crops[:, 1] >= 1)
        inside = (centres > crops[:, None, :2]).all(2) & (centres < crops[:, None, 2:]).all(2)  # T×K
        if len(boxes):
            ok &= (_iou_matrix(crops, boxes).max(1) >= min_iou) & inside.any(1)
        if ok.any():
            i = int(np.argmax(ok))
            return _apply_crop(image, boxes[inside[i]], labels[inside[i]], crops[i])


def _apply_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, crop: np.ndarray) -> Sample:
    x0, y0, x1, y1 = (int(v) for v in crop)
    out = boxes.copy()
    out[:, :2] = np.maximum(out[:, :2], crop[:2]) - crop[:2]
    out[:, 2:] = np.minimum(out[:, 2:], crop[2:]) - crop[:2]
    return image[y0:y1, x0:x1].copy(), out, labels


def photometric(image: np.ndarray, rng: Any = np.random) -> np.ndarray:
    """SSD's photometric distortion: brightness ±32, contrast and saturation ×[0.5, 1.5], hue ±18°, each
    with probability ½, contrast before or after the colour changes at random."""
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5

    def contrast(x: np.ndarray) -> np.ndarray:
        return x * rng.uniform(0.5, 1.5) if rng.random() < 0.5 else x

    if contrast_first:
        x = contrast(x)
    if rng.random() < 0.5:  # saturation: blend with the grey image
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = grey[..., None] + (x - grey[..., None]) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:  # hue: rotate the chroma plane of YIQ
        angle = np.deg2rad(rng.uniform(-18, 18))
        to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
        x = x @ (np.linalg.inv(to_yiq) @ rot @ to_yiq).T.astype(np.float32)
    if not contrast_first:
        x = contrast(x)
    return np.clip(x, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class TrainTransform:
    """Photometric distortion → zoom-out (p ½) → min-IoU crop → flip (p ½) → resize."""

    size: tuple[int, int]
    zoom_out_max: float = 2.0  # SSD uses 4; the scenes' objects are small already, so 2 by default
    photometric: bool = True

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Sample:
        rng = np.random
        if self.photometric:
            image = photometric(image, rng)
        if self.zoom_out_max > 1 and rng.random() < 0.5:
            image, boxes, labels = zoom_out(image, boxes, labels, self.zoom_out_max, rng)
        image, boxes, labels = min_iou_crop(image, boxes, labels, rng)
        if rng.random() < 0.5:
            image, boxes, labels = hflip(image, boxes, labels)
        image, boxes, labels = resize(image, boxes, labels, self.size)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1)  # drop slivers under a pixel after cropping
        return image, boxes[keep], labels[keep]


@dataclass(frozen=True)
class EvalTransform:
    """Resize only."""

    size: tuple[int, int]

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Sample:
        return resize(image, boxes, labels, self.size)

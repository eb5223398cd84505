"""Decoding one image file into RGB, whatever its mode, or a clear error naming the file.

Mode handling (each tested): grey ``L``/``1`` → replicated to RGB; palette ``P`` → its colours; ``CMYK``/``YCbCr``/
``LAB``/``HSV`` → PIL's RGB conversion; ``RGBA``/``LA``/``PA`` → alpha dropped (the colour underneath is kept,
as ImageNet pipelines do); 16-bit ``I;16*`` and 32-bit ``I``/``F`` → rescaled from their full range to 8 bits
(PIL's own conversion would clip everything above 255 to white).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mobilenets.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class UnreadableImage(InputError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, no permission)."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (see the module docstring for each mode)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a, top = a - lo, max(hi - lo, 1e-12)
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully (so truncation is caught here, not later) and return it as RGB."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise UnreadableImage(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these
        raise UnreadableImage(f"cannot decode image {path}: {e}") from None

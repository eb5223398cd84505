"""Decoding one image file into RGB, whatever its mode, or a clear error naming the file. Only regular files
within the pixel limit are decoded (``open_image``); paths read from data files stay inside their dataset
(``inside``).

Mode handling (each tested): grey ``L``/``1`` → replicated to RGB; palette ``P`` → its colours; ``CMYK``/``YCbCr``/
``LAB``/``HSV`` → PIL's RGB conversion; ``RGBA``/``LA``/``PA`` → alpha dropped (the colour underneath is kept,
as ImageNet pipelines do); 16-bit ``I;16*`` and 32-bit ``I``/``F`` → rescaled from their full range to 8 bits
(PIL's own conversion would clip everything above 255 to white).
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mobilenets.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# Decompression bombs: a few hundred bytes of PNG can declare 10⁹ pixels. The declared size is checked from the
# header before any pixel is decoded. 40 M pixels is a 7300×5500 photo, 120 MB as 8-bit RGB (160 MB with alpha,
# and at most 320 MB for a 16-bit grey image widened to float64 in ``to_rgb``).
MAX_PIXELS_ENV = "MOBILENETS_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImage(InputError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, no permission, too large)."""


class OutsideRoot(InputError):
    """A path from a data file (a COCO ``file_name``, a mask path) that leads outside the dataset's folder."""


def max_pixels() -> int:
    """The pixel limit: ``$MOBILENETS_MAX_IMAGE_PIXELS`` if set (a positive integer), else 40 M."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"${MAX_PIXELS_ENV} must be a positive integer, got {value!r}")
    return limit


def inside(root: str | Path, name: str, what: str) -> Path:
    """``root / name`` when it stays inside ``root`` once ``..``, absolute paths and symlinks are resolved;
    otherwise ``OutsideRoot`` naming the entry. A data file names files of its dataset, nothing else."""
    base = Path(root).resolve()
    path = base / name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise OutsideRoot(f"{what}: cannot resolve {name!r} under {base}: {e}") from None
    if not resolved.is_relative_to(base):
        raise OutsideRoot(f"{what}: {name!r} leads outside the dataset folder {base} (to {resolved}); refused")
    return path


@contextlib.contextmanager
def open_image(path: str | Path, what: str = "image") -> Iterator[Image.Image]:
    """``Image.open`` for a regular file only (a FIFO or a device would block or never end: refused without
    waiting) whose declared size is within ``max_pixels()``; anything else is ``UnreadableImage``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise UnreadableImage(f"{what} not found: {path}") from None
    except OSError as e:
        raise UnreadableImage(f"cannot open {what} {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableImage(f"cannot read {what} {path}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            try:
                with warnings.catch_warnings():  # PIL's bomb warning: the limit below is the one that applies
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(f)
            except UnidentifiedImageError:
                raise UnreadableImage(f"cannot decode {what} {path}: not an image format PIL reads") from None
            except Image.DecompressionBombError as e:  # PIL's own bar (2 × its MAX_IMAGE_PIXELS) came first
                raise UnreadableImage(
                    f"{what} {path} declares too many pixels, over the limit of {max_pixels():,} (${MAX_PIXELS_ENV}): "
                    f"{e}"
                ) from None
            except (OSError, ValueError, SyntaxError) as e:
                raise UnreadableImage(f"cannot decode {what} {path}: {e}") from None
            with img:
                width, height = img.size
                if width * height > max_pixels():
                    raise UnreadableImage(
                        f"{what} {path} declares {width}×{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels():,} (${MAX_PIXELS_ENV})"
                    )
                yield img
    finally:
        if fd >= 0:
            os.close(fd)


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
    with open_image(path) as img:
        try:
            img.load()
            return to_rgb(img)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these
            raise UnreadableImage(f"cannot decode image {path}: {e}") from None

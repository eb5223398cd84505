"""Segmentation data: where image/mask pairs come from, how masks are read, and augmentations that keep them aligned.

Layouts (``open_source`` picks by what the folder holds):

- **PASCAL VOC**: ``ROOT/JPEGImages/<id>.jpg``, ``ROOT/SegmentationClass/<id>.png`` (palette PNGs whose *indices*
  are the classes, 255 on object borders), ``ROOT/ImageSets/Segmentation/{train,val}.txt`` (one id per line).
  ``ROOT`` may also be the ``VOCdevkit`` folder holding ``VOC2012``.
- **Image + mask folders**: ``ROOT/images/*`` and ``ROOT/masks/*`` paired by file stem (``a.jpg`` ↔ ``a.png``);
  with ``ROOT/train`` and ``ROOT/val`` each in that layout, they are the two splits (what
  ``mobilenets data scenes --out ROOT`` writes).
- **embedded**: the deterministic Fashion-MNIST scenes of ``mobilenets.data.scenes``, generated in memory.

Class names (``class_names_of``): ``ROOT/classes.txt`` (line i names mask value i; ``mobilenets data scenes``
writes it), else the COCO ``categories`` of ``ROOT/train/annotations.json`` (ids 1..K, 0 the background),
else PASCAL VOC's 21 names for a VOC folder. Any other folder needs its names given (``--classes``).

Masks (``read_mask``): a palette (``P``) PNG gives its indices; a grey (``L``) PNG gives its values; an RGB mask is
accepted only if every colour is a PASCAL VOC palette colour (mapped to its index), otherwise it is an error; any
value that is neither a class (``0..K-1``) nor the ignore index 255 is an error naming the file and the values.
An image whose size differs from its mask's, an image without a mask or a mask without an image is an error
naming the files. Labels are never guessed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenets.data.datasets import Skipped, readable
from mobilenets.data.images import IMAGE_EXTENSIONS, UnreadableImage, inside, load_rgb, open_image
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from mobilenets.errors import ConfigError, InputError
from mobilenets.segmentation.metrics import IGNORE_INDEX

EMBEDDED = "embedded"
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff")


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (n×3 uint8): the bits of the class index spread over R, G, B from the top bit."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


# -- masks ----------------------------------------------------------------------------------------------------
def _rgb_to_index(rgb: np.ndarray, path: Path) -> np.ndarray:
    palette = voc_palette().astype(np.int32)
    codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    lookup = {int(code): i for i, code in enumerate(codes)}
    pixels = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(pixels, return_inverse=True)
    unknown = [c for c in colours.tolist() if c not in lookup]
    if unknown:
        shown = ", ".join(f"#{c:06x}" for c in unknown[:5])
        raise InputError(
            f"mask {path} is RGB with colours that are not PASCAL VOC palette entries ({shown}); "
            "save masks as palette or grey PNGs holding class indices"
        )
    return np.asarray([lookup[c] for c in colours.tolist()], np.uint8)[inverse].reshape(pixels.shape)


def mask_to_array(img: Image.Image, path: Path) -> np.ndarray:
    """A mask image as an H×W uint8 class-index array (see the module docstring for each mode)."""
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA"):
        return _rgb_to_index(np.asarray(img.convert("RGB"), dtype=np.uint8), path)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        a = np.asarray(img, dtype=np.int64)
        if a.min() < 0 or a.max() > 255:
            raise InputError(f"mask {path} has values outside 0..255 ({a.min()}..{a.max()})")
        return a.astype(np.uint8)
    raise InputError(f"mask {path} has image mode {img.mode!r}; expected a palette, grey or RGB PNG")


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path | str) -> None:
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        raise InputError(
            f"mask {path} has values {bad[:8]} outside the {num_classes} classes (0..{num_classes - 1}) "
            f"and the ignore index {IGNORE_INDEX}"
        )


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read and check one mask file: H×W uint8 of class indices and 255 (ignore)."""
    path = Path(path)
    with open_image(path, "mask") as img:  # a regular file within the pixel limit, else UnreadableImage
        try:
            img.load()
            mask = mask_to_array(img, path)
        except (OSError, ValueError, SyntaxError) as e:
            raise UnreadableImage(f"cannot decode mask {path}: {e}") from None
    check_mask_values(mask, num_classes, path)
    return mask


def load_pair(pair: Pair, num_classes: int) -> tuple[Image.Image, np.ndarray]:
    image = load_rgb(pair.image)
    mask = read_mask(pair.mask, num_classes)
    if mask.shape != (image.height, image.width):
        raise InputError(
            f"mask {pair.mask} is {mask.shape[1]}×{mask.shape[0]} but image {pair.image} is "
            f"{image.width}×{image.height}"
        )
    return image, mask


# -- layouts --------------------------------------------------------------------------------------------------
def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in extensions and not f.name.startswith("."):
            inside(folder, f.name, f"{folder}")  # a symlink leading out of the data folder is refused
            if f.stem in found:
                raise InputError(f"two files with the same stem in {folder}: {found[f.stem].name} and {f.name}")
            found[f.stem] = f
    return found


def folder_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[Pair]:
    """Pairs from an images folder and a masks folder, matched by file stem; any unmatched file is an error."""
    images = _files(Path(images_dir), IMAGE_EXTENSIONS)
    masks = _files(Path(masks_dir), MASK_EXTENSIONS)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        raise InputError(f"{len(no_mask)} image(s) without a mask in {masks_dir}, e.g. {images[no_mask[0]]}")
    if no_image:
        raise InputError(f"{len(no_image)} mask(s) without an image in {images_dir}, e.g. {masks[no_image[0]]}")
    if not images:
        raise InputError(f"no images in {images_dir}")
    return [Pair(images[k], masks[k]) for k in sorted(images)]


def voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def voc_pairs(root: str | Path, split: str) -> list[Pair]:
    """PASCAL VOC pairs of ``split`` (``ImageSets/Segmentation/<split>.txt``); a listed id without its JPEG or
    PNG is an error naming the missing file."""
    base = voc_root(Path(root))
    if base is None:
        raise InputError(f"{root} is not a PASCAL VOC folder (no JPEGImages/ and SegmentationClass/)")
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise InputError(f"split list not found: {listing}")
    pairs = []
    for line in listing.read_text().split():
        where = f"{listing}: {line!r}"  # an id is a file stem: '../x' or '/x' would leave the dataset
        pair = Pair(
            inside(base / "JPEGImages", f"{line}.jpg", where), inside(base / "SegmentationClass", f"{line}.png", where)
        )
        for f in (pair.image, pair.mask):
            if not f.is_file():
                raise InputError(f"{listing} lists {line!r} but {f} does not exist")
        pairs.append(pair)
    if not pairs:
        raise InputError(f"split list {listing} is empty")
    return pairs


def layout_of(root: str | Path) -> str:
    """'voc', 'splits' (ROOT/train and ROOT/val with images/ + masks/) or 'folder' (ROOT/images + ROOT/masks)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    if voc_root(root) is not None:
        return "voc"
    if (root / "train" / "images").is_dir() and (root / "train" / "masks").is_dir():
        return "splits"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    raise InputError(
        f"{root} is not a segmentation folder: expected VOC (JPEGImages/, SegmentationClass/), "
        "images/ + masks/, or train/ and val/ each holding images/ + masks/"
    )


def pairs_for(root: str | Path, split: str) -> list[Pair]:
    """The pairs of ``split`` ('train' or 'val') in a folder of any supported layout."""
    layout = layout_of(root)
    root = Path(root)
    if layout == "voc":
        return voc_pairs(root, split)
    if layout == "splits":
        return folder_pairs(root / split / "images", root / split / "masks")
    return folder_pairs(root / "images", root / "masks")


# -- augmentation ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegTransform:
    """Train: random scale (DeepLab's 0.5–2.0), pad to the crop (image with the mean, mask with ignore),
    random crop, random left-right flip. Eval: the image as it is (``crop = 0``) or resized to ``crop``."""

    crop: int = 0  # train crop side; 0 = no crop
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop < 0:
            raise ConfigError(f"crop must be >= 0, got {self.crop}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scale range must satisfy 0 < min <= max, got {self.scale}")


def augment(image: np.ndarray, mask: np.ndarray, cfg: SegTransform) -> tuple[np.ndarray, np.ndarray]:
    """Scale jitter, pad with (mean, ignore), crop, flip: the same geometry for image and mask. Randomness comes
    from ``torch``'s global generator (the engine seeds it per item)."""
    h, w = mask.shape
    lo, hi = cfg.scale
    s = lo + (hi - lo) * float(torch.rand(1))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    if cfg.crop:
        ph, pw = max(cfg.crop - nh, 0), max(cfg.crop - nw, 0)
        if ph or pw:
            fill = np.round(np.asarray(cfg.mean) * 255).astype(np.uint8)
            padded = np.empty((nh + ph, nw + pw, 3), np.uint8)
            padded[:] = fill
            padded[:nh, :nw] = image
            image = padded
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        top = int(torch.randint(0, mask.shape[0] - cfg.crop + 1, (1,)))
        left = int(torch.randint(0, mask.shape[1] - cfg.crop + 1, (1,)))
        image = image[top : top + cfg.crop, left : left + cfg.crop]
        mask = mask[top : top + cfg.crop, left : left + cfg.crop]
    if cfg.hflip and float(torch.rand(1)) < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


# -- datasets -------------------------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """Image/mask pairs from files. Items: ``{"image": 3×H×W float, "mask": H×W int64}``."""

    def __init__(
        self, pairs: list[Pair], num_classes: int, transform: SegTransform | None = None, train: bool = False
    ) -> None:
        self.pairs, self.num_classes, self.train = pairs, num_classes, train
        self.transform = transform or SegTransform()

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = load_pair(self.pairs[index], self.num_classes)
        return np.asarray(image, np.uint8), mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | Skipped:
        try:
            image, mask = self.load(index)
        except UnreadableImage as e:  # a corrupt or oversized file costs its pair, not the run (never a guess)
            print(f"warning: skipping {e}", file=sys.stderr)
            return Skipped(str(self.pairs[index].image), str(e))
        if self.train:
            image, mask = augment(image, mask, self.transform)
        return {
            "image": to_tensor(image, self.transform.mean, self.transform.std),
            "mask": torch.from_numpy(mask.astype(np.int64)),
        }


class SceneDataset(SegmentationDataset):
    """The embedded Fashion-MNIST scenes (``mobilenets.data.scenes``), generated on demand: scene ``i`` of a
    split is a pure function of (seed, split, i, size)."""

    def __init__(
        self, split: str, count: int, size: int, transform: SegTransform | None = None, train: bool = False
    ) -> None:
        from mobilenets.data import scenes

        super().__init__([], len(scene_classes()), transform, train)
        self.split, self.count = split, count
        self.config = scenes.SceneConfig(size=size)
        self._objects: tuple[np.ndarray, np.ndarray] | None = None
        # Scenes are pure functions of their index, so keeping them is exact; later epochs (in the process that
        # generated them: ``--workers 0``) skip the generator.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from mobilenets.data import scenes

        if self._objects is None:  # loaded lazily, once per worker process
            self._objects = scenes.load_objects(self.split)
        if index not in self._cache:
            scene = scenes.generate_scene(index, self.split, self._objects, self.config)
            self._cache[index] = (scene.image, scene.semantic)
        return self._cache[index]


def scene_classes() -> list[str]:
    from mobilenets.data.fashion_mnist import CLASSES

    return ["background", *CLASSES]


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line (blank lines skipped): line i names mask value i."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"class names file not found: {p}")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"class names file {p} is empty")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"class names file {p} names {dup!r} twice")
    return names


def _coco_class_names(path: Path) -> list[str]:
    """Background + the COCO categories' names, category id i naming mask value i (ids must be 1..K)."""
    import json

    try:
        categories = json.loads(path.read_text(encoding="utf-8"))["categories"]
        by_id = {int(c["id"]): str(c["name"]) for c in categories}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read the categories of {path}: {type(e).__name__}: {e}") from None
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise InputError(f"{path}: category ids {sorted(by_id)[:8]} are not 1..K, so they cannot be mask values")
    return ["background", *(by_id[i] for i in range(1, len(by_id) + 1))]


def class_names_of(root: str | Path) -> tuple[list[str], str] | None:
    """(class names, where they came from) for a data folder, or None when it does not name its classes."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return read_class_names(root / "classes.txt"), str(root / "classes.txt")
    coco = root / "train" / "annotations.json"
    if coco.is_file():
        return _coco_class_names(coco), f"the categories of {coco}"
    if voc_root(root) is not None:
        return list(VOC_CLASSES), "PASCAL VOC"
    return None


def collate(items: Sequence[dict[str, torch.Tensor] | Skipped]) -> dict[str, torch.Tensor]:
    """Stack items, padding different sizes to the largest (image with 0 = the mean, mask with ignore). Skipped
    (unreadable) pairs are dropped and counted in ``skipped``."""
    items, skipped = readable(items)
    h = max(int(it["mask"].shape[0]) for it in items)
    w = max(int(it["mask"].shape[1]) for it in items)
    images = torch.zeros(len(items), 3, h, w)
    masks = torch.full((len(items), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, it in enumerate(items):
        ih, iw = it["mask"].shape
        images[i, :, :ih, :iw] = it["image"]
        masks[i, :ih, :iw] = it["mask"]
    return {"images": images, "masks": masks, "skipped": torch.tensor(skipped)}

"""Deterministic detection / segmentation scenes: real Fashion-MNIST objects pasted onto real photos.

No offline dataset has real boxes or masks, so the project composes its own. Every object is a real Fashion-MNIST
image (MIT, Zalando Research), resized to a random scale and aspect, tinted, and pasted at a random position onto
a random crop of one of scikit-image's public-domain photos and textures. Because the generator draws every
pixel, the boxes and masks it writes are exact.

Conventions (what a consumer of the files can rely on):

- **Objects**: Fashion-MNIST pixel intensity ``a`` (0..1, after resizing) gives an opacity
  ``alpha = clip((a - 0.02) / 0.08, 0, 1)``: fully opaque inside the garment, a soft one-pixel fringe at its edge.
- **Instance masks** (COCO ``segmentation``, uncompressed RLE): the pixels where the object is the topmost one
  with ``alpha >= 0.5``. A later object covering a pixel with ``alpha >= 0.5`` takes it over.
- **Semantic masks** (``masks/*.png``, one uint8 channel): 0 background, 1..10 the Fashion-MNIST class + 1
  (``CATEGORIES``), 255 *ignore* where the pixel is a blend that no class owns: an object's fringe
  (``0 < alpha < 0.5``) that no later object covered.
- **Boxes** (COCO ``bbox`` = [x, y, w, h] in pixels, pixel edges): the tight box of the instance mask,
  ``x = first column``, ``w = last column - first column + 1``. So boxes describe the visible object; an object
  is placed only if every earlier object keeps at least ``min_visible`` of its own mask, so no object is hidden.
- **Splits**: train scenes draw objects from Fashion-MNIST's train split, val scenes from its test split.
- **Determinism**: scene ``i`` of a split depends only on (seed, split, i, size and the options), not on how many
  scenes are generated; the same call gives the same bytes on every machine (numpy PCG64 + Pillow resizing).

``mobilenets data scenes --out DIR`` writes ``DIR/{train,val}/images/*.jpg``, ``DIR/{train,val}/masks/*.png``,
``DIR/{train,val}/annotations.json`` (COCO; each image entry also names its ``mask_file``) and
``DIR/classes.txt``: the semantic masks' class names, one a line, line ``i`` naming mask value ``i``
(``background``, then T-shirt/top … Ankle boot), which segmentation training reads.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from mobilenets.data import fashion_mnist
from mobilenets.errors import ConfigError, InputError

# COCO category ids are the Fashion-MNIST label + 1 so that 0 stays "background" in the semantic masks.
CATEGORIES = tuple({"id": i + 1, "name": name} for i, name in enumerate(fashion_mnist.CLASSES))
SEMANTIC_CLASSES = ("background", *fashion_mnist.CLASSES)  # mask value i is SEMANTIC_CLASSES[i]
CLASSES_FILE = "classes.txt"
IGNORE_INDEX = 255
SPLITS = ("train", "val")
_SPLIT_SOURCE = {"train": "train", "val": "test"}  # Fashion-MNIST split the objects come from
# scikit-image's bundled public-domain photos and textures (all in its wheel, no download).
BACKGROUNDS = ("grass", "gravel", "brick", "coffee", "astronaut", "chelsea", "rocket", "camera", "moon", "cell")


@dataclass(frozen=True)
class SceneConfig:
    """What decides a scene set. Stored in ``scenes.json`` beside the generated files."""

    size: int = 256
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.12  # object side / image side (log-uniform between min and max)
    max_scale: float = 0.5
    min_visible: float = 0.5  # an earlier object must keep this fraction of its mask when a later one is pasted
    empty_fraction: float = 0.02  # scenes with no object at all (detectors must cope with them)

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ConfigError(f"scene size must be >= 32, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ConfigError(f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0 <= self.min_visible < 1 or not 0 <= self.empty_fraction < 1:
            raise ConfigError("min_visible and empty_fraction must be in [0, 1)")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Scene:
    """One generated scene. ``boxes`` are [x0, y0, x1, y1] pixel edges (x1 = last column + 1)."""

    image: np.ndarray  # H×W×3 uint8
    semantic: np.ndarray  # H×W uint8: 0 background, 1..10 class, 255 ignore
    instances: np.ndarray  # H×W int32: 0 none, k+1 for boxes[k], -1 ignore
    boxes: np.ndarray  # N×4 float32
    labels: np.ndarray  # N int64, category ids 1..10


ObjectSource = tuple[np.ndarray, np.ndarray]  # (images N×28×28 uint8, labels N in 0..9)


def load_objects(split: str, root: str | Path | None = None) -> ObjectSource:
    """Fashion-MNIST objects for a scene split: the system dataset, or the subset embedded in the package."""
    if split not in SPLITS:
        raise ConfigError(f"unknown scene split {split!r}; expected one of {SPLITS}")
    try:
        return fashion_mnist.load_split(_SPLIT_SOURCE[split], root)
    except InputError:
        if root is not None:
            raise
    try:  # the class-balanced subset shipped inside the package (mobilenets.data.embedded)
        from mobilenets.data import embedded
    except ImportError:
        raise InputError(
            "no Fashion-MNIST: install Debian's dataset-fashion-mnist or use a build with the embedded subset"
        ) from None
    return embedded.load(_SPLIT_SOURCE[split])


@cache
def _background(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # A stable per-scene stream: scene i never depends on how many scenes come before it.
    return np.random.Generator(np.random.PCG64([seed, zlib.crc32(split.encode()), index]))


def _draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    src = _background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    h, w = src.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(src[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    # Mild colour and brightness jitter so the same photo crop never repeats exactly.
    out = out * rng.uniform(0.7, 1.2) * rng.uniform(0.85, 1.15, size=3)
    return np.clip(out, 0, 255)


def _draw_object(rng: np.random.Generator, digit: np.ndarray, size: int, config: SceneConfig) -> tuple:
    scale = float(np.exp(rng.uniform(np.log(config.min_scale), np.log(config.max_scale))))
    aspect = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    h = max(8, min(size, round(size * scale * np.sqrt(aspect))))
    w = max(8, min(size, round(size * scale / np.sqrt(aspect))))
    a = np.asarray(Image.fromarray(digit).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        a = a[:, ::-1]
    alpha = np.clip((a - 0.02) / 0.08, 0.0, 1.0)
    # A saturated tint keeps the garment's own shading (its real texture) but varies its colour.
    tint = rng.uniform(0.15, 1.0, size=3)
    tint = tint / tint.max() * rng.uniform(160, 255)
    color = (0.3 + 0.7 * a)[..., None] * tint
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    return y, x, alpha, color


def _clip(shape: tuple[int, ...], y: int, x: int, h: int, w: int) -> tuple[slice, slice, slice, slice] | None:
    """(canvas rows, canvas cols, patch rows, patch cols) of a h×w patch at (y, x) clipped to ``shape``."""
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, shape[0]), min(x + w, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _blend(canvas: np.ndarray, y: int, x: int, alpha: np.ndarray, color: np.ndarray) -> None:
    """Paste an object (opacity ``alpha``, colour ``color``) onto ``canvas`` in place, top-left at (y, x); the
    part outside the canvas (a neighbour of a cluttered view) is cut off."""
    cut = _clip(canvas.shape, y, x, *alpha.shape)
    if cut is None:
        return
    rows, cols, prow, pcol = cut
    region = canvas[rows, cols]
    region[:] = region * (1 - alpha[prow, pcol, None]) + color[prow, pcol] * alpha[prow, pcol, None]


def generate_scene(index: int, split: str, objects: ObjectSource, config: SceneConfig = SceneConfig()) -> Scene:
    """Scene ``index`` of ``split``; pure function of (config, split, index, objects)."""
    rng = _rng(config.seed, split, index)
    size = config.size
    canvas = _draw_background(rng, size)
    semantic = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    images, labels = objects
    count = 0 if rng.random() < config.empty_fraction else int(rng.integers(config.min_objects, config.max_objects + 1))
    kept: list[int] = []  # category id per placed object
    areas: list[int] = []
    for _ in range(count):
        for _attempt in range(10):
            pick = int(rng.integers(len(images)))
            y, x, alpha, color = _draw_object(rng, images[pick], size, config)
            solid = alpha >= 0.5
            if not solid.any():
                continue
            window = instances[y : y + alpha.shape[0], x : x + alpha.shape[1]]
            covered = np.bincount(window[solid & (window > 0)], minlength=len(kept) + 1)[1:]
            visible = np.bincount(instances[instances > 0].ravel(), minlength=len(kept) + 1)[1:]
            if np.all(visible - covered >= config.min_visible * np.asarray(areas, dtype=np.float64)):
                break
        else:
            continue  # no placement that keeps earlier objects visible: this scene has fewer objects
        h, w = alpha.shape
        _blend(canvas, y, x, alpha, color)
        kept.append(int(labels[pick]) + 1)
        areas.append(int(solid.sum()))
        k = len(kept)
        fringe = (alpha > 0) & ~solid
        window[solid] = k
        window[fringe & (window > 0)] = -1  # a blend of two objects: nobody's pixel
        sem = semantic[y : y + h, x : x + w]
        sem[solid] = kept[-1]
        sem[fringe] = IGNORE_INDEX
    boxes, box_labels = [], []
    for k, category in enumerate(kept, start=1):
        ys, xs = np.nonzero(instances == k)
        if len(ys) == 0:
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box_labels.append(category)
    # Renumber instances so that instances == k + 1 matches boxes[k] even if an object vanished.
    present = [k for k in range(1, len(kept) + 1) if (instances == k).any()]
    remap = np.zeros(len(kept) + 2, np.int32)
    remap[-1] = -1
    for new, old in enumerate(present, start=1):
        remap[old] = new
    instances = remap[instances]
    return Scene(
        image=np.round(canvas).astype(np.uint8),
        semantic=semantic,
        instances=instances,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(box_labels, np.int64),
    )


# The classification view of the scene domain: an object fills this fraction of the view's side (log-uniform).
VIEW_SCALE = (0.45, 1.0)
# Cluttered views: other garments, 0-2 under the object and 0-2 over it, this fraction of the side (log-uniform).
CLUTTER_SCALE = (0.3, 1.0)


def object_view(
    rng: np.random.Generator, digit: np.ndarray, size: int, clutter: np.ndarray | None = None
) -> np.ndarray:
    """One Fashion-MNIST object (28×28 uint8) drawn exactly as :func:`generate_scene` draws objects (aspect,
    flip, tint, soft edge) on a background crop of the same photos, filling ``VIEW_SCALE`` of a ``size``×``size``
    view: H×W×3 uint8. A classifier trained on these views learns the scenes' look (colour, contrast, photos)
    before a detector or segmenter starts from its weights.

    ``clutter`` (a pool of N×28×28 objects): the view is cut from a crowd, as a box cut from a scene is — up to
    two other objects drawn before (under) the object and up to two after (over) it, each covering at most what
    the scenes allow (the object keeps ``min_visible`` of its own mask)."""
    if clutter is None:
        config = SceneConfig(size=size, min_scale=VIEW_SCALE[0], max_scale=VIEW_SCALE[1])
        canvas = _draw_background(rng, size)
        _blend(canvas, *_draw_object(rng, digit, size, config))
        return np.round(canvas).astype(np.uint8)
    return cluttered_view(rng, digit, size, clutter)[0]


def cluttered_view(
    rng: np.random.Generator, digit: np.ndarray, size: int, clutter: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`object_view` as a box cut from a crowded scene shows it: (view, the object's visible mask, its
    whole area). Other objects of ``clutter`` come in from the sides — their centres lie outside the middle of the
    view, and the view cuts them — up to two under the object and up to two over it, as long as the object keeps
    ``min_visible`` of its own mask (the scenes' rule)."""
    config = SceneConfig(size=size, min_scale=VIEW_SCALE[0], max_scale=VIEW_SCALE[1])
    near = SceneConfig(size=size, min_scale=CLUTTER_SCALE[0], max_scale=CLUTTER_SCALE[1])
    canvas = _draw_background(rng, size)

    def neighbour() -> tuple[int, int, np.ndarray, np.ndarray]:
        _, _, alpha, color = _draw_object(rng, clutter[rng.integers(len(clutter))], size, near)
        # Centre on a random point of the view's border band (outside the middle 60 %), clipped by the view.
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.6) * size
        cy, cx = size / 2 + reach * np.sin(angle), size / 2 + reach * np.cos(angle)
        return round(cy - alpha.shape[0] / 2), round(cx - alpha.shape[1] / 2), alpha, color

    under, over = (int(n) for n in rng.integers(0, 3, size=2))
    for _ in range(under):
        _blend(canvas, *neighbour())
    y, x, alpha, color = _draw_object(rng, digit, size, config)
    _blend(canvas, y, x, alpha, color)
    mine = np.zeros((size, size), bool)
    mine[y : y + alpha.shape[0], x : x + alpha.shape[1]] = alpha >= 0.5
    area = int(mine.sum())
    for _ in range(over):
        for _attempt in range(10):
            oy, ox, other, other_color = neighbour()
            covers = np.zeros_like(mine)
            _paste_clipped(covers, oy, ox, other >= 0.5)
            if (mine & ~covers).sum() >= config.min_visible * area:
                _blend(canvas, oy, ox, other, other_color)
                mine &= ~covers
                break
    return np.round(canvas).astype(np.uint8), mine, area


def _paste_clipped(target: np.ndarray, y: int, x: int, patch: np.ndarray) -> None:
    cut = _clip(target.shape, y, x, *patch.shape[:2])
    if cut is not None:
        target[cut[0], cut[1]] = patch[cut[2], cut[3]]


class ObjectViews:
    """Fashion-MNIST objects as scene-domain views (:func:`object_view`), one per object, for classification;
    ``clutter=True``: each among other objects of the same split, partly covered by some.

    ``train``: a fresh view each time an item is read, its randomness drawn from ``torch``'s generator (which the
    engine seeds per item from seed, epoch and index, so runs are reproducible and resumable). Otherwise view
    ``i`` is a pure function of (split, clutter, i), so validation is the same every epoch and on every machine.
    """

    def __init__(
        self, split: str, size: int, train: bool, transform: Callable | None = None, clutter: bool = False
    ) -> None:
        self.split, self.size, self.train, self.transform, self.clutter = split, size, train, transform, clutter
        self.images, self.labels = load_objects(split)
        self.classes = list(fashion_mnist.CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[object, int]:
        import torch

        if self.train:
            rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,)))))
        else:
            rng = _rng(0, f"{self.split}-{'clutter' if self.clutter else 'views'}", index)
        pool = self.images if self.clutter else None
        view = Image.fromarray(object_view(rng, self.images[index], self.size, pool))
        return (self.transform(view) if self.transform else view), int(self.labels[index])


def generate_scenes(
    count: int, split: str = "train", config: SceneConfig = SceneConfig(), objects: ObjectSource | None = None
) -> Iterator[Scene]:
    """Scenes 0..count-1 of ``split`` in memory (objects default to :func:`load_objects`)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown scene split {split!r}; expected one of {SPLITS}")
    objects = load_objects(split) if objects is None else objects
    for i in range(count):
        yield generate_scene(i, split, objects, config)


def rle_encode(mask: np.ndarray) -> dict[str, object]:
    """COCO uncompressed RLE (column-major runs, starting with a run of zeros); pycocotools reads it."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if counts and counts[-1] == 0:
        counts.pop()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def write_split(
    out: str | Path,
    split: str,
    count: int,
    config: SceneConfig = SceneConfig(),
    objects: ObjectSource | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``count`` scenes of ``split`` under ``out/split`` as COCO JSON + JPEG images + PNG masks, and the
    mask values' class names as ``out/classes.txt``."""
    write_class_names(out)
    root = Path(out) / split
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, scene in enumerate(generate_scenes(count, split, config, objects)):
        name = f"{i:06d}"
        Image.fromarray(scene.image).save(root / "images" / f"{name}.jpg", quality=92)
        Image.fromarray(scene.semantic).save(root / "masks" / f"{name}.png")
        images.append(
            {
                "id": i + 1,
                "file_name": f"images/{name}.jpg",
                "mask_file": f"masks/{name}.png",
                "height": config.size,
                "width": config.size,
            }
        )
        for k, (box, label) in enumerate(zip(scene.boxes.tolist(), scene.labels.tolist(), strict=True)):
            mask = scene.instances == k + 1
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": rle_encode(mask),
                }
            )
        if progress is not None:
            progress(i + 1)
    coco = {
        "info": {"description": f"mobilenets scenes, split {split}", "generator": config.to_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="fashion") for c in CATEGORIES],
    }
    path = root / "annotations.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(path)
    return path


def write_class_names(out: str | Path) -> Path:
    """``out/classes.txt``: one name per line, line i for mask value i (so segmentation names its classes)."""
    path = Path(out) / CLASSES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("".join(f"{name}\n" for name in SEMANTIC_CLASSES))
    tmp.replace(path)
    return path


def write_scenes(out: str | Path, counts: dict[str, int], config: SceneConfig = SceneConfig()) -> dict[str, Path]:
    """Write every split in ``counts`` (e.g. ``{"train": 2000, "val": 200}``) and ``out/scenes.json``."""
    out = Path(out)
    paths = {split: write_split(out, split, n, config) for split, n in counts.items()}
    meta = {"config": config.to_dict(), "counts": counts, "ignore_index": IGNORE_INDEX, "categories": CATEGORIES}
    (out / "scenes.json").write_text(json.dumps(meta, indent=2))
    return paths

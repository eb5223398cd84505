"""Image decoding, folder scanning, bad input, transforms, the embedded subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data import embedded, fashion_mnist
from mobilenets.data.datasets import FolderDataset, Skipped, collate, scan_folder, split_indices
from mobilenets.data.images import UnreadableImage, load_rgb, to_rgb
from mobilenets.data.transforms import TransformConfig, eval_transform, random_resized_box, train_transform
from mobilenets.engine.data import SeededDataset
from mobilenets.errors import InputError


# --- modes --------------------------------------------------------------------------------------------------
def test_grey_palette_rgba_cmyk_become_rgb(tmp_path: Path):
    grey = Image.fromarray(np.array([[0, 128], [255, 7]], np.uint8), "L")
    assert np.array_equal(np.asarray(to_rgb(grey))[..., 1], np.asarray(grey))
    pal = grey.convert("P")
    assert np.array_equal(np.asarray(to_rgb(pal)), np.asarray(grey.convert("RGB")))
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))  # fully transparent: the colour underneath is kept
    assert to_rgb(rgba).getpixel((0, 0)) == (10, 20, 30)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb(cmyk).getpixel((1, 1)) == (255, 0, 0)
    for img in (grey, pal, rgba, cmyk, Image.new("1", (3, 3), 1), Image.new("LA", (2, 2), (50, 9))):
        path = tmp_path / f"x_{img.mode}.{'jpg' if img.mode == 'CMYK' else 'png'}"
        img.save(path)
        out = load_rgb(path)
        assert out.mode == "RGB" and out.size == img.size


def test_16_bit_is_rescaled_not_clipped(tmp_path: Path):
    a = np.array([[0, 32768], [65535, 257]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # PNG 16-bit grey opens as I;16 / I
    rgb = np.asarray(load_rgb(path))
    assert rgb[..., 0].tolist() == [[0, 128], [255, 1]]
    flt = Image.fromarray(np.array([[-1.0, 1.0]], np.float32), "F")
    assert np.asarray(to_rgb(flt))[0, :, 0].tolist() == [0, 255]


# --- unreadable files ---------------------------------------------------------------------------------------
def test_corrupt_truncated_missing_files_raise_naming_the_file(tmp_path: Path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    for bad in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(UnreadableImage, match=bad.name):
            load_rgb(bad)
    assert load_rgb(good).size == (64, 64)


def make_folder(root: Path, spec: dict[str, int]) -> None:
    for name, n in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), i * 20).save(root / name / f"{i}.png")


def test_folder_scan_errors_are_one_clear_line(tmp_path: Path):
    with pytest.raises(InputError, match=r"not found: .*nowhere"):
        scan_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="no class folders"):
        scan_folder(tmp_path / "flat")
    make_folder(tmp_path / "d", {"cat": 2, "dog": 0})
    with pytest.raises(InputError, match=r"class folder .*dog has no image files"):
        scan_folder(tmp_path / "d")
    (tmp_path / "txt" / "cls").mkdir(parents=True)
    (tmp_path / "txt" / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="no image files"):
        scan_folder(tmp_path / "txt")
    make_folder(tmp_path / "ok", {"b": 2, "a": 3})
    (tmp_path / "ok" / "a" / "readme.txt").write_text("ignored")
    classes, samples = scan_folder(tmp_path / "ok")
    assert classes == ["a", "b"] and [label for _, label in samples] == [0, 0, 0, 1, 1]
    with pytest.raises(InputError, match=r"lacks class folder\(s\) \['c'\]"):
        scan_folder(tmp_path / "ok", ["a", "b", "c"])


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    make_folder(tmp_path, {"a": 3, "b": 2})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    classes, samples = scan_folder(tmp_path)
    cfg = TransformConfig(resolution=32, crop_pct=1.0)
    ds = FolderDataset(samples, classes, lambda img: eval_transform(cfg, img))
    items = [ds[i] for i in range(len(ds))]
    assert sum(isinstance(it, Skipped) for it in items) == 1
    assert "broken.png" in capsys.readouterr().err
    batch = collate(items)
    assert batch["images"].shape == (5, 3, 32, 32) and int(batch["skipped"]) == 1
    assert batch["labels"].tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(InputError, match=r"every image in a batch was unreadable, e\.g\. .*broken\.png"):
        collate([it for it in items if isinstance(it, Skipped)])


# --- transforms ---------------------------------------------------------------------------------------------
def test_transforms_shapes_determinism_and_centre_crop():
    img = Image.fromarray(np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8), "L")
    cfg = TransformConfig(resolution=32, scale=(0.3, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    a = train_transform(cfg, img)
    torch.manual_seed(0)
    b = train_transform(cfg, img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and torch.equal(a[0], a[2])  # grey → 3 equal channels
    torch.manual_seed(1)
    assert not torch.equal(train_transform(cfg, img), a)
    e = eval_transform(TransformConfig(resolution=32, crop_pct=1.0, mean=(0,) * 3, std=(1,) * 3), img.convert("RGB"))
    assert e.shape == (3, 32, 32) and float(e.min()) >= 0.0 and float(e.max()) <= 1.0
    for _ in range(50):
        left, top, right, bottom = random_resized_box(60, 40, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40


def test_split_is_stratified_and_disjoint():
    labels = [0] * 10 + [1] * 30
    tr, va = split_indices(40, 0.2, seed=0, labels=labels)
    assert not set(tr) & set(va) and len(tr) + len(va) == 40
    assert sum(labels[i] == 0 for i in va) == 2 and sum(labels[i] == 1 for i in va) == 6
    with pytest.raises(InputError, match="val-split"):
        split_indices(40, 1.5, 0)


# --- the embedded subset ------------------------------------------------------------------------------------
def test_embedded_subset_is_balanced_licensed_and_from_fashion_mnist():
    x, y = embedded.load("train")
    xt, yt = embedded.load("test")
    assert x.shape[1:] == (28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [len(y) // 10] * 10 and np.bincount(yt).tolist() == [len(yt) // 10] * 10
    assert "Zalando" in embedded.LICENSE.read_text() and "MIT" in embedded.LICENSE.read_text()
    try:
        full, _ = fashion_mnist.load_split("test")
    except InputError:
        pytest.skip("Fashion-MNIST is not installed")
    full_rows = {row.tobytes() for row in full.reshape(len(full), -1)}
    assert all(img.tobytes() in full_rows for img in xt[:50])  # the held-out images are Fashion-MNIST test images


def test_seeded_augmentation_is_reproducible_per_item():
    x, y = embedded.load("test")
    from mobilenets.data.datasets import ArrayDataset

    cfg = TransformConfig(resolution=32, scale=(0.5, 1.0))
    ds = SeededDataset(ArrayDataset(x[:4], y[:4], list(embedded.CLASSES), lambda im: train_transform(cfg, im)), 5)
    first = ds[2][0]
    ds[0], ds[1]
    assert torch.equal(ds[2][0], first)

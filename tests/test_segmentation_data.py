"""Segmentation data: VOC and folder layouts, mask modes, bad input named, aligned augmentation, scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets import InputError
from mobilenets.segmentation.data import (
    Pair,
    SceneDataset,
    SegmentationDataset,
    SegTransform,
    augment,
    collate,
    folder_pairs,
    load_pair,
    pairs_for,
    read_mask,
    voc_palette,
)


def _mask(h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[4:12, 6:20] = 3
    m[14:20, 2:10] = 15
    m[12, :] = 255  # a VOC-style border
    return m


def _palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask, mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    img.save(path)


def _image(path: Path, h: int = 24, w: int = 32) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_voc_palette_known_colours() -> None:
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # the border colour


def _voc(root: Path, ids: list[str]) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i in ids:
        _image(root / "JPEGImages" / f"{i}.jpg")
        _palette_png(_mask(), root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(ids[0] + "\n")
    return root


def test_voc_layout(tmp_path: Path) -> None:
    root = _voc(tmp_path / "VOCdevkit" / "VOC2012", ["2007_000032", "2007_000039"])
    pairs = pairs_for(tmp_path / "VOCdevkit", "train")
    assert [p.image.stem for p in pairs] == ["2007_000032", "2007_000039"]
    item = SegmentationDataset(pairs, 21)[0]
    assert item["image"].shape == (3, 24, 32) and item["mask"].dtype == torch.int64
    assert torch.equal(item["mask"], torch.from_numpy(_mask().astype(np.int64)))  # palette indices, 255 kept
    (root / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(InputError, match=r"2007_000039\.jpg"):
        pairs_for(root, "train")


def test_mask_modes_agree(tmp_path: Path) -> None:
    mask = _mask()
    _palette_png(mask, tmp_path / "p.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "l.png")
    Image.fromarray(voc_palette()[mask]).save(tmp_path / "rgb.png")  # colour-coded VOC mask
    for name in ("p.png", "l.png", "rgb.png"):
        assert np.array_equal(read_mask(tmp_path / name, 21), mask), name


def test_rgb_mask_with_unknown_colours_is_an_error(tmp_path: Path) -> None:
    rgb = voc_palette()[_mask()]
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(InputError, match=r"odd\.png.*#010203"):
        read_mask(tmp_path / "odd.png", 21)


def test_values_outside_the_classes_are_named(tmp_path: Path) -> None:
    _palette_png(_mask(), tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m\.png has values \[15\]"):
        read_mask(tmp_path / "m.png", 10)  # 15 is not a class of a 10-class set; 255 is fine


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", 24, 30)
    _palette_png(_mask(), tmp_path / "a.png")
    with pytest.raises(InputError, match=r"a\.png is 32×24 but image .*a\.jpg is 30×24"):
        load_pair(Pair(tmp_path / "a.jpg", tmp_path / "a.png"), 21)


def test_folder_pairs_and_missing_partners(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in ("x", "y"):
        _image(images / f"{stem}.jpg")
        _palette_png(_mask(), masks / f"{stem}.png")
    assert [p.mask.name for p in folder_pairs(images, masks)] == ["x.png", "y.png"]
    _image(images / "z.jpg")
    with pytest.raises(InputError, match=r"without a mask.*z\.jpg"):
        folder_pairs(images, masks)
    (images / "z.jpg").unlink()
    _palette_png(_mask(), masks / "w.png")
    with pytest.raises(InputError, match=r"without an image.*w\.png"):
        folder_pairs(images, masks)


def test_not_a_segmentation_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a segmentation folder"):
        pairs_for(tmp_path, "train")


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_and_mask_aligned(seed: int) -> None:
    # The image encodes the mask (class k painted grey 20·k), so any misalignment shows up as disagreement.
    mask = np.zeros((40, 48), np.uint8)
    mask[5:25, 10:40] = 2
    mask[28:38, 4:20] = 5
    image = np.repeat((mask * 20)[..., None], 3, axis=2).astype(np.uint8)
    torch.manual_seed(seed)
    cfg = SegTransform(crop=56, scale=(0.6, 1.6))
    out_img, out_mask = augment(image, mask, cfg)
    assert out_img.shape == (56, 56, 3) and out_mask.shape == (56, 56)
    labelled = out_mask != 255
    # Away from edges (5×5 neighbourhood of one label) the resampled image must show exactly the mask's class.
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(out_mask, 2, mode="edge"), (5, 5))
    interior = labelled & (windows.min(axis=(2, 3)) == windows.max(axis=(2, 3)))
    assert interior.sum() > 100
    agree = np.abs(out_img[..., 0].astype(int) - 20 * out_mask.astype(int)) <= 2
    assert agree[interior].all()
    # Padding: ignore in the mask, the mean colour in the image.
    fill = np.round(np.asarray(cfg.mean) * 255).astype(np.uint8)
    padded = ~labelled
    assert (out_img[padded] == fill).all()


def test_collate_pads_with_ignore() -> None:
    a = {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.int64)}
    b = {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.int64)}
    batch = collate([a, b])
    assert batch["images"].shape == (2, 3, 6, 5) and batch["masks"].shape == (2, 6, 5)
    assert (batch["masks"][0, 4:] == 255).all() and (batch["masks"][1, :, 3:] == 255).all()
    assert (batch["images"][0, :, 4:] == 0).all()


def test_embedded_scenes_are_deterministic_and_labelled() -> None:
    ds = SceneDataset("val", 3, 64)
    first, again = ds[1], SceneDataset("val", 3, 64)[1]
    assert torch.equal(first["mask"], again["mask"]) and torch.equal(first["image"], again["image"])
    assert first["image"].shape == (3, 64, 64)
    values = set(torch.cat([ds[i]["mask"].unique() for i in range(3)]).tolist())
    assert values <= set(range(11)) | {255} and len(values - {0, 255}) > 0


def test_export_int8_calibrates_and_scores_on_a_voc_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A VOC-trained segmenter (21 classes, a plain weights file) quantised on VOC's train list and scored on its
    val list; the images are 24×32, not the 32×32 the graph was traced at."""
    pytest.importorskip("onnxruntime")
    import json

    from mobilenets import create_model
    from mobilenets.checkpoint import save_weights
    from mobilenets.cli import main

    root = _voc(tmp_path / "VOC2012", ["a", "b", "c"])
    ckpt = tmp_path / "voc.safetensors"
    torch.manual_seed(0)
    save_weights(create_model("lraspp_mobilenet_v3_small", width=0.35, num_classes=21).eval(), ckpt)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "32", "--int8", "--calibration", str(root),
                 "--eval", str(root), str(out), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["calibration"]["images"] == 3  # the train list
    metrics = summary["metrics"]
    assert metrics["onnx_fp32"] == pytest.approx(metrics["pytorch"], abs=1e-3)
    assert 0.0 <= metrics["onnx_int8"]["pixel_acc"] <= 1.0

"""The generated scenes: deterministic, exact boxes and masks, COCO files that pycocotools reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobilenets.cli import main
from mobilenets.data import scenes
from mobilenets.data.scenes import IGNORE_INDEX, SceneConfig, generate_scene, generate_scenes, rle_encode
from mobilenets.errors import ConfigError


def _objects() -> scenes.ObjectSource:
    """Synthetic stand-ins (filled ellipses with a soft edge) so the core tests need no dataset."""
    yy, xx = np.mgrid[:28, :28]
    images, labels = [], []
    for k in range(10):
        r = ((yy - 14) / (6 + k % 4)) ** 2 + ((xx - 14) / (5 + k % 3)) ** 2
        images.append(np.clip((1.3 - r) * 255, 0, 255).astype(np.uint8))
        labels.append(k)
    return np.stack(images), np.array(labels, np.uint8)


CONFIG = SceneConfig(size=96, seed=3)


def test_same_seed_same_scene_and_independent_of_count() -> None:
    objects = _objects()
    a = list(generate_scenes(4, "train", CONFIG, objects))
    b = list(generate_scenes(6, "train", CONFIG, objects))
    for x, y in zip(a, b[:4], strict=True):
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.semantic, y.semantic)
        assert np.array_equal(x.boxes, y.boxes)
    other = generate_scene(0, "train", objects, SceneConfig(size=96, seed=4))
    assert not np.array_equal(other.image, a[0].image)
    val = generate_scene(0, "val", objects, CONFIG)
    assert not np.array_equal(val.image, a[0].image)


def test_boxes_and_masks_are_exact() -> None:
    objects = _objects()
    total = 0
    for scene in generate_scenes(12, "train", CONFIG, objects):
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert len(scene.boxes) == len(scene.labels)
        for k, (box, label) in enumerate(zip(scene.boxes, scene.labels, strict=True)):
            ys, xs = np.nonzero(scene.instances == k + 1)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # the instance's pixels carry its class in the semantic mask
            assert (scene.semantic[ys, xs] == label).all()
            assert 1 <= label <= 10
        # every class pixel belongs to some instance; ignore only where an object blends in
        assert np.isin(scene.semantic[scene.instances <= 0], [0, IGNORE_INDEX]).all()
        total += len(scene.boxes)
    assert total >= 12


def test_objects_stay_visible() -> None:
    objects = _objects()
    for scene in generate_scenes(10, "train", SceneConfig(size=96, seed=1, max_objects=8, min_visible=0.6), objects):
        for k in range(len(scene.boxes)):
            assert (scene.instances == k + 1).sum() > 0


def test_rle_round_trip_with_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((13, 17)) < 0.3
        rle = rle_encode(mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *rle["size"]))
        assert np.array_equal(decoded.astype(bool), mask)


def test_invalid_config_names_the_value() -> None:
    with pytest.raises(ConfigError, match="size"):
        SceneConfig(size=8)
    with pytest.raises(ConfigError, match="split"):
        list(generate_scenes(1, "test", CONFIG, _objects()))


def test_cli_writes_coco_files(tmp_path, monkeypatch) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    monkeypatch.setattr(scenes, "load_objects", lambda split, root=None: _objects())
    assert (
        main(["data", "scenes", "--out", str(tmp_path), "--train", "3", "--val", "2", "--size", "64", "--quiet"]) == 0
    )
    for split, n in (("train", 3), ("val", 2)):
        path = tmp_path / split / "annotations.json"
        data = json.loads(path.read_text())
        assert len(data["images"]) == n
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        coco = coco_mod.COCO(str(path))
        for ann in data["annotations"]:
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert ann["area"] == mask.sum()
        for image in data["images"]:
            assert (tmp_path / split / image["file_name"]).is_file()
            assert (tmp_path / split / image["mask_file"]).is_file()


def test_real_fashion_mnist_objects() -> None:
    try:
        objects = scenes.load_objects("val")
    except Exception:
        pytest.skip("Fashion-MNIST not available")
    scene = generate_scene(0, "val", objects, CONFIG)
    again = generate_scene(0, "val", objects, CONFIG)
    assert np.array_equal(scene.image, again.image)
    assert scene.image.std() > 5


def test_objects_fall_back_to_the_embedded_subset(monkeypatch, tmp_path) -> None:
    embedded = pytest.importorskip("mobilenets.data.embedded")
    if not embedded.PATH.is_file():
        pytest.skip("no embedded subset in this installation")
    monkeypatch.setattr(scenes.fashion_mnist, "SYSTEM_ROOT", tmp_path / "nothing-here")
    images, labels = scenes.load_objects("val")
    assert images.shape[1:] == (28, 28) and len(images) == len(labels)
    with pytest.raises(scenes.InputError):
        scenes.load_objects("val", root=tmp_path)


def _solid_object() -> np.ndarray:
    return np.full((28, 28), 255, np.uint8)  # fills its whole box: the view's footprint is the object's size


def test_object_view_draws_one_object_of_the_view_scale() -> None:
    size = 64
    for seed in range(20):
        background = scenes._draw_background(np.random.default_rng(seed), size)
        view = scenes.object_view(np.random.default_rng(seed), _solid_object(), size)
        assert view.shape == (size, size, 3) and view.dtype == np.uint8
        assert np.array_equal(view, scenes.object_view(np.random.default_rng(seed), _solid_object(), size))
        ys, xs = np.nonzero(np.abs(view.astype(np.int16) - np.round(background).astype(np.int16)).max(2) > 2)
        side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        # the longer side of a box of scale s and aspect in [0.7, 1.4] is at least s·size·√0.7 (minus rounding)
        assert scenes.VIEW_SCALE[0] * size * 0.7**0.5 - 2 <= side <= size


def test_cluttered_view_keeps_the_object_visible() -> None:
    size, pool = 64, np.stack([_solid_object()] * 3)
    covered = 0
    for seed in range(40):
        view, mine, area = scenes.cluttered_view(np.random.default_rng(seed), _solid_object(), size, pool)
        assert view.shape == (size, size, 3) and view.dtype == np.uint8
        assert area > 0 and mine.sum() >= scenes.SceneConfig().min_visible * area
        covered += int(mine.sum() < area)
        again = scenes.object_view(np.random.default_rng(seed), _solid_object(), size, pool)
        assert np.array_equal(view, again)
    assert covered > 5  # objects really are drawn over it


def test_object_views_fixed_for_val_seeded_by_torch_for_train(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(scenes, "load_objects", lambda split: _objects())
    val = scenes.ObjectViews("val", 48, train=False)
    assert len(val) == 10 and val.classes[1] == "Trouser"
    first, label = val[3]
    assert label == 3 and np.array_equal(np.asarray(first), np.asarray(val[3][0]))
    assert not np.array_equal(np.asarray(first), np.asarray(val[4][0]))
    train = scenes.ObjectViews("train", 48, train=True)
    torch.manual_seed(0)
    a = np.asarray(train[3][0])
    torch.manual_seed(0)
    assert np.array_equal(a, np.asarray(train[3][0]))  # the engine's per-item seed makes an epoch reproducible
    assert not np.array_equal(a, np.asarray(train[3][0]))  # and later reads differ: fresh views every epoch
    cluttered = scenes.ObjectViews("val", 48, train=False, clutter=True)
    assert cluttered[3][1] == 3 and np.array_equal(np.asarray(cluttered[3][0]), np.asarray(cluttered[3][0]))
    assert not np.array_equal(np.asarray(cluttered[3][0]), np.asarray(first))


@pytest.mark.parametrize("data", ["scene-objects", "scene-clutter"])
def test_classifier_trains_and_evaluates_on_scene_object_views(
    data: str, monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scenes, "load_objects", lambda split: _objects())
    out = tmp_path / "run"
    argv = [
        "train", "--data", data, "--out", str(out), "--model", "mobilenet_v2", "--width", "0.35",
        "--resolution", "32", "--batch-size", "5", "--epochs", "1", "--workers", "0", "--threads", "1",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == data and result["n"] == 10

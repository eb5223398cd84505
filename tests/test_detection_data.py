"""COCO loading with bad input, box-preserving augmentations, and the detection task's hooks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.cli import main
from mobilenets.config import TrainConfig
from mobilenets.data.datasets import Skipped
from mobilenets.detection import task as det_task
from mobilenets.detection.data import CocoDetection, collate
from mobilenets.detection.transforms import (
    TrainTransform,
    hflip,
    min_iou_crop,
    photometric,
    resize,
    zoom_out,
)
from mobilenets.engine.checkpoints import save_model
from mobilenets.errors import InputError
from mobilenets.registry import create_model

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def _write(tmp: Path, images: list, annotations: list, categories: list = CATS, files: tuple = (1, 2)) -> Path:
    for i in files:
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(tmp / f"{i}.png")
    path = tmp / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _img(i: int) -> dict:
    return {"id": i, "file_name": f"{i}.png", "width": 60, "height": 40}


def _ann(i: int, image: int, cat: int, bbox: list) -> dict:
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox}


# -- bad input --------------------------------------------------------------------------------------------
def test_malformed_json_names_the_file(tmp_path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"images": [')
    with pytest.raises(InputError, match=r"a\.json is not valid JSON"):
        CocoDetection(path)
    path.write_text('{"images": {}, "annotations": [], "categories": []}')
    with pytest.raises(InputError, match="'images' must be a list"):
        CocoDetection(path)
    with pytest.raises(InputError, match="not found"):
        CocoDetection(tmp_path / "missing.json")


def test_bad_entries_name_the_entry(tmp_path) -> None:
    path = _write(tmp_path, [_img(1)], [{"id": 9, "image_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(InputError, match=r"annotations\[0\] \(id 9\): missing 'category_id'"):
        CocoDetection(path)
    path = _write(tmp_path, [_img(1)], [_ann(5, 1, 3, [0, 0, "wide", 1])])
    with pytest.raises(InputError, match=r"annotations\[0\] \(id 5\): bbox must be 4 numbers"):
        CocoDetection(path)
    path = _write(tmp_path, [{"id": 1}], [])
    with pytest.raises(InputError, match=r"images\[0\]: missing 'file_name'"):
        CocoDetection(path)


def test_repairs_are_counted(tmp_path) -> None:
    anns = [
        _ann(1, 1, 3, [10, 10, 20, 10]),  # fine
        _ann(2, 1, 7, [-5, 30, 20, 20]),  # outside: clipped to [0, 30, 15, 40]
        _ann(3, 1, 3, [10, 10, 0, 5]),  # zero width: dropped
        _ann(4, 1, 3, [10, 10, -4, 5]),  # negative: dropped
        _ann(5, 1, 3, [70, 10, 5, 5]),  # entirely outside: nothing left after clipping, dropped
        _ann(6, 1, 99, [1, 1, 5, 5]),  # unknown category: dropped
        _ann(7, 42, 3, [1, 1, 5, 5]),  # unknown image: dropped
    ]
    path = _write(tmp_path, [_img(1), _img(2), _img(3)], anns)  # image 3 has no file
    ds = CocoDetection(path)
    assert len(ds) == 2 and ds.num_classes == 2 and ds.category_ids == [3, 7]
    assert dict(ds.problems) == {
        "boxes_clipped": 2, "boxes_degenerate": 3, "unknown_category": 1, "unknown_image": 1,
        "images_missing": 1, "images_without_boxes": 1,
    }  # fmt: skip
    rec = ds.records[0]
    assert rec.boxes.tolist() == [[10, 10, 30, 20], [0, 30, 15, 40]]
    assert rec.labels.tolist() == [1, 2]  # category ids 3, 7 -> labels 1, 2
    image, target = ds[1]  # the image with no boxes is a background example
    assert image.shape == (3, 40, 60) and target["boxes"].shape == (0, 4)


def test_all_images_missing_is_an_error(tmp_path) -> None:
    path = _write(tmp_path, [_img(5)], [], files=())
    with pytest.raises(InputError, match="none of its 1 images"):
        CocoDetection(path)


def test_unreadable_image_is_skipped_naming_the_file(tmp_path, capsys) -> None:
    path = _write(tmp_path, [_img(1), _img(2)], [])
    (tmp_path / "1.png").write_bytes(b"not a png")
    ds = CocoDetection(path)
    item = ds[0]
    assert isinstance(item, Skipped) and item.path.endswith("1.png")
    assert "1.png" in capsys.readouterr().err
    batch = collate([item, ds[1]])  # the batch keeps its good image and counts the other
    assert batch["images"].shape[0] == 1 and int(batch["skipped"]) == 1
    with pytest.raises(InputError, match=r"1\.png"):
        collate([item])


# -- augmentations keep boxes on their objects -----------------------------------------------------------
def _painted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((90, 120, 3), np.uint8)
    boxes = np.array([[10, 20, 50, 60], [60, 5, 110, 40], [70, 50, 100, 85]], np.float32)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for (x0, y0, x1, y1), c in zip(boxes.astype(int), colors, strict=True):
        image[y0:y1, x0:x1] = c
    return image, boxes, np.array([1, 2, 3])


def _check_boxes_on_objects(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, tol: float) -> None:
    channel = {1: 0, 2: 1, 3: 2}
    for box, label in zip(boxes, labels, strict=True):
        mask = image[..., channel[int(label)]] > 127
        ys, xs = np.nonzero(mask)
        assert len(ys), f"object {label} vanished but its box was kept"
        x0, y0, x1, y1 = box
        assert abs(xs.min() - x0) <= tol and abs(ys.min() - y0) <= tol, (box, xs.min(), ys.min())
        # a crop may cut an object: only the visible part must match the box
        assert abs(xs.max() + 1 - x1) <= tol and abs(ys.max() + 1 - y1) <= tol, (box, xs.max(), ys.max())


@pytest.mark.parametrize("seed", range(8))
def test_geometric_transforms_keep_boxes(seed: int) -> None:
    rng = np.random.RandomState(seed)
    image, boxes, labels = _painted()
    _check_boxes_on_objects(*hflip(image, boxes, labels), tol=0)
    _check_boxes_on_objects(*zoom_out(image, boxes, labels, 3.0, rng), tol=0)
    _check_boxes_on_objects(*min_iou_crop(image, boxes, labels, rng), tol=0)
    _check_boxes_on_objects(*resize(image, boxes, labels, (64, 96)), tol=1)
    np.random.seed(seed)
    out = TrainTransform((64, 64), zoom_out_max=2.0, photometric=False)(image, boxes, labels)
    assert out[0].shape == (64, 64, 3)
    _check_boxes_on_objects(*out, tol=1.5)


def test_photometric_changes_colours_only() -> None:
    image, _, _ = _painted()
    rng = np.random.RandomState(0)
    outs = [photometric(image, rng) for _ in range(5)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5])
def test_crop_sampler_meets_its_constraints(min_iou: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every crop taken: side >= 0.3 of the image's (before rounding), aspect in [1/2, 2], IoU >= the drawn
    minimum with some box, and exactly the boxes whose centre lies inside it kept."""
    import mobilenets.detection.transforms as T

    taken: list[np.ndarray] = []
    apply = T._apply_crop
    monkeypatch.setattr(T, "_MIN_IOUS", (min_iou,))
    monkeypatch.setattr(T, "_apply_crop", lambda im, b, lab, crop: taken.append(crop) or apply(im, b, lab, crop))
    image, boxes, labels = _painted()
    h, w = image.shape[:2]
    rng = np.random.RandomState(0)
    for _ in range(40):
        _, kept, _ = min_iou_crop(image, boxes, labels, rng)
        x0, y0, x1, y1 = taken[-1]
        assert x1 - x0 >= 0.3 * w - 1 and y1 - y0 >= 0.3 * h - 1
        assert 0.5 - 0.05 <= (y1 - y0) / (x1 - x0) <= 2 + 0.2
        assert T._iou_matrix(taken[-1][None], boxes).max() >= min_iou
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres > taken[-1][:2]).all(1) & (centres < taken[-1][2:]).all(1)
        assert len(kept) == inside.sum() >= 1
    assert len({tuple(c) for c in taken}) > 20  # the crops vary


def test_crop_without_boxes_still_works() -> None:
    image, _, _ = _painted()
    out, b, lab = min_iou_crop(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.random.RandomState(1))
    assert out.ndim == 3 and b.shape == (0, 4) and lab.shape == (0,)


# -- the task ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory) -> Path:
    from mobilenets.data.scenes import SceneConfig, write_split

    out = tmp_path_factory.mktemp("scenes")
    objects = (np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (10, 28, 1)), np.arange(10, dtype=np.uint8))
    for split, n in (("train", 4), ("val", 3)):
        write_split(out, split, n, SceneConfig(size=64, seed=2), objects=objects)
    return out


def _args(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "task": "detect", "model": {"name": "ssdlite_mobilenet_v3_small", "resolution": 64},
        "data": {"data": str(data)}, "detect": kw,
    })  # fmt: skip


def test_task_loss_and_perfect_evaluation(scenes_dir: Path) -> None:
    task = det_task.build_task(_args(scenes_dir))
    model = task.build_model().train()
    assert model.config.num_classes == 10
    train, val = task.datasets()
    batch = task.collate([train[i] for i in range(2)])
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and set(parts) == {"cls_loss", "box_loss", "skipped"} and parts["skipped"] == 0
    loss.backward()

    class Oracle(torch.nn.Module):  # predicts exactly the ground truth: mAP must be 1
        def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return [self.next.pop(0) for _ in range(len(images))]

    oracle = Oracle()
    oracle.next = []
    for i in range(len(val)):
        _, t = val[i]
        oracle.next.append({"boxes": t["boxes"] * 64, "scores": torch.ones(len(t["labels"])), "labels": t["labels"]})
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=collate)
    metrics = task.evaluate(oracle, loader, distributed=False)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_class_agnostic_metrics_score_boxes_alone(scenes_dir: Path) -> None:
    """Right boxes with wrong classes: class-aware mAP 0, class-agnostic 1 — and a second, lower-scored copy of
    each box under another class is removed by the NMS across classes, not counted as a false positive."""
    val = CocoDetection(scenes_dir / "val" / "annotations.json")
    detections: list[dict] = []
    for r in val.records:
        for (x0, y0, x1, y1), label in zip(r.boxes.tolist(), r.labels.tolist(), strict=True):
            top = 1 - 0.01 * len(detections)  # each copy outranks the next box's first: duplicates cost precision
            for k, score in ((1, top), (2, top - 0.005)):  # label + 1, label + 2 (mod 10): never the right class
                wrong = val.category_ids[(label - 1 + k) % val.num_classes]
                detections.append({"image_id": r.image_id, "category_id": wrong, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                   "score": score})  # fmt: skip
    assert sum(len(r.labels) for r in val.records) > 0
    assert det_task.coco_metrics(val, detections)["mAP"] == 0.0
    merged = det_task.class_agnostic_metrics(val, detections, iou=0.6)
    assert merged["mAP"] == pytest.approx(1.0) and merged["AP75"] == pytest.approx(1.0)
    assert det_task.class_agnostic_metrics(val, detections, iou=1.0)["mAP"] < 1.0  # without NMS: duplicates


def test_eval_and_predict_cli(scenes_dir: Path, tmp_path: Path, capsys) -> None:
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=10).eval()
    ckpt = tmp_path / "best.safetensors"
    meta = {"task": "detect", "args": {"resolution": 64, "data": str(scenes_dir)},
            "metadata": {"classes": [f"c{i}" for i in range(10)], "category_ids": list(range(1, 11))}}  # fmt: skip
    save_model(model, ckpt, meta)
    assert main(["eval", "--checkpoint", str(ckpt), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and 0 <= result["mAP"] <= 1 and "class_agnostic" not in result
    assert main(["eval", "--checkpoint", str(ckpt), "--json", "--workers", "0", "--class-agnostic"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["class_agnostic"]["AP50"] <= 1
    image = scenes_dir / "val" / "images" / "000000.jpg"
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(ckpt), str(image), "--json", "--out", str(out), "--score-threshold", "0"]
    assert main(args) == 0
    pred = json.loads(capsys.readouterr().out)
    assert Path(pred[0]["png"]).is_file() and len(pred[0]["detections"]) > 0
    assert {"class", "score", "box", "label"} <= set(pred[0]["detections"][0])
    # a checkpoint trained for another class count is refused by name
    other = create_model("ssdlite_mobilenet_v3_small", num_classes=4)
    save_model(other, tmp_path / "four.safetensors", meta)
    assert main(["eval", "--checkpoint", str(tmp_path / "four.safetensors"), "--workers", "0"]) == 2
    assert "10 categories but checkpoint" in capsys.readouterr().err


def test_model_flag_accepts_the_backbone_name() -> None:
    from mobilenets.errors import ConfigError

    assert det_task.detector_name("mobilenet_v3_small") == "ssdlite_mobilenet_v3_small"
    assert det_task.detector_name("ssdlite_mobilenet_v2") == "ssdlite_mobilenet_v2"
    with pytest.raises(ConfigError, match="resnet50"):
        det_task.detector_name("resnet50")

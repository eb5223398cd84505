"""Segmentation through the one engine: train / eval / predict from the CLI, inference strategies, the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilenets import create_model
from mobilenets.checkpoint import save_weights
from mobilenets.cli import main
from mobilenets.config import ModelConfig, SegmentOptions, TrainConfig
from mobilenets.errors import ConfigError
from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES, predict_probs, scaled_size
from mobilenets.segmentation.task import SegmentTask, pixel_loss


def test_deeplab_scaled_sizes() -> None:
    assert [scaled_size(513, s) for s in DEEPLAB_EVAL_SCALES] == [257, 385, 513, 641, 769, 897]


class _LeftRight(nn.Module):
    """Logits that prefer class 1 on the left half of whatever it is given: not flip-equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        left = (torch.arange(w) < w / 2).float().expand(x.shape[0], 1, x.shape[-2], w)
        return torch.cat([torch.zeros_like(left), 4 * left], 1)


def test_flip_averages_the_mirrored_prediction_back_in_place() -> None:
    x = torch.zeros(1, 3, 8, 8)
    single = predict_probs(_LeftRight(), x)
    mf = predict_probs(_LeftRight(), x, scales=(1.0, 0.5, 1.5), flip=True)
    assert torch.allclose(single.sum(1), torch.ones(1, 8, 8)) and torch.allclose(mf.sum(1), torch.ones(1, 8, 8))
    # Single scale: p(class 1) = σ(4) ≈ 0.98 on the left, 0.5 on the right. The mirror pass prefers the right once
    # flipped back, so with flips every column averages (0.98 + 0.5) / 2 ≈ 0.74.
    assert (single[0, 1, :, :4] > 0.95).all() and torch.allclose(single[0, 1, :, 4:], torch.tensor(0.5))
    assert torch.allclose(mf[0, 1], torch.full((8, 8), 0.741), atol=0.03)
    assert torch.allclose(mf, mf.flip(-1), atol=1e-5)


def test_loss_ignores_255() -> None:
    task = SegmentTask.__new__(SegmentTask)
    logits = torch.randn(1, 3, 2, 2)
    masks = torch.tensor([[[255, 2], [255, 255]]])
    loss, _ = task.loss(lambda x: logits, {"images": torch.zeros(1, 3, 2, 2), "masks": masks})
    expected = -logits[0, :, 0, 1].log_softmax(0)[2]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_k_pixels_averages_the_hardest_labelled_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    masks = torch.randint(0, 4, (2, 3, 3))
    masks[0, 0] = 255  # three ignored pixels: never among the hardest, whatever their logits
    each = F.cross_entropy(logits, masks, ignore_index=255, reduction="none")[masks != 255]
    assert pixel_loss(logits, masks, 1.0).item() == pytest.approx(each.mean().item(), rel=1e-6)
    hardest = each.sort(descending=True).values
    assert pixel_loss(logits, masks, 0.25).item() == pytest.approx(hardest[:4].mean().item(), rel=1e-6)  # ⌈15/4⌉
    assert pixel_loss(logits, masks, 1e-9).item() == pytest.approx(hardest[0].item(), rel=1e-6)
    pixel_loss(logits, masks, 0.25).backward()  # only the four hardest pixels get a gradient
    assert int((logits.grad.abs().sum(1) > 0).sum()) == 4
    nothing = pixel_loss(logits, torch.full_like(masks, 255), 0.25)
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ConfigError, match="top_k_pixels must be in"):
        SegmentOptions(top_k_pixels=0.0)


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # ~40 s on a busy machine: a real (tiny) training run, then eval and predict
def test_train_eval_predict_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    common = ["--workers", "0", "--threads", "1"]
    assert main([
        "train", "--task", "segment", "--model", "lraspp_mobilenet_v3_small", "--width", "0.35",
        "--data", "embedded", "--scenes", "8", "4", "--scene-size", "64", "--resolution", "64",
        "--epochs", "1", "--batch-size", "4", "--out", str(run), "--no-progress", *common,
    ]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--batch-size", "4", "--json", *common]) == 0
    single = _json(capsys)
    assert set(single["per_class_iou"]) == {"background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}  # fmt: skip
    assert 0.0 <= single["miou"] <= 1.0 and 0.0 <= single["pixel_acc"] <= 1.0 and single["images"] == 4
    assert main(["eval", "--checkpoint", str(run), "--batch-size", "4", "--json", "--scales", "0.5", "1",
                 "--flip", *common]) == 0  # fmt: skip
    mf = _json(capsys)
    assert mf["flip"] and mf["scales"] == [0.5, 1.0] and mf["madds_per_image"] > single["madds_per_image"]

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), str(photo), "--out", str(out), "--json", *common[2:]]) == 0
    (result,) = _json(capsys)
    mask = Image.open(result["mask"])
    assert mask.mode == "P" and mask.size == (70, 50) and np.asarray(mask).max() < 11
    assert Image.open(result["overlay"]).size == (70, 50)
    # An unreadable input is reported, not fatal; the exit status says so.
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "bad.jpg"), "--out", str(out)]) == 1


def test_resume_without_task_flag_trains_the_runs_own_task(tmp_path: Path) -> None:
    # `train --resume RUN` takes the task from RUN's checkpoint; it used to build a classifier and fail to load.
    run = tmp_path / "run"
    common = ["--workers", "0", "--threads", "1", "--no-progress"]
    assert main([
        "train", "--task", "segment", "--model", "lraspp_mobilenet_v3_small", "--width", "0.35", "--data", "embedded",
        "--scenes", "4", "2", "--scene-size", "32", "--resolution", "32", "--epochs", "1", "--batch-size", "2",
        "--out", str(run), *common,
    ]) == 0  # fmt: skip
    assert main(["train", "--resume", str(run), "--epochs", "2", *common]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors"))[-1].startswith("e0002")
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # header + two epochs


def test_bad_data_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--task", "segment", "--model", "deeplabv3_mobilenet_v2", "--data", str(tmp_path),
                 "--out", str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "not a segmentation folder" in capsys.readouterr().err


def test_num_classes_checked_against_data() -> None:
    config = TrainConfig(
        task="segment",
        model=ModelConfig(name="lraspp_mobilenet_v3_small", resolution=64, num_classes=21),
        options=SegmentOptions(scenes=(2, 2), scene_size=64),
    )
    with pytest.raises(ConfigError, match="num-classes 21"):
        SegmentTask(config)


def test_embedded_scenes_refused_for_a_model_of_another_class_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A VOC-sized (21-class) segmenter scored on the 11-class scenes would give a meaningless mIoU: refused.
    ckpt = tmp_path / "voc.safetensors"
    save_weights(create_model("lraspp_mobilenet_v3_small", width=0.35, num_classes=21), ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "embedded", "--workers", "0"]) == 2
    assert "trained for 21" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "32", "--eval", "embedded",
                 str(tmp_path / "m.onnx")]) == 2  # fmt: skip
    assert "trained for 21" in capsys.readouterr().err

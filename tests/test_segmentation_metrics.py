"""Confusion matrix → mIoU / per-class IoU / pixel accuracy, and its reduction across DDP ranks."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilenets.segmentation.metrics import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    reduce_confusion,
    summarise,
)


def test_hand_computed_example() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]  # the 255 pixel is not counted
    # class 0: TP 1, FP 2, FN 1 → 1/4; class 1: TP 2, FP 1, FN 1 → 2/4; class 2: TP 1, FP 0, FN 1 → 1/2
    assert iou_per_class(cm).tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert mean_iou(cm) == pytest.approx(5 / 12)
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_absent_class_is_left_out_of_the_mean() -> None:
    target = torch.tensor([0, 0, 1, 1])
    cm = confusion_matrix(target.clone(), target, 4)
    iou = iou_per_class(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(cm) == 1.0
    summary = summarise(cm, ["bg", "a", "b", "c"])
    assert summary["per_class_iou"] == {"bg": 1.0, "a": 1.0, "b": None, "c": None}
    assert summary["pixels"] == 4
    assert summary["confusion"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    wrong = summarise(confusion_matrix(torch.tensor([1, 0, 1, 1]), target, 4))  # one bg pixel predicted as "a"
    assert wrong["confusion"][0] == [1, 1, 0, 0] and wrong["confusion"][1] == [0, 2, 0, 0]


def test_bad_targets_are_rejected() -> None:
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 1, 2, 3, 4, 255])), min_size=1, max_size=60))
def test_confusion_adds_over_shards(pairs: list[tuple[int, int]]) -> None:
    pred = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    half = len(pairs) // 2
    whole = confusion_matrix(pred, target, 5)
    parts = confusion_matrix(pred[:half], target[:half], 5) + confusion_matrix(pred[half:], target[half:], 5)
    assert torch.equal(whole, parts)
    assert int(whole.sum()) == int((target != 255).sum())
    iou = iou_per_class(whole)
    assert bool(((iou >= 0) & (iou <= 1) | iou.isnan()).all())


def test_reduce_is_identity_without_a_process_group() -> None:
    cm = torch.arange(9).reshape(3, 3)
    assert torch.equal(reduce_confusion(cm), cm)


def _rank(rank: int, world: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    target = torch.tensor([[0, 1, 1], [2, 2, 0]])[rank]
    pred = torch.tensor([[0, 1, 0], [2, 1, 0]])[rank]
    cm = reduce_confusion(confusion_matrix(pred, target, 3))
    if rank == 0:
        torch.save(cm, result_file)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~20 s on a busy machine
def test_reduce_sums_over_two_ranks(tmp_path) -> None:
    init_file, result_file = str(tmp_path / "init"), str(tmp_path / "cm.pt")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(2, init_file, result_file), nprocs=2, join=True)
    both = confusion_matrix(torch.tensor([0, 1, 0, 2, 1, 0]), torch.tensor([0, 1, 1, 2, 2, 0]), 3)
    assert torch.equal(torch.load(result_file), both)

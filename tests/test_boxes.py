"""Pure detection math: IoU, box coding, anchors, matching, mining, loss, NMS — with property tests."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mobilenets.detection.anchors import AnchorSpec, anchors_per_location, box_specs, generate_anchors
from mobilenets.detection.boxes import batched_nms, box_iou, decode, encode, nms
from mobilenets.detection.loss import build_targets, hard_negative_mask, match_anchors, ssd_loss

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def boxes_strategy(draw, min_size: int = 1, max_size: int = 12, min_side: float = 0.01) -> torch.Tensor:
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        x0 = draw(st.floats(0, 0.9, allow_nan=False))
        y0 = draw(st.floats(0, 0.9, allow_nan=False))
        w = draw(st.floats(min_side, 1.0, allow_nan=False))
        h = draw(st.floats(min_side, 1.0, allow_nan=False))
        rows.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(rows, dtype=torch.float64)


def _iou_scalar(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# -- IoU and coding ---------------------------------------------------------------------------------------
@SETTINGS
@given(boxes_strategy(), boxes_strategy())
def test_iou_matches_scalar_definition(a: torch.Tensor, b: torch.Tensor) -> None:
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    for i in range(len(a)):
        for j in range(len(b)):
            assert iou[i, j].item() == pytest.approx(_iou_scalar(a[i].tolist(), b[j].tolist()), abs=1e-9)
    assert torch.allclose(box_iou(b, a), iou.T)
    assert torch.allclose(box_iou(a, a).diagonal(), torch.ones(len(a), dtype=a.dtype))


def test_iou_known_values_and_empty_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    assert box_iou(a, b).tolist() == [[pytest.approx(1 / 7), 0.0, 0.5, 0.0]]


@SETTINGS
@given(boxes_strategy(), boxes_strategy())
def test_decode_inverts_encode(boxes: torch.Tensor, anchors: torch.Tensor) -> None:
    n = min(len(boxes), len(anchors))
    boxes, anchors = boxes[:n], anchors[:n]
    ratio = (boxes[:, 2:] - boxes[:, :2]) / (anchors[:, 2:] - anchors[:, :2])
    assume(bool((ratio < 60).all()))  # decode clamps beyond ~62× its anchor (keeps exp() finite)
    codes = encode(boxes, anchors)
    assert torch.allclose(decode(codes, anchors), boxes, atol=1e-9)


def test_encode_uses_the_tf_scales() -> None:
    anchor = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    box = torch.tensor([[0.1, 0.0, 1.1, 2.0]])  # centre shifted 0.1 in x, height doubled
    code = encode(box, anchor)[0]
    assert code.tolist() == pytest.approx([1.0, 5.0, 0.0, 5 * math.log(2)])


# -- anchors --------------------------------------------------------------------------------------------
def test_box_specs_are_tf_create_ssd_anchors() -> None:
    specs = box_specs()
    scales = [0.2 + 0.15 * i for i in range(6)]
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    for k in range(1, 6):
        nxt = scales[k + 1] if k < 5 else 1.0
        assert [r for _, r in specs[k]] == [1.0, 2.0, 0.5, 3.0, 0.3333, 1.0]
        assert [s for s, _ in specs[k][:5]] == pytest.approx([scales[k]] * 5)
        assert specs[k][5][0] == pytest.approx(math.sqrt(scales[k] * nxt))
    assert anchors_per_location() == [3, 6, 6, 6, 6, 6]
    assert anchors_per_location(AnchorSpec(reduce_boxes_in_lowest_layer=False))[0] == 6


def test_anchor_grid_geometry() -> None:
    grids = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = generate_anchors(grids, (320, 320))
    assert anchors.shape == (400 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4)
    first = anchors[0]  # layer 0, cell (0, 0), the (0.1, 1.0) anchor
    assert first.tolist() == pytest.approx([0.025 - 0.05, 0.025 - 0.05, 0.025 + 0.05, 0.025 + 0.05])
    second = anchors[1]  # (0.2, 2.0): wide
    w, h = (second[2] - second[0]).item(), (second[3] - second[1]).item()
    assert w / h == pytest.approx(2.0) and math.sqrt(w * h) == pytest.approx(0.2)
    last = anchors[-1]  # 1×1 grid: centred, interpolated scale sqrt(0.95 · 1)
    assert last.tolist() == pytest.approx([0.5 - math.sqrt(0.95) / 2, 0.5 - math.sqrt(0.95) / 2,
                                          0.5 + math.sqrt(0.95) / 2, 0.5 + math.sqrt(0.95) / 2])  # fmt: skip
    wide = generate_anchors(grids, (320, 640))
    sq = wide[0]  # ratio-1 anchors stay square in pixels on a 2:1 image
    assert ((sq[2] - sq[0]) * 640).item() == pytest.approx(((sq[3] - sq[1]) * 320).item())


# -- matching and mining --------------------------------------------------------------------------------
ANCHORS = generate_anchors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)], (256, 256)).double()


@SETTINGS
@given(boxes_strategy(max_size=20, min_side=0.005))
def test_every_ground_truth_gets_an_anchor(gt: torch.Tensor) -> None:
    matches = match_anchors(gt, ANCHORS)
    assert set(matches[matches >= 0].tolist()) == set(range(len(gt)))
    iou = box_iou(gt, ANCHORS)
    best, _ = iou.max(0)
    # anchors above the threshold are all positive; the rest are positive only through a forced match
    assert (matches[best >= 0.5] >= 0).all()
    assert ((matches >= 0) & (best < 0.5)).sum() <= len(gt)


def test_match_prefers_highest_iou_and_background_default() -> None:
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]])
    gt = torch.tensor([[0.0, 0.0, 0.45, 0.5], [0.55, 0.5, 1.0, 1.0]])
    assert match_anchors(gt, anchors).tolist() == [0, 1, -1]
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1, -1]
    # two ground truths whose best anchor is the same one still get one anchor each
    same = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45]])
    assert sorted(match_anchors(same, anchors)[:].tolist()[:2]) != [-1, -1]
    assert set(match_anchors(same, anchors).tolist()) >= {0, 1}


def test_hard_negatives_three_to_one() -> None:
    loss = torch.tensor([[0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 5.0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0.0]])
    positive = torch.zeros(2, 10, dtype=torch.bool)
    positive[0, 9] = True  # one positive: three negatives, the highest-loss ones
    mask = hard_negative_mask(loss, positive)
    assert mask[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert mask[1].nonzero().flatten().tolist() == [6, 7, 8]  # no positive: min_negatives_per_image = 3
    assert not (mask & positive).any()


def test_loss_is_zero_box_term_for_perfect_codes_and_learns() -> None:
    anchors = ANCHORS.float()
    gt = [torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), torch.zeros(0, 4)]
    labels = [torch.tensor([3, 1]), torch.zeros(0, dtype=torch.long)]
    target_labels, target_codes = build_targets(gt, labels, anchors)
    assert (target_labels[0] > 0).sum() >= 2 and (target_labels[1] == 0).all()
    logits = torch.zeros(2, len(anchors), 5, requires_grad=True)
    codes = target_codes.clone().requires_grad_(True)
    loss, parts = ssd_loss(logits, codes, target_labels, target_codes)
    assert parts["box_loss"] == 0.0 and parts["cls_loss"] > 0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# -- NMS ------------------------------------------------------------------------------------------------
def _nms_reference(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(_iou_scalar(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


@SETTINGS
@given(boxes_strategy(max_size=30), st.data(), st.sampled_from([0.3, 0.5, 0.6]))
def test_nms_matches_brute_force(boxes: torch.Tensor, data, threshold: float) -> None:
    scores = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=len(boxes), max_size=len(boxes))))
    classes = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=len(boxes), max_size=len(boxes))))
    assert nms(boxes, scores, threshold).tolist() == _nms_reference(boxes.tolist(), scores.tolist(), threshold)
    expected = []
    for c in sorted(set(classes.tolist())):
        idx = [i for i in range(len(boxes)) if classes[i] == c]
        kept = _nms_reference([boxes[i].tolist() for i in idx], [scores[i].item() for i in idx], threshold)
        expected += [idx[k] for k in kept]
    got = batched_nms(boxes, scores, classes, threshold).tolist()
    assert sorted(got) == sorted(expected)
    assert [scores[i].item() for i in got] == sorted((scores[i].item() for i in got), reverse=True)


def test_nms_empty() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0

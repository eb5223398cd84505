"""Anchor matching, hard negative mining and the SSD loss (TF OD API ``ssdlite_mobilenet_v2_coco``).

What the config says and what is followed here:
- ``argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.5 force_match_for_each_row: true }``:
  an anchor whose best IoU with a ground truth is >= 0.5 takes that ground truth; every ground truth is also
  given its best anchor. Deviation: TF forces each row's argmax independently, so two ground truths with the
  same best anchor leave one of them unmatched. Here the forced matches are assigned greedily by IoU, each to
  a different anchor, so *every* ground truth gets at least one anchor whenever there are enough anchors.
- ``hard_example_miner { max_negatives_per_positive: 3 min_negatives_per_image: 3 loss_type: CLASSIFICATION }``:
  per image, the background anchors with the highest classification loss, at most 3 per positive and at least 3.
  Deviation: TF first runs NMS (IoU 0.99) over the candidates and caps at 3000; skipped, as torchvision does.
- ``weighted_smooth_l1`` box loss on the positives, both losses weighted 1 and divided by the number of matches
  (``normalize_loss_by_num_matches: true``).
- Deviation: the config's classification loss is ``weighted_sigmoid``; this uses softmax cross-entropy over
  ``num_classes + 1`` outputs (class 0 = background), the original SSD's loss and torchvision's SSDLite's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mobilenets.detection.boxes import box_iou, encode

MATCH_THRESHOLD = 0.5


# Rows of the ground-truth × anchor IoU matrix computed at once: memory stays near 4 M floats (plus box_iou's
# temporaries) whatever the number of objects, instead of G × A.
IOU_BLOCK = 1 << 22


def match_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor, threshold: float = MATCH_THRESHOLD) -> torch.Tensor:
    """Index of the matched ground truth for every anchor, or -1 (background). (G, 4) × (A, 4) -> (A,).

    Threshold matches take each anchor's best ground truth (the first on ties). Forced matches are the greedy
    assignment "repeatedly take the highest remaining (gt, anchor) IoU, removing its row and column", min(G, A)
    times, computed without the G × A matrix and without one pass over it per pick (``_forced_matches``)."""
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    matches = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return matches
    gt_boxes, anchors = gt_boxes.float(), anchors.float()  # the pair keys order float32 IoUs by their bits
    rows = max(1, IOU_BLOCK // max(num_anchors, 1))
    k = min(num_gt, num_anchors)
    best_iou = torch.full((num_anchors,), -1.0, device=anchors.device)
    best_gt = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
    candidates = _Candidates(num_anchors, k, anchors.device)
    for start in range(0, num_gt, rows):
        iou = box_iou(gt_boxes[start : start + rows], anchors)
        value, index = iou.max(dim=0)
        better = value > best_iou  # strict: an earlier block keeps a tie, as one max over all rows would
        best_iou[better], best_gt[better] = value[better], index[better] + start
        candidates.add(iou, start)
    above = best_iou >= threshold
    matches[above] = best_gt[above]
    g, a = _forced_matches(*candidates.pairs(), num_gt, num_anchors, k)
    matches[a.to(anchors.device)] = g.to(anchors.device)
    return matches


class _Candidates:
    """The (gt, anchor) pairs with IoU > 0 that the greedy could still pick: per anchor its k best (a pair below
    an anchor's k-th can never be picked — the k rows above it would need k other anchors first, and the greedy
    stops after k = min(G, A) picks). Kept sparse, pruned to the k best per anchor whenever they pass
    ``IOU_BLOCK`` entries; an anchor's k-th best IoU is then a bar every later pair must pass."""

    def __init__(self, num_anchors: int, k: int, device: torch.device) -> None:
        self.k = k
        self.bar = torch.zeros(num_anchors, device=device)
        self.keys: list[torch.Tensor] = []
        self.anchors: list[torch.Tensor] = []
        self.size = 0

    def add(self, iou: torch.Tensor, start: int) -> None:
        # blocks come in increasing gt order, so a pair that only ties an anchor's k-th IoU ranks below it
        row, anchor = (iou > self.bar).nonzero(as_tuple=True)
        self.keys.append(_pair_key(iou[row, anchor], row + start))
        self.anchors.append(anchor)
        self.size += len(anchor)
        if self.size > IOU_BLOCK:
            self._prune()

    def _prune(self) -> None:
        key, anchor = torch.cat(self.keys).cpu().numpy(), torch.cat(self.anchors).cpu().numpy()
        full = np.bincount(anchor, minlength=len(self.bar)) >= self.k
        many = full[anchor]  # only the entries of anchors holding k or more need ranking
        rest_key, rest_anchor, key, anchor = key[~many], anchor[~many], key[many], anchor[many]
        order = np.argsort(-key)  # keys are unique within an anchor, so ties across anchors do not matter
        order = order[np.argsort(anchor[order], kind="stable")]  # by anchor, best first
        key, anchor = key[order], anchor[order]
        counts = np.bincount(anchor, minlength=len(self.bar))
        starts = np.cumsum(counts) - counts
        keep = np.arange(len(anchor)) - starts[anchor] < self.k
        index = np.flatnonzero(full)
        kth = torch.from_numpy((key[starts[index] + self.k - 1] >> 32).astype(np.int32)).view(torch.float32)
        self.bar[torch.from_numpy(index).to(self.bar.device)] = kth.to(self.bar.device)
        self.keys = [torch.from_numpy(np.concatenate([rest_key, key[keep]]))]
        self.anchors = [torch.from_numpy(np.concatenate([rest_anchor, anchor[keep]]))]
        self.size = len(self.keys[0])

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._prune()
        return self.keys[0], self.anchors[0]


def _pair_key(iou: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """One int64 per (gt, anchor) pair ordering pairs as the greedy takes them within an anchor: IoU descending,
    then lower gt index first. A non-negative float32's bits order as its value does."""
    bits = iou.float().contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | (0xFFFFFFFF - gt)


def _forced_matches(
    key: torch.Tensor, anchor_of: torch.Tensor, num_gt: int, num_anchors: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy one-anchor-per-ground-truth assignment, exactly, from its candidate pairs (``_pair_key``s and
    their anchors). They are visited once in the greedy's order (IoU descending, then gt, then anchor); what is
    left when they run out is zero-IoU pairs, which the greedy takes as free ground truths and free anchors in
    increasing order."""
    key, anchor = key.cpu().numpy(), anchor_of.cpu().numpy()
    order = np.lexsort((anchor, -key))
    gt = 0xFFFFFFFF - (key[order] & 0xFFFFFFFF)
    gt_taken, anchor_taken = bytearray(num_gt), bytearray(num_anchors)
    picked_gt: list[int] = []
    picked_anchor: list[int] = []
    for g, a in zip(gt.tolist(), anchor[order].tolist(), strict=True):
        if gt_taken[g] or anchor_taken[a]:
            continue
        gt_taken[g], anchor_taken[a] = 1, 1
        picked_gt.append(g)
        picked_anchor.append(a)
        if len(picked_gt) == k:
            break
    left = k - len(picked_gt)
    if left:
        picked_gt += [g for g in range(num_gt) if not gt_taken[g]][:left]
        picked_anchor += [a for a in range(num_anchors) if not anchor_taken[a]][:left]
    return torch.tensor(picked_gt, dtype=torch.long), torch.tensor(picked_anchor, dtype=torch.long)


def hard_negative_mask(
    cls_loss: torch.Tensor, positive: torch.Tensor, ratio: int = 3, min_negatives: int = 3
) -> torch.Tensor:
    """(N, A) bool: per image the ``ratio × positives`` (at least ``min_negatives``) highest-loss negatives."""
    loss = cls_loss.detach().masked_fill(positive, float("-inf"))
    num_neg = (positive.sum(1, keepdim=True) * ratio).clamp(min=min_negatives)
    num_neg = torch.minimum(num_neg, (~positive).sum(1, keepdim=True))
    rank = loss.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < num_neg


def build_targets(
    gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], anchors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: class target (N, A) with 0 = background, and box codes (N, A, 4) (zero where negative)."""
    labels, codes = [], []
    for boxes, classes in zip(gt_boxes, gt_labels, strict=True):
        m = match_anchors(boxes, anchors)
        pos = m >= 0
        target = torch.zeros(len(anchors), dtype=torch.long, device=anchors.device)
        code = torch.zeros(len(anchors), 4, device=anchors.device)
        if pos.any():
            target[pos] = classes[m[pos]]
            code[pos] = encode(boxes[m[pos]], anchors[pos])
        labels.append(target)
        codes.append(code)
    return torch.stack(labels), torch.stack(codes)


def ssd_loss(
    cls_logits: torch.Tensor,
    box_codes: torch.Tensor,
    target_labels: torch.Tensor,
    target_codes: torch.Tensor,
    neg_ratio: int = 3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Softmax cross-entropy on positives + mined negatives and smooth-L1 on positives, / number of matches.

    ``cls_logits`` (N, A, C+1), ``box_codes`` (N, A, 4), ``target_labels`` (N, A) in 0..C, ``target_codes``.
    """
    positive = target_labels > 0
    num_pos = positive.sum().clamp(min=1).to(cls_logits.dtype)
    ce = F.cross_entropy(cls_logits.flatten(0, 1), target_labels.flatten(), reduction="none").view_as(target_labels)
    negatives = hard_negative_mask(ce, positive, neg_ratio)
    cls_loss = ce[positive | negatives].sum() / num_pos
    box_loss = F.smooth_l1_loss(box_codes[positive], target_codes[positive], beta=1.0, reduction="sum") / num_pos
    loss = cls_loss + box_loss
    return loss, {"cls_loss": float(cls_loss.detach()), "box_loss": float(box_loss.detach())}

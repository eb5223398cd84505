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

import torch
import torch.nn.functional as F

from mobilenets.detection.boxes import box_iou, encode

MATCH_THRESHOLD = 0.5


def match_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor, threshold: float = MATCH_THRESHOLD) -> torch.Tensor:
    """Index of the matched ground truth for every anchor, or -1 (background). (G, 4) × (A, 4) -> (A,)."""
    num_anchors = anchors.shape[0]
    matches = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        return matches
    iou = box_iou(gt_boxes, anchors)  # G × A
    best_iou, best_gt = iou.max(dim=0)
    above = best_iou >= threshold
    matches[above] = best_gt[above]
    # Forced matches: repeatedly take the highest remaining (gt, anchor) pair, one anchor per ground truth.
    remaining = iou.clone()
    for _ in range(min(len(gt_boxes), num_anchors)):
        flat = int(torch.argmax(remaining))
        g, a = divmod(flat, num_anchors)
        matches[a] = g
        remaining[g, :] = -1
        remaining[:, a] = -1
    return matches


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

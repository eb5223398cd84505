"""Box arithmetic as pure functions: IoU, the SSD box coder, and (batched) non-maximum suppression.

Boxes are ``[x0, y0, x1, y1]`` tensors (continuous coordinates, x1 > x0), in whatever unit the caller uses
(the model works in coordinates normalised to the image, 0..1).
"""

from __future__ import annotations

import numpy as np
import torch

# TF Object Detection API ``ssdlite_mobilenet_v2_coco.config``: ``faster_rcnn_box_coder`` with
# y_scale 10, x_scale 10, height_scale 5, width_scale 5 (ordered here as x, y, w, h).
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
_EPS = 1e-8


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union: (N, 4) × (M, 4) -> (N, M). Empty boxes have IoU 0 with everything."""
    # overlap width × height as N × M planes (not N × M × 2 corner tensors): the same values, fewer temporaries
    w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=_EPS), torch.zeros_like(inter))


def _center_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: torch.Tensor, anchors: torch.Tensor, scales: tuple[float, ...] = BOX_CODER_SCALES) -> torch.Tensor:
    """Faster R-CNN / SSD box coding: (tx, ty, tw, th) = (10·Δx/wa, 10·Δy/ha, 5·log(w/wa), 5·log(h/ha)).

    ``boxes`` and ``anchors`` broadcast against each other; both must have positive width and height.
    """
    xa, ya, wa, ha = _center_size(anchors)
    x, y, w, h = _center_size(boxes)
    sx, sy, sw, sh = scales
    return torch.stack([sx * (x - xa) / wa, sy * (y - ya) / ha, sw * torch.log(w / wa), sh * torch.log(h / ha)], dim=-1)


def decode(codes: torch.Tensor, anchors: torch.Tensor, scales: tuple[float, ...] = BOX_CODER_SCALES) -> torch.Tensor:
    """Inverse of :func:`encode`. Width/height codes are clamped so that exp() cannot overflow."""
    xa, ya, wa, ha = _center_size(anchors)
    sx, sy, sw, sh = scales
    x = codes[..., 0] / sx * wa + xa
    y = codes[..., 1] / sy * ha + ya
    # log(1000/16) as torchvision: a box at most ~62× its anchor; keeps inf out of untrained outputs
    limit = 4.135
    w = torch.exp((codes[..., 2] / sw).clamp(max=limit)) * wa
    h = torch.exp((codes[..., 3] / sh).clamp(max=limit)) * ha
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression. Returns the kept indices, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is *greater than* ``iou_threshold``.
    Ties in score keep the lower index first (stable sort), so the result is deterministic.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlap = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS independently per class; kept indices, highest score first. One small IoU matrix per class instead
    of one over all candidates (torchvision.ops cannot load here, so this is the library's own)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for c in torch.unique(classes):
        idx = (classes == c).nonzero().flatten()
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(kept)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]

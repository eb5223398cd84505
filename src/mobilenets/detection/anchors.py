"""SSD anchors exactly as the TF Object Detection API builds them for ``ssdlite_mobilenet_v2_coco``.

Source: tensorflow/models ``research/object_detection/anchor_generators/multiple_grid_anchor_generator.py``
(``create_ssd_anchors`` and ``MultipleGridAnchorGenerator._generate``) with the values of
``samples/configs/ssdlite_mobilenet_v2_coco.config``: ``ssd_anchor_generator { num_layers: 6 min_scale: 0.2
max_scale: 0.95 aspect_ratios: 1.0, 2.0, 0.5, 3.0, 0.3333 }`` and the generator's defaults
``interpolated_scale_aspect_ratio = 1.0``, ``reduce_boxes_in_lowest_layer = True``, ``base_anchor_size = [1, 1]``.

- Layer k of n has scale s_k = min + (max - min)·k/(n-1); one anchor per aspect ratio r with height s/√r and
  width s·√r, plus an extra square anchor of scale √(s_k·s_{k+1}) (s_n = 1).
- The lowest layer is "reduced" to three anchors: (0.1, 1), (s_0, 2), (s_0, ½).
- Centres sit at (i + ½)/grid in normalised coordinates; anchors are not clipped to the image (TF clips only
  when a clip window is configured, and the SSD config sets none). For non-square inputs the base size is
  scaled by min(H, W)/H and min(H, W)/W so that ratio-1 anchors stay square in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mobilenets.errors import ConfigError

ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)  # the config's order, which fixes the anchor order per location


@dataclass(frozen=True)
class AnchorSpec:
    """The ``ssd_anchor_generator`` settings."""

    num_layers: int = 6
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True

    def __post_init__(self) -> None:
        if self.num_layers < 2:
            raise ConfigError(f"num_layers must be >= 2, got {self.num_layers}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")


def box_specs(spec: AnchorSpec = AnchorSpec()) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of every anchor per location, for each layer (``create_ssd_anchors``)."""
    n = spec.num_layers
    scales = [spec.min_scale + (spec.max_scale - spec.min_scale) * i / (n - 1) for i in range(n)] + [1.0]
    layers = []
    for layer in range(n):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and spec.reduce_boxes_in_lowest_layer:
            layers.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        boxes = [(scale, r) for r in spec.aspect_ratios]
        if spec.interpolated_scale_aspect_ratio > 0:
            boxes.append((math.sqrt(scale * scale_next), spec.interpolated_scale_aspect_ratio))
        layers.append(boxes)
    return layers


def anchors_per_location(spec: AnchorSpec = AnchorSpec()) -> list[int]:
    return [len(layer) for layer in box_specs(spec)]


def generate_anchors(
    grid_sizes: list[tuple[int, int]], image_size: tuple[int, int], spec: AnchorSpec = AnchorSpec()
) -> torch.Tensor:
    """All anchors as an (A, 4) tensor of normalised ``[x0, y0, x1, y1]``.

    Order: layer, then row, then column, then the layer's box specs — the order in which the head's
    outputs are flattened (``N×(A·k)×H×W`` permuted to ``N×H×W×A×k``).
    """
    specs = box_specs(spec)
    if len(grid_sizes) != len(specs):
        raise ConfigError(f"{len(grid_sizes)} feature maps for {len(specs)} anchor layers")
    im_h, im_w = image_size
    base_h, base_w = min(im_h, im_w) / im_h, min(im_h, im_w) / im_w
    out = []
    for (gh, gw), layer in zip(grid_sizes, specs, strict=True):
        scales = torch.tensor([s for s, _ in layer], dtype=torch.float64)
        ratios = torch.sqrt(torch.tensor([r for _, r in layer], dtype=torch.float64))
        heights = scales / ratios * base_h
        widths = scales * ratios * base_w
        cy = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh
        cx = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        cx, cy = cx[..., None], cy[..., None]  # H×W×1, broadcast over the layer's k anchors
        boxes = torch.stack([cx - widths / 2, cy - heights / 2, cx + widths / 2, cy + heights / 2], dim=-1)
        out.append(boxes.reshape(-1, 4))
    return torch.cat(out).to(torch.float32)

"""The two block types: V1's depthwise separable layer and V2/V3's inverted residual with linear bottleneck."""

from __future__ import annotations

import torch
from torch import nn

from mobilenets.models.layers import ConvBNAct, SqueezeExcite
from mobilenets.models.specs import BlockSpec


class DepthwiseSeparable(nn.Module):
    """V1 §3.1: 3×3 depthwise conv then 1×1 pointwise conv, each followed by BN and the activation."""

    def __init__(self, spec: BlockSpec, bn_eps: float, padding: str) -> None:
        super().__init__()
        self.spec = spec
        self.depthwise = ConvBNAct(
            spec.in_channels, spec.in_channels, spec.kernel, spec.stride, spec.dilation,
            groups=spec.in_channels, act=spec.act, bn_eps=bn_eps, padding=padding,
        )  # fmt: skip
        self.pointwise = ConvBNAct(spec.in_channels, spec.out_channels, 1, act=spec.act, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """V2 Table 1: 1×1 expansion (BN, act) → k×k depthwise (BN, act) → [SE] → 1×1 projection (BN, linear).

    The shortcut joins the thin bottlenecks (V2 §3.3). The Figure 6 ablations are switches of the spec:
    ``project_act='relu6'`` puts a non-linearity after the projection; ``shortcut='expansion'`` joins the
    wide layers instead (expansion output + depthwise output, the classic-residual placement);
    ``shortcut='none'`` removes it.
    """

    def __init__(self, spec: BlockSpec, bn_eps: float, padding: str) -> None:
        super().__init__()
        self.spec = spec
        mid = spec.mid_channels
        self.expand = ConvBNAct(spec.in_channels, mid, 1, act=spec.act, bn_eps=bn_eps) if spec.has_expand else None
        self.depthwise = ConvBNAct(
            mid,
            mid,
            spec.kernel,
            spec.stride,
            spec.dilation,
            groups=mid,
            act=spec.act,
            bn_eps=bn_eps,
            padding=padding,
        )
        self.se = SqueezeExcite(mid, spec.se_channels) if spec.se_channels else None
        self.project = ConvBNAct(mid, spec.out_channels, 1, act=spec.project_act, bn_eps=bn_eps)
        self.bottleneck_shortcut = spec.has_residual and spec.shortcut == "bottleneck"
        self.expansion_shortcut = spec.has_residual and spec.shortcut == "expansion"

    def forward_expansion(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion output (h × w × tk): SSDLite's tap on V2's layer 15."""
        return self.expand(x) if self.expand is not None else x

    def forward_from_expansion(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(expanded)
        if self.expansion_shortcut:
            y = y + expanded
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.bottleneck_shortcut:
            y = y + x
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_expansion(x, self.forward_expansion(x))


def make_block(spec: BlockSpec, bn_eps: float, padding: str) -> nn.Module:
    if spec.kind == "separable":
        return DepthwiseSeparable(spec, bn_eps, padding)
    return InvertedResidual(spec, bn_eps, padding)

"""V2 §5.1 memory-efficient inference: every inverted residual block computed as a sum over channel groups.

A bottleneck block is F(x) = B ∘ N ∘ A (x): A the expansion (linear, k → n), N the per-channel part (BN, act,
depthwise, BN, act), B the projection (linear, n → k'). Because N acts channel by channel, the n inner channels
can be cut into t groups and F(x) = Σᵢ Bᵢ(N(Aᵢ(x))): only n/t inner channels are ever alive. The projection's
BatchNorm (and its activation in the Figure 6a ablation) and the residual are applied once, after the sum, so
each Bᵢ is the bare 1×1 convolution restricted to group i's input channels.

Two parts of the models are not per-channel and are handled explicitly:

- **Squeeze-and-excite (V3)** mixes channels: its gate is computed from the spatial means of *all* inner
  channels. A block with SE therefore runs two passes over the groups: the first computes each group's N(Aᵢ(x))
  and keeps only its per-channel means (n numbers per image); the gate is computed from them; the second pass
  recomputes each group and projects it scaled by its slice of the gate. Memory stays O(n/t·h·w); the price is
  that the expansion and depthwise convolutions of SE blocks run twice when t > 1 (``profile`` shows it).
- **The expansion tap** (SSDLite on V2's layer 15) wants the whole expansion output: a block asked for it by
  ``MobileNet.forward_taps`` runs its standard ``forward_expansion`` / ``forward_from_expansion`` and
  materialises h×w×n there — the detector needs that tensor as an input of its head anyway.

The Figure 6b ``shortcut='expansion'`` ablation adds the expansion output to the depthwise output channel by
channel, so it stays inside N and splits like the rest.

The group convolutions are small ``nn.Conv2d`` views of the block's own weights (no parameters of their own), so
``analysis.profile.profile`` counts the split model's multiply-adds from what actually runs.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import ConfigError
from mobilenets.models.blocks import InvertedResidual
from mobilenets.models.layers import Conv2dSame, PointwiseConv2d, pointwise_gemm, tf_same_padding


class ConvSlice(nn.Conv2d):
    """Output channels ``[start, stop)`` (or, with ``slice_input``, input channels) of a parent convolution.

    It shares the parent's weight and owns no parameter, so state dicts and parameter counts are unchanged.
    """

    def __init__(self, parent: nn.Conv2d, start: int, stop: int, slice_input: bool = False) -> None:
        nn.Module.__init__(self)
        # A plain attribute, not a submodule: the parent stays registered once, in its block.
        object.__setattr__(self, "parent", parent)
        self.start, self.stop, self.slice_input = start, stop, slice_input
        depthwise = parent.groups == parent.in_channels and parent.groups > 1
        self.in_channels = stop - start if (slice_input or depthwise) else parent.in_channels
        self.out_channels = parent.out_channels if slice_input else stop - start
        self.groups = stop - start if depthwise else 1
        self.kernel_size, self.stride, self.dilation = parent.kernel_size, parent.stride, parent.dilation
        self.padding = parent.padding
        self.same = isinstance(parent, Conv2dSame)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        w = self.parent.weight
        return w[:, self.start : self.stop] if self.slice_input else w[self.start : self.stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A slice of a 1×1 layer runs as a matrix product exactly when its parent would (PointwiseConv2d.gemm).
        if not self.training and isinstance(self.parent, PointwiseConv2d) and self.parent.gemm:
            out = pointwise_gemm(x, self.weight, None)
            if out is not None:
                return out
        padding = self.padding
        if self.same:
            top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
            left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
            x = F.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        return F.conv2d(x, self.weight, None, self.stride, padding, self.dilation, self.groups)


def _bn_slice(bn: nn.BatchNorm2d, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    # Inference BatchNorm is per-channel: running statistics of the group's channels only.
    return F.batch_norm(
        x,
        bn.running_mean[start:stop],
        bn.running_var[start:stop],
        bn.weight[start:stop],
        bn.bias[start:stop],
        False,
        0.0,
        bn.eps,
    )


class GroupPath(nn.Module):
    """N(Aᵢ(·)) and Bᵢ for inner channels ``[start, stop)`` of one block."""

    def __init__(self, block: InvertedResidual, start: int, stop: int) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)
        self.start, self.stop = start, stop
        self.expand = ConvSlice(block.expand.conv, start, stop) if block.expand is not None else None
        self.depthwise = ConvSlice(block.depthwise.conv, start, stop)
        self.project = ConvSlice(block.project.conv, start, stop, slice_input=True)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """The group's channels of the depthwise output (after the expansion shortcut, before SE)."""
        block, a, b = self.block, self.start, self.stop
        if self.expand is not None:
            expanded = block.expand.act(_bn_slice(block.expand.bn, self.expand(x), a, b))
        else:
            expanded = x[:, a:b]
        y = block.depthwise.act(_bn_slice(block.depthwise.bn, self.depthwise(expanded), a, b))
        if block.expansion_shortcut:
            y = y + expanded
        return y


def group_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    """Cut ``channels`` into ``min(groups, channels)`` contiguous groups whose sizes differ by at most one."""
    if groups < 1:
        raise ConfigError(f"the number of groups t must be >= 1, got {groups}")
    t = min(groups, channels)
    edges = [channels * i // t for i in range(t + 1)]
    return list(itertools.pairwise(edges))


class SplitInvertedResidual(InvertedResidual):
    """An ``InvertedResidual`` whose ``forward`` runs Σᵢ Bᵢ(N(Aᵢ(x))) over t groups (V2 §5.1), in eval mode.

    It holds the same submodules (same state-dict keys) as the block it replaces. In training mode, with
    t = 1, or when the expansion output is requested, it runs the standard path.
    """

    def __init__(self, block: InvertedResidual, groups: int) -> None:
        nn.Module.__init__(self)
        self.spec = block.spec
        self.expand, self.depthwise, self.se, self.project = block.expand, block.depthwise, block.se, block.project
        self.bottleneck_shortcut = block.bottleneck_shortcut
        self.expansion_shortcut = block.expansion_shortcut
        self.bounds = group_bounds(self.spec.mid_channels, groups)
        self.paths = nn.ModuleList(GroupPath(self, a, b) for a, b in self.bounds)
        self.train(block.training)

    @property
    def num_groups(self) -> int:
        return len(self.bounds)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        # First pass (SE only): per-channel spatial means, one group at a time, then the channel-mixing gate.
        means = torch.cat([path.inner(x).mean((2, 3), keepdim=True) for path in self.paths], dim=1)
        se = self.se
        return se.gate(se.excite(se.act(se.squeeze(means))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.num_groups == 1:
            return super().forward(x)
        gate = self._gate(x) if self.se is not None else None
        out: torch.Tensor | None = None
        for path in self.paths:
            y = path.inner(x)
            if gate is not None:
                y = y * gate[:, path.start : path.stop]
            part = path.project(y)
            del y  # the group's inner channels die before the next group is computed
            out = part if out is None else out.add_(part)
        assert out is not None
        out = self.project.act(self.project.bn(out))
        if self.bottleneck_shortcut:
            out = out + x
        return out


def _count_blocks(model: nn.Module) -> int:
    return sum(isinstance(m, InvertedResidual) for m in model.modules())


def split_model(model: nn.Module, groups: int | Sequence[int], inplace: bool = False) -> nn.Module:
    """Return ``model`` with every ``InvertedResidual`` replaced by its §5.1 split form.

    ``groups`` is t for every block, or one t per inverted residual block in ``model.modules()`` order. t is
    capped at each block's inner width n, so a large t (e.g. 10**9) means one channel per group. Works for any
    module tree holding MobileNet blocks (classifiers, detection and segmentation backbones); weights are shared
    with ``model`` unless it is copied (``inplace=False`` deep-copies first).
    """
    count = _count_blocks(model)
    per_block = [groups] * count if isinstance(groups, int) else list(groups)
    if len(per_block) != count:
        raise ConfigError(f"got {len(per_block)} group counts for a model with {count} inverted residual blocks")
    target = model if inplace else copy.deepcopy(model)
    blocks = iter(per_block)
    for parent in list(target.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, InvertedResidual):
                setattr(parent, name, SplitInvertedResidual(child, next(blocks)))
    return target


__all__ = ["ConvSlice", "GroupPath", "SplitInvertedResidual", "group_bounds", "split_model"]

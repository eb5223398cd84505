"""The small pieces every MobileNet is made of: channel rounding, activations, conv-BN-act, squeeze-excite."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import ConfigError

ACTIVATIONS = ("relu", "relu6", "hswish", "linear")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` (default ``divisor``)
    and never more than 10% below ``value`` (V2 §3.4 / TF-Slim ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hswish":
        # V3 §5.2: h-swish(x) = x * ReLU6(x + 3) / 6
        return nn.Hardswish(inplace=True)
    if name == "linear":
        return nn.Identity()
    raise ConfigError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis: output = ceil(size / stride), extra pixel on the right."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow 'SAME' padding, computed from the input size at run time.

    Weights trained in TensorFlow (and timm's ``tf_`` models) need it: for stride 2 on an even input,
    TF pads only on the bottom/right, which a symmetric PyTorch padding cannot express.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _capturing_graph() -> bool:
    """True while PyTorch records a graph (tracing, TorchScript, torch.compile, torch.export / ONNX export)."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def pointwise_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """A 1×1 convolution (stride 1, one group) of one NCHW image as one matrix product over its pixels, or None
    where PyTorch's convolution should run instead: batches, other layouts, other devices, graph capture."""
    if x.dim() != 4 or x.shape[0] != 1 or x.device.type != "cpu" or not x.is_contiguous() or _capturing_graph():
        return None
    _, c, h, w = x.shape
    matrix, pixels = weight.reshape(weight.shape[0], c), x.view(c, h * w)
    out = torch.mm(matrix, pixels) if bias is None else torch.addmm(bias.view(-1, 1), matrix, pixels)
    return out.view(1, -1, h, w)


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 convolution (stride 1, one group, no padding), nine tenths of a MobileNet's multiply-adds.

    In inference on a CPU, for one NCHW image, it runs as one matrix product over the pixels (``pointwise_gemm``) —
    V1 §3.1: a 1×1 convolution needs no im2col and is a GEMM — where PyTorch's convolution goes through oneDNN (with
    layout reorders) or its im2col path. ``experiments/engine/pointwise_gemm.py`` measures the whole model both
    ways. The same weights and the same sums, within float rounding (``tests/test_models.py``). Everything else
    keeps PyTorch's convolution: training, batches (a batched product measured slower than the convolution at batch
    32), channels_last inputs (oneDNN already runs those as a GEMM: level), other devices, graphs being traced,
    compiled or exported (TorchScript, Inductor, ONNX: their own kernels decide), and ``gemm = False``.
    """

    gemm = True  # set False on an instance (or the class) to run PyTorch's convolution instead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = pointwise_gemm(x, self.weight, self.bias) if self.gemm and not self.training else None
        return super().forward(x) if out is None else out


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    if padding == "same":
        return Conv2dSame(in_channels, out_channels, kernel, stride, 0, dilation, groups, bias)
    if padding != "symmetric":
        raise ConfigError(f"unknown padding {padding!r}; expected 'symmetric' or 'same'")
    if kernel == 1 and stride == 1 and groups == 1:
        return PointwiseConv2d(in_channels, out_channels, 1, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2 * dilation, dilation, groups, bias)


class ConvBNAct(nn.Module):
    """Convolution, BatchNorm, activation: the unit the papers put after every layer ("BN after every conv")."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: str = "relu6",
        bn_eps: float = 1e-5,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel, stride, dilation, groups, False, padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """V3 §5.3 squeeze-and-excite: pool, 1×1 reduce + ReLU, 1×1 expand + hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, squeeze_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.excite = nn.Conv2d(squeeze_channels, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.excite(self.act(self.squeeze(scale))))
        return x * scale

"""Inference-only rewrites of a trained model, each proved equal to the original in tests/test_deploy.py.

- ``fold_batchnorm``: every ``ConvBNAct``'s BatchNorm folded into its convolution (w' = w·γ/σ, b' = β − μ·γ/σ),
  so the network is conv(+bias) → act only.
- ``optimize_for_inference``: BN folded, channels_last memory format, then traced and frozen by TorchScript
  (constant weights, conv/act fusion by ``torch.jit.optimize_for_inference`` where oneDNN supports it).
- ``compile_for_inference``: the same folded channels_last model through ``torch.compile`` with Inductor freezing.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from mobilenets.models.layers import ConvBNAct


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold inference BatchNorm ``bn`` into ``conv`` in place (``conv`` gets a bias)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        new_bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    conv.bias = nn.Parameter(new_bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every conv-BN pair folded into one biased convolution."""
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            fold_conv_bn(m.conv, m.bn)
            m.bn = nn.Identity()
    return folded


@torch.no_grad()
def optimize_for_inference(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """BN folded, channels_last, traced on ``example`` and frozen: the fastest eager-free PyTorch path here.

    The result takes NCHW input of any batch size (it converts to channels_last itself).
    """
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    wrapped = _ChannelsLast(folded).eval()
    with warnings.catch_warnings():
        # The tracer warns about the Python-side input-shape check, which is meant to stay out of the graph.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


@torch.no_grad()
def compile_for_inference(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """BN folded, channels_last, ``torch.compile`` (Inductor, weights frozen as constants), compiled on
    ``example``'s shape now (about a minute on a small CPU). Needs a C++ compiler."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(_ChannelsLast(fold_batchnorm(model).to(memory_format=torch.channels_last)).eval())
    with inductor_config.patch(freezing=True):
        compiled(example)  # compile while freezing is on; later calls reuse the frozen graph
    return compiled


class _ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))

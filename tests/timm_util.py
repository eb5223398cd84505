"""timm for the tests only: it imports torchvision, whose PyPI wheel here is a CUDA build that fails on the CPU torch
("operator torchvision::nms does not exist"). Declaring the two operator schemas first lets the import succeed;
timm's MobileNets never call them. The library itself never imports timm or torchvision."""

from __future__ import annotations

import contextlib
from types import ModuleType

import torch

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_timm() -> ModuleType:
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already defined (by an earlier call or a working torchvision)
            torch.library.define(f"torchvision::{op}", _SCHEMA)
    import timm

    return timm


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm affine parameters and running statistics, random biases.

    A fresh model's BN is the identity (mean 0, var 1, γ 1, β 0), which would hide a wrong epsilon or a swapped
    BN. The statistics are first measured on a random batch (so activations stay of order one through the
    depth, and float32 outputs can be compared to 1e-5), then perturbed per channel.
    """
    g = torch.Generator().manual_seed(seed)
    batchnorm = torch.nn.modules.batchnorm._BatchNorm
    norms = [m for m in model.modules() if isinstance(m, batchnorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "bias", None), torch.nn.Parameter) and not isinstance(m, batchnorm):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
        model.train()(torch.randn(4, 3, 64, 64, generator=g))
        for m in norms:
            m.momentum = 0.1
            # Channels nearly dead on this batch would divide by ~sqrt(eps) on another: keep var away from 0.
            m.running_var.clamp_(min=0.05)
            std = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1 * std)
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return model.eval()

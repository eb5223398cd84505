"""Models with non-trivial BatchNorm for equality tests: a fresh BatchNorm is the identity in eval mode, which
would hide mistakes in folding, slicing or export."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mobilenets import create_model, save_weights


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d random statistics and affine parameters (as after training); returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def trained_like(name: str, **overrides: object) -> nn.Module:
    """A registered model built with a fixed seed, its BatchNorm randomised."""
    torch.manual_seed(0)
    return randomise_bn(create_model(name, **overrides), seed=1)


def assert_round_trip(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    """``save_weights`` then ``create_model(name, weights=path)`` rebuilds the same model: equal outputs on ``x``."""
    save_weights(model, path)
    again = create_model(model.registry_name, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again(x))

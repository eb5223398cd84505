"""BN folding and the optimised PyTorch path: equal to the eager model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilenets.deploy.fold import fold_batchnorm, optimize_for_inference
from model_util import trained_like

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_fold_batchnorm_is_equal(name: str) -> None:
    model = trained_like(name, width=0.5, num_classes=10)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() <= 1e-5


def test_fold_with_tf_same_padding() -> None:
    model = trained_like("mobilenet_v3_small", padding="same", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (fold_batchnorm(model)(x) - model(x)).abs().max() <= 1e-5


def test_optimised_path_is_equal_for_any_batch() -> None:
    model = trained_like("mobilenet_v2", width=0.5, num_classes=10)
    fast = optimize_for_inference(model, torch.randn(1, 3, 64, 64))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert (fast(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.slow
def test_compiled_path_is_equal() -> None:
    import shutil

    from mobilenets.deploy.fold import compile_for_inference

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's Inductor needs a C++ compiler")
    model = trained_like("mobilenet_v3_small", width=0.35, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    fast = compile_for_inference(model, x)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-4

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


def assert_int8_engine_matches_twin(
    model: nn.Module, isa: str, batch: int, exact: int, thin_fp32: int | None = None
) -> None:
    """The int8 fused engine at ``isa`` against its fake-quantised PyTorch twin (the same integer sums): over three
    input shapes, ‖engine − twin‖ ≤ 0.5 ‖twin − fp32‖ and at least ``exact`` of ``batch`` images equal to 1e-5.
    ``thin_fp32``: the engine's and the twin's (default ``fused.THIN_FP32_CHANNELS``).
    Why a norm bound: a value within float rounding of a rounding boundary of the activation codes (the fp32 parts
    sum in another order) can land on the neighbouring code and move an image's logits by ~1e-3; a wrong scale or
    zero point gives ~1 or more. With 8-bit codes (both grids) the twin's own error is small, so one flipped code
    weighs relatively more than it did with 7-bit codes, whose bound was 0.3. The depthwise runs in fp32 here
    (``half_depthwise=False``): its fp16 variant is held to this engine in tests/test_fused.py."""
    from mobilenets.deploy import fused

    calibration = list(torch.randn(16, 3, 64, 64).split(8))  # drawn from the caller's seed, after the model
    thin = fused.THIN_FP32_CHANNELS if thin_fp32 is None else thin_fp32
    engine = fused.FusedEngine(
        model, threads=2, calibration=calibration, isa=isa, half_depthwise=False, thin_fp32=thin
    )  # fmt: skip
    assert engine.precision == "int8" and engine.isa == isa
    twin = fused.fake_quantized(model, calibration, fused.int8_grid(isa), thin_fp32=thin)
    for seed, (h, w) in enumerate([(96, 64), (64, 96), (32, 160)]):
        torch.manual_seed(seed)
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            want, fp32 = twin(x), model(x)
        got = engine(x)
        assert (got - want).norm() <= 0.5 * (want - fp32).norm()
        assert ((got - want).abs().amax(1) < 1e-5).sum() >= exact  # most images: the same sums exactly


def assert_engine_equals_eager(
    model: nn.Module, shapes: list[tuple[int, ...]], threads: int, isa: str | None = None, atol: float = 1e-4
) -> None:
    """The fp32 fused engine's logits within ``atol`` of eager PyTorch's on random batches of ``shapes`` (float
    rounding in another summation order), the logits large enough (> 0.05) for the bound to mean something."""
    from mobilenets.deploy import fused

    engine = fused.FusedEngine(model, threads=threads, isa=isa)
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            reference = model(x)
        out = engine(x)
        assert out.shape == reference.shape
        assert reference.abs().max() > 0.05, shape
        assert (out - reference).abs().max() <= atol, shape


def engine_isa(isa: str) -> str:
    """``isa`` when this CPU can run the fused engine's level of that name; else the test is skipped (a level the
    CPU lacks is never executed)."""
    import pytest

    from mobilenets.deploy import fused

    if fused.cpu_supported() is not None or isa not in fused.supported_isas():
        pytest.skip(f"this CPU lacks the engine's {isa} level")
    return isa


def bf16_isas() -> list[str]:
    """The fused engine's levels that run bf16 on this CPU (amx; avx512 with AVX512-BF16); else the test is
    skipped."""
    import pytest

    from mobilenets.deploy import fused

    levels = fused.bf16_isas()
    if not levels:
        pytest.skip("this CPU runs no bf16 engine level (neither AVX512-BF16 nor AMX)")
    return levels


def require_engine() -> None:
    """Skips the calling test module (call it at module level) where the fused engine cannot be built or run: no
    C++ compiler, or a CPU without AVX2."""
    import pytest

    from mobilenets.deploy import fused

    try:
        fused.load_library()
    except fused.EngineUnavailable as e:  # pragma: no cover - machines without a compiler or AVX2
        pytest.skip(f"fused engine unavailable here: {e}", allow_module_level=True)

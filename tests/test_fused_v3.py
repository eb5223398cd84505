"""The fused engine on MobileNetV3 (squeeze-excite, h-swish, 5×5 depthwise) and on dilated backbones (output stride
16 / 8) against the eager model on the same weights.

Tolerances as in ``tests/test_fused.py``: fp32 max abs logit difference ≤ 1e-4; int8 and bf16 against their
PyTorch twins (``fused.fake_quantized``, ``fused.bf16_rounded``), bounded relative to their own error. V3's linear
layers are initialised N(0, 0.01), which leaves its logits near 1e-2, where a 1e-4 bound could not tell a wrong
squeeze-excite from a right one; ``_v3`` draws them at 1/√fan-in instead (logits ~0.4; moving every SE gate's bias
by 1 moves them by ~0.07). Every ISA level this CPU has runs, the narrower ones forced.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from mobilenets.deploy import fused
from mobilenets.errors import ConfigError
from model_util import (
    assert_engine_equals_eager,
    assert_int8_engine_matches_twin,
    bf16_isas,
    engine_isa,
    require_engine,
    trained_like,
)

ATOL = 1e-4

require_engine()


def _v3(name: str, **overrides: object) -> torch.nn.Module:
    model = trained_like(name, **{"num_classes": 10, **overrides})
    g = torch.Generator().manual_seed(3)
    for linear in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        linear.weight.data = torch.randn(linear.weight.shape, generator=g) / linear.in_features**0.5
        linear.bias.data = torch.randn(linear.bias.shape, generator=g) * 0.1
    return model


@pytest.mark.parametrize(
    ("name", "width", "threads"),
    [
        ("mobilenet_v3_large", 1.0, 2),
        ("mobilenet_v3_large", 0.75, 1),
        ("mobilenet_v3_small", 1.0, 1),
        ("mobilenet_v3_small", 0.75, 2),
        ("mobilenet_v3_large", 0.75, 3),  # the SE blocks' rows and shared gate split among three
    ],
)
def test_v3_fp32_equals_eager(name: str, width: float, threads: int) -> None:
    # Batches below, equal to and above the thread count; 224 and 96 × 160 (the blocks ≥ 14 px wide stream through
    # the row ring, the SE blocks among them keeping their depthwise output whole; at 224 with threads sharing the
    # image, the 28-px SE blocks make their gate in each thread and the 14-px ones share it out) and 64 (every block
    # on a small map).
    torch.manual_seed(0)
    model = _v3(name, width=width)
    assert_engine_equals_eager(model, [(1, 3, 224, 224), (threads, 3, 96, 160), (threads + 1, 3, 64, 64)], threads)


@pytest.mark.parametrize("isa", list(fused.ISAS))
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_v3_fp32_equals_eager_on_every_isa(isa: str, name: str) -> None:
    torch.manual_seed(0)
    model = _v3(name, width=0.75)
    for threads in (1, 2):
        assert_engine_equals_eager(model, [(1, 3, 160, 96), (3, 3, 64, 64)], threads, isa=engine_isa(isa))


def test_v3_depthwise_rows_of_every_length() -> None:
    # 5×5 windows reach two columns into the padding: widths 288 and 32 give maps 144, 72, 36, 18, 9 and 16, 8, 4,
    # 2, 1 wide at strides 1 and 2, so the edge groups meet rows shorter than the window and remainders 0–7.
    torch.manual_seed(0)
    assert_engine_equals_eager(_v3("mobilenet_v3_large", width=0.35), [(1, 3, 32, 288), (1, 3, 288, 32)], threads=1)


def test_v3_random_configurations_equal_eager() -> None:
    # Drawn once from a fixed seed: V3 Large / Small at several widths, 1–4 threads, output stride 32 / 16 / 8,
    # sides 32–288 (square or not), batches below and above the thread count. Squeeze-excite blocks stream or run
    # whole by their output width and the thread count, and make their gate alone or shared by the FCs' size.
    rng = random.Random(7)
    for _ in range(8):
        name = rng.choice(["mobilenet_v3_large", "mobilenet_v3_small"])
        overrides = {"width": rng.choice([0.35, 0.5, 0.75, 1.0])}
        if stride := rng.choice([None, 16, 8]):
            overrides["output_stride"] = stride
        threads, batch = rng.choice([1, 2, 3, 4]), rng.choice([1, 2, 5])
        h, w = rng.choice([32, 96, 160, 224, 288]), rng.choice([32, 64, 160, 256])
        torch.manual_seed(rng.randrange(1000))
        assert_engine_equals_eager(_v3(name, **overrides), [(batch, 3, h, w)], threads)


@pytest.mark.parametrize(
    ("name", "output_stride", "threads"),
    [
        ("mobilenet_v2", 16, 2),
        ("mobilenet_v2", 8, 1),
        ("mobilenet_v3_large", 16, 1),
        ("mobilenet_v3_large", 8, 2),
        ("mobilenet_v3_small", 8, 1),
    ],
)
def test_dilated_classifiers_equal_eager(name: str, output_stride: int, threads: int) -> None:
    # Output stride 16 / 8: the later blocks dilate their depthwise (rate 2, then 4) instead of striding; at 224
    # the dilated maps are 14 / 28 px wide (28: a 5×5 window at rate 4 spans 17 rows of the ring).
    torch.manual_seed(0)
    model = _v3(name, width=0.5, output_stride=output_stride)
    assert_engine_equals_eager(model, [(1, 3, 224, 224), (threads + 1, 3, 64, 96)], threads)


# The amx level's int8 outputs are avx512's bit for bit (tests/test_fused.py); its library runs in the fp32 and
# bf16 tests.
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_v3_int8_engine_equals_its_fake_quantized_model(isa: str, name: str) -> None:
    # As for V2 (tests/test_fused.py): the same integer sums, so most images equal their twin to ~1e-7, and a norm
    # bound for the few codes that float rounding puts on the other side of a boundary. Squeeze-excite stays fp32
    # in both, and the projection after it reads ordinary codes of the scaled depthwise output. V3 quantises more
    # values off a zero point (h-swish outputs reach −0.375), so flips are more frequent than in V2: the twin run in
    # float64 differs from itself in float32 by as much as the engine does (0.53 of its error on one 5-image batch).
    # Batches of 12 average that out: measured ≤ 0.26 (AVX2, then 7-bit codes) / 0.39 (VNNI) over 9 batches each,
    # ≥ 8 of 12 exact. Both grids now have 8-bit codes: ≤ 0.5 for both, as for V2. With the thin expansion (16
    # input channels, block 2) in fp32, its sums reach the next layer's codes in another order than PyTorch's, so a
    # few more codes flip: measured 6–12 of 12 exact, ≤ 0.39 (against 7–12 and ≤ 0.30 with it in int8).
    for thin, exact in ((0, 7), (fused.THIN_FP32_CHANNELS, 5)):
        torch.manual_seed(0)
        assert_int8_engine_matches_twin(_v3(name, width=0.75), engine_isa(isa), batch=12, exact=exact, thin_fp32=thin)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_v3_bf16_engine_equals_its_rounded_model(name: str) -> None:
    torch.manual_seed(0)
    model = _v3(name, width=0.75)
    twin = fused.bf16_rounded(model)
    for isa, threads in itertools.product(bf16_isas(), (1, 2)):
        engine = fused.FusedEngine(model, threads=threads, precision="bf16", isa=isa)
        x = torch.randn(4, 3, 96, 128)
        with torch.no_grad():
            want, fp32 = twin(x), model(x)
        got = engine(x)
        assert (got - want).norm() <= 0.3 * (want - fp32).norm()
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_v3_features_and_memory() -> None:
    # Without a classifier the engine returns the pre-logits features. Its scratch holds the SE blocks' whole
    # maps, yet for V3-Large stays below eager PyTorch's peak of live activations (4.4 vs 7.8 MB at 224; not so for
    # V3-Small, whose first block has SE, so the stem's 112 × 112 × 16 output is kept whole rather than streamed).
    from mobilenets.analysis.memtrace import peak_activation_bytes

    torch.manual_seed(0)
    assert_engine_equals_eager(_v3("mobilenet_v3_small", width=0.75, num_classes=0), [(2, 3, 96, 96)], threads=2)
    model = _v3("mobilenet_v3_large")
    engine = fused.FusedEngine(model, threads=1)
    assert 0 < engine.activation_bytes(160, 160) < peak_activation_bytes(model, torch.randn(1, 3, 160, 160))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"padding": "same"}, "TensorFlow 'same' padding"),
        ({"arch": "v2", "shortcut": "expansion"}, "'expansion' shortcut"),
    ],
)
def test_what_remains_refused_is_named(overrides: dict[str, object], message: str) -> None:
    from mobilenets.models.mobilenet import MobileNet, MobileNetConfig

    config = MobileNetConfig(**{"arch": "v3_large", "num_classes": 10, **overrides})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        fused.FusedEngine(MobileNet(config).eval())

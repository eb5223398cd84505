"""The fused C++ engine (``mobilenets.deploy.fused``) against the eager model on the same weights.

Tolerance: fp32, max abs difference of the logits ≤ 1e-4 (float rounding in another summation order; measured
≤ 2e-6 on these models, whose BatchNorm is randomised so that folding matters and logits are O(1)). int8 and bf16
against their PyTorch twins (the same rounding of inputs and weights), bounded relative to their own error.
Every ISA level this CPU has runs (``fused.supported_isas()``); the narrower ones are forced, so an AVX-512 / AMX
host also covers the AVX2 path; the levels this CPU lacks are skipped, never executed.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mobilenets.deploy import fused
from mobilenets.errors import ConfigError, InputError
from model_util import (
    assert_engine_equals_eager,
    assert_int8_engine_matches_twin,
    bf16_isas,
    engine_isa,
    require_engine,
    trained_like,
)

ATOL = 1e-4
SUPPORTED = fused.supported_isas() if fused.cpu_supported() is None else []

require_engine()


@pytest.mark.parametrize(
    ("name", "width", "threads"),
    [
        ("mobilenet_v2", 1.0, 2),
        ("mobilenet_v2", 0.35, 1),
        ("mobilenet_v2", 1.4, 3),
        ("mobilenet_v1", 0.5, 2),
        ("mobilenet_v3_large_minimal", 1.0, 2),  # V3 without squeeze-excite: a pre-logits layer after the pool
        ("mobilenet_v3_small_minimal", 0.75, 1),
        # More threads than this machine's cores: descheduled threads leave their rows and panels to the others.
        ("mobilenet_v2", 0.5, 5),
    ],
)
def test_fused_engine_equals_eager(name: str, width: float, threads: int) -> None:
    # Batches below, equal to and above the thread count (shared layers vs one image per thread), square and
    # not, and sizes whose wide maps stream through the row ring (≥ 28 px) as well as small ones that do not.
    model = trained_like(name, width=width, num_classes=10)
    assert_engine_equals_eager(model, [(1, 3, 96, 96), (threads, 3, 64, 160), (threads + 1, 3, 128, 64)], threads)


@pytest.mark.parametrize(
    ("name", "switch"),
    [
        ("mobilenet_v2", {"project_act": "relu6"}),
        ("mobilenet_v2", {"shortcut": "none"}),
        ("mobilenet_v2", {"num_classes": 0}),
        ("mobilenet_v3_small_minimal", {"num_classes": 0}),  # the pre-logits features
    ],
)
def test_fused_engine_ablations_and_features(name: str, switch: dict[str, object]) -> None:
    assert_engine_equals_eager(trained_like(name, width=0.5, **switch), [(2, 3, 64, 64)], threads=2)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_engine_depthwise_rows_of_every_length(threads: int) -> None:
    # The depthwise kernel runs a row in groups of eight outputs plus one group of the remaining 1–7, with the left
    # / right padding columns skipped at compile time: widths 288 and 32 give maps 144, 72, 36, 18, 9 and 16, 8, 4,
    # 2, 1 wide (remainders 0, 1, 2, 4; the other tests cover 3, 5, 6, 7), at strides 1 and 2.
    assert_engine_equals_eager(
        trained_like("mobilenet_v2", width=0.35, num_classes=10), [(1, 3, 32, 288), (1, 3, 288, 32)], threads
    )


def test_fused_engine_at_224() -> None:
    assert_engine_equals_eager(trained_like("mobilenet_v2"), [(1, 3, 224, 224)], threads=2)


@pytest.mark.parametrize("isa", list(fused.ISAS))
def test_fused_engine_alone_streams_rows_across_blocks(isa: str) -> None:
    # A thread running an image alone streams the stem and the wide blocks as one chain of three-row rings
    # (chain.cpp), every later block through its ring, and adds the head's rows straight into the pool: no
    # 112 × 112 map is ever whole. V2 §5.1's bound for V2 @ 224 is Table 3's largest tensor, 401.4 Kb at 16 bits
    # (0.80 MB fp32); the engine's scratch must stay within twice that (1.6 MB fp32: it also holds the rows a 3×3
    # window needs and the smaller maps' rings; measured 1.08 MB), where whole maps took 5.1 MB.
    model = trained_like("mobilenet_v2", num_classes=10)
    alone = fused.FusedEngine(model, threads=1, isa=engine_isa(isa))
    assert alone.activation_bytes(224, 224) <= 1.6e6
    assert fused.FusedEngine(model, threads=2, isa=engine_isa(isa)).activation_bytes(224, 224) > 2 * 1.6e6  # whole maps
    x = torch.randn(2, 3, 224, 224)  # at two threads, two images run one per thread: the chain too
    with torch.no_grad():
        reference = model(x)
    assert (alone(x) - reference).abs().max() <= ATOL
    assert (fused.FusedEngine(model, threads=2, isa=engine_isa(isa))(x) - reference).abs().max() <= ATOL


def test_fused_engine_is_repeatable_across_shapes() -> None:
    # Scratch buffers are kept per input size and the worker threads persist between calls: nothing of one
    # call may leak into the next (this order once exposed a write above the first image row).
    engine = fused.FusedEngine(trained_like("mobilenet_v2", width=0.5, num_classes=10), threads=2)
    x1, x2 = torch.randn(1, 3, 96, 96), torch.randn(2, 3, 64, 160)
    kept = x1.clone()
    first = engine(x1)
    engine(x2)
    assert torch.equal(engine(x1), first) and torch.equal(x1, kept)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "mobilenet_v2", "padding": "same"}, "same"),
        ({"name": "mobilenet_v2", "shortcut": "expansion"}, "expansion"),
    ],
)
def test_fused_engine_rejects_what_it_cannot_run(overrides: dict[str, object], message: str) -> None:
    name = str(overrides.pop("name"))
    with pytest.raises(ConfigError, match=message):
        fused.FusedEngine(trained_like(name, **overrides))


def test_fused_engine_rejects_other_modules_and_bad_input() -> None:
    with pytest.raises(ConfigError, match="MobileNet classifiers"):
        fused.FusedEngine(torch.nn.Conv2d(3, 8, 3))
    engine = fused.FusedEngine(trained_like("mobilenet_v2", width=0.35, num_classes=4), threads=1)
    with pytest.raises(InputError, match="input channels"):
        engine(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputError, match="divisible by 32"):
        engine(torch.randn(1, 3, 70, 64))
    with pytest.raises(InputError, match="at most 65533 px high"):
        engine(torch.zeros(1, 3, 65536, 32))


def test_fused_engine_holds_less_than_eager() -> None:
    # Every activation the engine holds lives in its scratch, and wide blocks stream their expansion through a
    # three-row ring (V2 §5.1): the whole scratch is smaller than eager PyTorch's peak of live activations.
    from mobilenets.analysis.memtrace import peak_activation_bytes

    model = trained_like("mobilenet_v2", width=0.5)
    engine = fused.FusedEngine(model, threads=2)
    eager_peak = peak_activation_bytes(model, torch.randn(1, 3, 128, 128))  # 1.9 MB
    assert engine.activation_bytes(128, 128) < 0.7 * eager_peak  # 1.1 MB
    assert engine.activation_bytes(64, 64) < engine.activation_bytes(128, 128)


def _logits_in_child(engine: fused.FusedEngine, x: torch.Tensor, queue) -> None:  # type: ignore[no-untyped-def]
    queue.put(engine(x).tolist())  # plain floats: a tensor would travel through shared memory


def test_fused_engine_works_in_a_forked_child() -> None:
    # The worker threads live on between calls; a fork()ed child (a DataLoader worker, say) has none of them and
    # must start its own instead of waiting for them forever.
    import multiprocessing

    engine = fused.FusedEngine(trained_like("mobilenet_v2", width=0.35, num_classes=4), threads=2)
    x = torch.randn(1, 3, 64, 64)
    want = engine(x)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_logits_in_child, args=(engine, x, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == want.tolist()


def test_compiler_failure_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path))
    fused.load_library.cache_clear()
    try:
        monkeypatch.setenv("CXX", "no-such-compiler-here")
        with pytest.raises(fused.EngineUnavailable, match="needs a C\\+\\+ compiler"):
            fused.load_library()
        monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
        with pytest.raises(fused.EngineUnavailable, match="failed"):
            fused.load_library()
        assert not list(tmp_path.glob("*.so"))  # nothing half-written left behind
        monkeypatch.setenv("CXX", "g++")
        (tmp_path / "a file").write_text("")
        monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "a file" / "cache"))  # cannot be created
        with pytest.raises(fused.EngineUnavailable, match="MOBILENETS_CACHE"):
            fused.load_library()
    finally:
        fused.load_library.cache_clear()


def test_pack_panels_layout() -> None:
    w = torch.arange(3 * 24, dtype=torch.float32).reshape(3, 24)  # K = 3, N = 24: a 16-wide and an 8-wide panel
    packed = fused.pack_panels(w)
    assert torch.equal(packed[: 3 * 16].reshape(3, 16), w[:, :16])
    assert torch.equal(packed[3 * 16 :].reshape(3, 8), w[:, 16:])
    padded = fused.pack_panels(torch.ones(2, 10))  # N = 10 → zero columns up to 16
    assert padded.numel() == 2 * 16 and padded.reshape(2, 16)[:, 10:].abs().sum() == 0


@pytest.mark.parametrize("isa", list(fused.ISAS))
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small_minimal", "mobilenet_v1"])
def test_fp32_engine_equals_eager_on_every_isa(isa: str, name: str) -> None:
    # Wide maps (row ring) and small ones, 16-wide and 8-wide channel panels, one and two threads.
    model = trained_like(name, width=0.5, num_classes=10)
    for threads in (1, 2):
        assert_engine_equals_eager(model, [(1, 3, 96, 128), (3, 3, 64, 64)], threads, isa=engine_isa(isa))


@pytest.mark.parametrize("isa", list(fused.ISAS))
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small_minimal"])
def test_int8_engine_equals_its_fake_quantized_model(isa: str, name: str) -> None:
    # The engine's int8 error must be the quantisation's, i.e. that of its fake-quantised PyTorch twin.
    torch.manual_seed(0)
    assert_int8_engine_matches_twin(trained_like(name, width=0.5, num_classes=10), engine_isa(isa), batch=5, exact=2)


@pytest.mark.parametrize("isa", list(fused.ISAS))
def test_int8_runs_the_thin_expansions_in_fp32(isa: str) -> None:
    # The expansions of at most THIN_FP32_CHANNELS input channels (V2 0.5: block 2's 8, blocks 3-7's 16) run in
    # fp32 in the int8 engine: fp32 weights and no codes, fp32 expanded rows (no fp16 depthwise after them), the
    # projections after them still int8; thin_fp32=0 puts every expansion in int8. (That it runs them as its twin does:
    # test_int8_engine_equals_its_fake_quantized_model; what it gains on trained weights: docs/engine.md.)
    isa = engine_isa(isa)
    torch.manual_seed(0)
    model = trained_like("mobilenet_v2", width=0.5, num_classes=10)
    calibration = list(torch.randn(16, 3, 64, 64).split(8))
    thin = {id(conv) for conv in fused.thin_expansions(model)}
    widths = [block.expand.conv.in_channels for block in model.blocks if block.expand is not None]
    assert len(thin) == sum(k <= fused.THIN_FP32_CHANNELS for k in widths) == 6 < len(widths)
    for n_thin in (fused.THIN_FP32_CHANNELS, 0):
        engine = fused.FusedEngine(model, threads=2, calibration=calibration, isa=isa, thin_fp32=n_thin)
        blocks = [layer for layer in engine._array if layer.kind == fused._BLOCK and layer.has_expand]
        fp32 = [layer.cin <= n_thin for layer in blocks]
        assert [layer.expand.q is None and layer.expand.w is not None for layer in blocks] == fp32
        assert all(layer.out.q for layer in blocks)
        assert not any(layer.w_dw16 for layer, f in zip(blocks, fp32, strict=True) if f)
        assert engine.fp32_expansions == sum(fp32) == (6 if n_thin else 0)
        assert ("6 thin expansions in fp32" in engine.describe()) == bool(n_thin)


@pytest.mark.parametrize("threads", [1, 2])
def test_amx_int8_equals_vnni_int8_exactly(threads: int) -> None:
    # The amx level runs int8 products of at least 7 rows and 64 input and output channels on AMX tiles (tdpbusd),
    # which sum the same u8 × s8 products in int32 as vpdpbusd: the outputs must be bit-identical to the avx512
    # level's on the same grid, over K that are and are not multiples of 64, 8-wide last panels and row tails. (A
    # thread alone runs rows of one map row: the 1024-wide input gives 64-pixel rows at stride 16.)
    engine_isa("amx")
    torch.manual_seed(0)
    model = trained_like("mobilenet_v2", width=0.75, num_classes=12)  # 12 classes: an 8-wide last panel
    calibration = list(torch.randn(16, 3, 64, 64).split(8))
    vnni = fused.FusedEngine(model, threads=threads, calibration=calibration, isa="avx512")
    amx = fused.FusedEngine(model, threads=threads, calibration=calibration, isa="amx", half_depthwise=False)
    for shape in [(1, 3, 224, 224), (3, 3, 96, 160), (1, 3, 32, 1024)]:
        x = torch.randn(*shape)
        assert torch.equal(amx(x), vnni(x)), shape


@pytest.mark.parametrize("threads", [1, 2])
def test_fp16_rows_from_amx_tiles_equal_those_from_vnni(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The expansions that write fp16 rows for the fp16 depthwise run on AMX tiles too where they are wide enough
    # (V2 1.0's 14-px blocks: 64 → 384, 96 → 576): the same integer sums, the same rounding to fp16, so the outputs
    # must be those of the same engine with every product on VNNI (TILE_MIN_CHANNELS out of reach). At 224 the
    # 7-px blocks' 49-row products are on tiles too, their first 32 rows read in place (K = 960: no padding).
    require_half_depthwise()
    torch.manual_seed(0)
    model = trained_like("mobilenet_v2", num_classes=12)
    calibration = list(torch.randn(16, 3, 64, 64).split(8))
    tiles = fused.FusedEngine(model, threads=threads, calibration=calibration)
    monkeypatch.setattr(fused, "TILE_MIN_CHANNELS", 1 << 20)
    vnni = fused.FusedEngine(model, threads=threads, calibration=calibration)
    on_tiles = [layer for layer in tiles._array if layer.expand.tiles and layer.w_dw16]
    assert on_tiles and not any(layer.expand.tiles or layer.out.tiles for layer in vnni._array)
    for shape in [(1, 3, 224, 224), (2, 3, 96, 160)]:
        x = torch.randn(*shape)
        assert torch.equal(tiles(x), vnni(x)), shape


def require_half_depthwise() -> None:
    engine_isa("amx")
    if fused.HALF_FLAG not in fused.cpu_flags():
        pytest.skip(f"this CPU lacks {fused.HALF_FLAG}: the fp16 depthwise cannot run here")


@pytest.mark.parametrize("channels", [fused.HALF_CHANNELS, 8])  # 8: every width, so the 16- and 8-lane tails run
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("mobilenet_v2", {"width": 0.5}),
        ("mobilenet_v2", {"width": 0.75, "output_stride": 8}),  # dilated rows
        ("mobilenet_v3_large_minimal", {"width": 0.5}),
    ],
)
def test_int8_fp16_depthwise_stays_near_the_exact_sums(
    name: str, overrides: dict, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The amx level's default int8 keeps the row-streamed blocks' expanded rows in fp16 and sums their depthwise
    # in fp16 (half_depthwise). Its sums are the projection's codes (0..255 before the clamp), which fp16 holds to
    # 1/32 .. 1/8 of a code, so some land one code off the fp32 depthwise's: the difference must stay well inside
    # the int8 error itself (measured up to 0.54 of ‖twin − fp32‖ on these models; wrong fp16 weights give ≫ 1).
    # One to three threads (the chain of a thread alone, shared rows), odd widths, batches.
    require_half_depthwise()
    monkeypatch.setattr(fused, "HALF_CHANNELS", channels)
    torch.manual_seed(0)
    model = trained_like(name, num_classes=10, **overrides)
    calibration = list(torch.randn(16, 3, 64, 64).split(8))
    twin = fused.fake_quantized(model, calibration, fused.int8_grid("amx"))
    for threads in (1, 2, 3):
        exact = fused.FusedEngine(model, threads=threads, calibration=calibration, half_depthwise=False)
        half = fused.FusedEngine(model, threads=threads, calibration=calibration)
        assert half.half_depthwise and not exact.half_depthwise
        assert sum(bool(layer.w_dw16) for layer in half._array) >= 2
        for seed, shape in enumerate([(5, 3, 96, 64), (2, 3, 64, 96), (3, 3, 32, 160), (1, 3, 224, 224)]):
            torch.manual_seed(seed)
            x = torch.randn(*shape)
            with torch.no_grad():
                quantisation = (twin(x) - model(x)).norm()
            assert (half(x) - exact(x)).norm() <= 0.75 * quantisation, (threads, shape)


def test_half_depthwise_needs_int8_on_amx() -> None:
    model = trained_like("mobilenet_v2", width=0.35, num_classes=4)
    with pytest.raises(fused.EngineUnavailable, match="fp16 depthwise"):
        fused.FusedEngine(model, threads=1, half_depthwise=True)  # fp32
    calibration = [torch.randn(4, 3, 64, 64)]
    with pytest.raises(fused.EngineUnavailable, match="fp16 depthwise"):
        fused.FusedEngine(model, threads=1, calibration=calibration, isa="avx2", half_depthwise=True)
    assert not fused.FusedEngine(model, threads=1, calibration=calibration, isa="avx2").half_depthwise


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v1", "mobilenet_v3_large_minimal"])
def test_bf16_engine_equals_its_rounded_model(name: str) -> None:
    # AMX tiles and vdpbf16ps sum the bf16 products in fp32 in another order than PyTorch, and a sum that lies within
    # that rounding of a bf16 rounding boundary of the next layer's input lands on the neighbouring bf16 value: a
    # bound on norms again, ‖engine − twin‖ ≤ 0.3 ‖twin − fp32‖, and every image's top-1 equal to the twin's. Every
    # level that runs bf16 here (width 0.5: 8-channel layers and 10 classes end in part-filled panels).
    torch.manual_seed(0)
    model = trained_like(name, width=0.5, num_classes=10)
    twin = fused.bf16_rounded(model)
    for isa, threads in itertools.product(bf16_isas(), (1, 2)):
        engine = fused.FusedEngine(model, threads=threads, precision="bf16", isa=isa)
        assert engine.precision == "bf16" and engine.isa == isa
        x = torch.randn(4, 3, 96, 128)
        with torch.no_grad():
            want, fp32 = twin(x), model(x)
        got = engine(x)
        assert (got - want).norm() <= 0.3 * (want - fp32).norm()
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_isa_is_chosen_forced_and_guarded(monkeypatch) -> None:
    model = trained_like("mobilenet_v2", width=0.35, num_classes=4)
    assert fused.FusedEngine(model, threads=1).isa == SUPPORTED[-1]  # the widest this CPU has
    monkeypatch.setenv(fused.ISA_ENV, "avx2")
    assert fused.FusedEngine(model, threads=1).isa == "avx2"
    monkeypatch.setenv(fused.ISA_ENV, "sse2")
    with pytest.raises(ConfigError, match="unknown engine ISA 'sse2'"):
        fused.FusedEngine(model, threads=1)
    monkeypatch.delenv(fused.ISA_ENV)
    # A CPU without AVX-512 / AMX never loads those libraries: the level is refused before anything runs.
    monkeypatch.setattr(fused, "supported_isas", lambda: ["avx2"])
    for isa in ("avx512", "amx"):
        with pytest.raises(fused.EngineUnavailable, match=f"cannot run the engine's {isa} level"):
            fused.FusedEngine(model, threads=1, isa=isa)
    with pytest.raises(fused.EngineUnavailable, match="bf16 engine needs avx512_bf16"):
        fused.FusedEngine(model, threads=1, isa="avx2", precision="bf16")
    # An AVX-512 CPU without AVX512-BF16 (Skylake-X, Ice Lake) runs fp32 and int8 at the avx512 level, never bf16.
    monkeypatch.setattr(fused, "supported_isas", lambda: ["avx2", "avx512"])
    monkeypatch.setattr(fused, "cpu_flags", lambda: frozenset(fused.ISAS["avx512"][1]))
    with pytest.raises(fused.EngineUnavailable, match=r"bf16 engine needs avx512_bf16.*this runs avx512"):
        fused.FusedEngine(model, threads=1, isa="avx512", precision="bf16")
    monkeypatch.setattr(fused, "cpu_flags", lambda: frozenset({*fused.ISAS["avx512"][1], fused.BF16_FLAG}))
    assert fused.bf16_supported("avx512") and not fused.bf16_supported("avx2")
    with pytest.raises(ConfigError, match="unknown engine precision"):
        fused.FusedEngine(model, precision="fp16")


class _FakeLib:
    def __init__(self, version: int, conv: int, layer: int) -> None:
        self.mn_abi_version = lambda: version
        self.mn_struct_size = lambda which: (conv, layer)[which]


def test_abi_mismatch_is_refused_at_load() -> None:
    import ctypes

    conv, layer = ctypes.sizeof(fused._Conv), ctypes.sizeof(fused._Layer)
    fused.check_abi(_FakeLib(fused.ABI_VERSION, conv, layer), "lib.so")  # this version's: accepted
    with pytest.raises(fused.EngineUnavailable, match=rf"lib.so has ABI 1 .* expects ABI {fused.ABI_VERSION}"):
        fused.check_abi(_FakeLib(1, conv, layer), "lib.so")
    with pytest.raises(fused.EngineUnavailable, match="MnLayer 8 B"):
        fused.check_abi(_FakeLib(fused.ABI_VERSION, conv, 8), "lib.so")
    with pytest.raises(fused.EngineUnavailable, match="reports no ABI version"):
        fused.check_abi(object(), "old.so")  # type: ignore[arg-type]
    lib = fused.load_library(SUPPORTED[0])  # the real library agrees with its mirror
    assert lib.mn_abi_version() == fused.ABI_VERSION and lib.mn_struct_size(1) == layer


def test_int8_stem_puts_each_input_channel_on_its_own_grid() -> None:
    # An image normalised from 8-bit pixels (a mean and std per channel) spans 256 pixel values in each channel, but
    # each channel over another range: on its own grid every pixel value keeps a code of its own; one grid for the
    # three (the stem's before) is coarser than the narrowest channel's pixel step and merges neighbouring values.
    pixels = torch.arange(256).repeat(3, 1).float()  # channels × every pixel value
    mean, std = torch.tensor([[0.485], [0.456], [0.406]]), torch.tensor([[0.229], [0.224], [0.225]])
    x = (pixels / 255 - mean) / std
    channels = (x.amin(1), x.amax(1))
    scale, zero = fused.stem_quantization(channels, 255)
    codes = torch.clamp(torch.round(x / scale[:, None]) + zero[:, None], 0, 255)
    assert all(len(c.unique()) == 256 for c in codes)
    one_scale, one_zero = fused.activation_quantization(*fused.tensor_range(channels), 255)
    one_grid = torch.clamp(torch.round(x / one_scale) + one_zero, 0, 255)
    assert min(len(c.unique()) for c in one_grid) < 256


@pytest.mark.parametrize("isa", SUPPORTED)
def test_int8_stem_keeps_a_narrow_input_channel(isa: str) -> None:
    # Input channel 0 spans 2 % of the others' range: on a shared grid it would be a few codes, and the engine far from
    # the twin, whose stem quantises each channel on its own grid.
    torch.manual_seed(0)
    model = trained_like("mobilenet_v2", width=0.35, num_classes=10)
    x = torch.randn(12, 3, 64, 64)
    x[:, 0] *= 0.02
    calibration = list(x[4:].split(4))
    engine = fused.FusedEngine(model, threads=2, calibration=calibration, isa=isa, half_depthwise=False)
    twin = fused.fake_quantized(model, calibration, fused.int8_grid(isa))
    with torch.no_grad():
        want, fp32 = twin(x[:4]), model(x[:4])
    assert (engine(x[:4]) - want).norm() <= 0.5 * (want - fp32).norm()


def test_int8_engine_needs_calibration_images() -> None:
    with pytest.raises(ConfigError, match="calibration"):
        fused.FusedEngine(trained_like("mobilenet_v2", width=0.35), calibration=[])


def test_int8_packing_and_grids() -> None:
    q = torch.arange(8 * 16, dtype=torch.int8).reshape(8, 16) - 64  # K = 8, one 16-wide panel
    packed = fused.pack_panels_int8(q).reshape(2, 16, 4)  # [K/4][column][4 consecutive k]
    assert torch.equal(packed[1, 3], q[4:8, 3])
    weight = torch.tensor([[1.0, -0.5], [-2.0, 0.25]])
    codes, scale = fused.quantize_weights(weight)
    assert codes.abs().max() == fused.VNNI_GRID.weight_max and torch.allclose(codes * scale, weight, atol=0.02)
    scale, zero = fused.activation_quantization(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zero == round(1 / scale)
    assert fused.activation_quantization(0.5, 6.0) == (pytest.approx(6 / 255), 0)  # widened to include 0


@pytest.mark.parametrize("grid", [fused.VNNI_GRID, fused.AVX2_GRID], ids=["vnni", "avx2"])
def test_output_aware_rounding_brings_the_layer_output_nearer(grid: fused.Int8Grid) -> None:
    # Given the input Gram matrix, quantize_weights rounds for X · W instead of W: on the same scales and within
    # the same limits (±127, AVX2's pair limit), the output error on correlated inputs falls, on the calibration
    # inputs and on others from the same distribution (measured 0.77-0.92 of the rounding's own; 1.0 would mean
    # the Gram matrix was ignored).
    torch.manual_seed(0)
    for k, n in ((16, 32), (96, 24), (320, 64)):
        mix = torch.randn(k, k) / k**0.5 + torch.eye(k)
        x, held_out = torch.randn(4096, k) @ mix, torch.randn(4096, k) @ mix
        w = torch.randn(k, n)
        plain, plain_scale = fused.quantize_weights(w, grid)
        q, scale = fused.quantize_weights(w, grid, x.double().t() @ x.double())
        assert torch.equal(scale, plain_scale) and int(q.abs().max()) <= grid.weight_max
        if grid.pair_sum is not None:
            pairs = q[: k // 2 * 2].reshape(-1, 2, n).int()
            assert not ((pairs[:, 0] * pairs[:, 1] > 0) & (pairs.abs().sum(1) > grid.pair_sum)).any()
        for inputs in (x, held_out):
            error = (inputs @ (w - q.float() * scale)).norm()
            assert error < 0.95 * (inputs @ (w - plain.float() * plain_scale)).norm(), (k, n)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_avx2_pairing_reorders_inner_channels_and_keeps_the_function(name: str) -> None:
    # pair_inner_channels moves each block's expansion outputs (V2's first block: the stem's), depthwise channels,
    # squeeze-excite (V3) and projection inputs together: the same network, only AVX2's pairs of rows differ.
    torch.manual_seed(0)
    model = trained_like(name, width=0.5, num_classes=10)
    folded = fused.fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    projections = [block.project.conv.weight.clone() for block in folded.blocks]
    fused.pair_inner_channels(folded, fused.VNNI_GRID)  # no pair limit: nothing moves
    fused.pair_inner_channels(folded, fused.AVX2_GRID, keep=range(len(folded.blocks)))  # every block kept
    assert all(torch.equal(b.project.conv.weight, w) for b, w in zip(folded.blocks, projections, strict=True))
    fused.pair_inner_channels(folded, fused.AVX2_GRID, keep={1})
    moved = [not torch.equal(b.project.conv.weight, w) for b, w in zip(folded.blocks, projections, strict=True)]
    assert not moved[1] and sum(moved) >= len(moved) - 2  # V3-Small's first block has no expansion (and is kept)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_avx2_pairing_brings_the_codes_as_near_as_vnni() -> None:
    # Rows of unequal size, as trained weights have: in the given order AVX2's pair limit moves codes of pairs of
    # two large rows; _pairing puts large rows beside small ones, and the codes' error falls to VNNI's (no limit)
    # (measured: 1-3 % above VNNI's before, within 0.1 % after).
    torch.manual_seed(0)
    for k, n in ((16, 32), (96, 24), (960, 160)):
        w = torch.randn(k, n) * torch.randn(k, 1).exp()
        order = fused._pairing(w, fused.AVX2_GRID)
        assert sorted(order.tolist()) == list(range(k))

        def error(weight: torch.Tensor, grid: fused.Int8Grid) -> float:
            q, scale = fused.quantize_weights(weight, grid)
            return float(((q.float() * scale - weight) ** 2).sum())

        paired = error(w[order], fused.AVX2_GRID)
        assert paired <= 1.001 * error(w, fused.VNNI_GRID) and error(w, fused.AVX2_GRID) > 1.02 * paired, (k, n)


def test_avx2_weights_keep_every_pair_of_products_within_int16() -> None:
    # vpmaddubsw sums two u8 · s8 products in int16, saturating: for codes up to 255, two same-signed weights of a pair
    # of rows (k, k + 1, k even) may sum to 128 codes at most. Within that limit each channel's codes lie closer to
    # its weights than on the ±63 grid the AVX2 level used before (every pair safe), though not as close as VNNI's.
    torch.manual_seed(0)
    for k, n in [(27, 32), (16, 96), (144, 24), (960, 160)]:
        weight = torch.randn(k, n) * torch.rand(1, n)
        errors = []
        for grid in (fused.AVX2_GRID, fused.Int8Grid(255, 63), fused.VNNI_GRID):
            codes, scale = fused.quantize_weights(weight, grid)
            assert codes.abs().max() <= grid.weight_max
            errors.append(float(((codes * scale - weight) ** 2).sum()))
            if grid is fused.AVX2_GRID:
                pairs = torch.nn.functional.pad(codes.int(), (0, 0, 0, k % 2)).reshape(-1, 2, n)
                same_sign = pairs[:, 0] * pairs[:, 1] > 0
                assert int((pairs.abs().sum(1) * same_sign).max()) == 128  # at the limit, never past it
        assert errors[2] < errors[0] < 0.5 * errors[1], (k, n)


@pytest.mark.parametrize("isa", SUPPORTED[1:])
@pytest.mark.parametrize("limit", [128, 129])
def test_avx2_int8_sums_equal_vnni_sums_on_the_same_weights(
    isa: str, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    # Inputs twenty times the calibration's spread drive many activation codes to 255 (past the calibrated top), so
    # pairs of weights at AVX2's pair limit meet pairs of codes at 255. On the same codes and weights (one grid forced
    # on both levels) VNNI's int32 sums and AVX2's int16 pair sums then agree exactly, and a limit of 129 (255 · 129 >
    # 32767) makes vpmaddubsw saturate: the outputs differ.
    torch.manual_seed(0)
    model = trained_like("mobilenet_v2", width=0.5, num_classes=10)
    calibration = list(torch.randn(8, 3, 64, 64).split(4))
    x = 20 * torch.randn(4, 3, 64, 64)
    grid = fused.Int8Grid(255, 127, pair_sum=limit)
    assert limit != 128 or grid == fused.AVX2_GRID
    monkeypatch.setattr(fused, "int8_grid", lambda _: grid)
    avx2 = fused.FusedEngine(model, threads=2, calibration=calibration, isa="avx2", half_depthwise=False)
    wide = fused.FusedEngine(model, threads=2, calibration=calibration, isa=isa, half_depthwise=False)
    assert torch.equal(avx2(x), wide(x)) == (limit == 128)


def test_memory_reports_the_engines_activation_bytes() -> None:
    from mobilenets.analysis.memory import engine_activation_bytes

    model = trained_like("mobilenet_v2", width=0.35)
    got = engine_activation_bytes(model, 96)["activation_bytes"]
    assert got == fused.FusedEngine(model, threads=1).activation_bytes(96, 96) > 0
    assert engine_activation_bytes(trained_like("mobilenet_v2", padding="same"), 96) == {}  # TF padding: not run

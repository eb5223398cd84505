"""The fused engine as a detection / segmentation backbone (``mobilenets.deploy.fused_backbone``) against the
eager ``forward_taps`` on the same weights.

Tolerance: fp32, max abs difference of every tapped map ≤ 1e-4 (as ``tests/test_fused.py``: float rounding in
another summation order; the BatchNorm is randomised so that folding matters and the maps are O(1)). int8 and bf16
against their PyTorch twins with ``tests/test_fused.py``'s bounds on norms. Through the commands, ``eval --engine
fused`` gives the eager metrics within 1e-3 (mAP, mIoU: an fp32 score that differs by 1e-6 may reorder two
detections of equal rank). Every ISA level this CPU has runs, the narrower ones forced; the rest are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobilenets import save_weights
from mobilenets.cli import main
from mobilenets.data.scenes import SceneConfig, write_split
from mobilenets.deploy import fused
from mobilenets.deploy.fused_backbone import FusedBackbone, engine_model, tapped_blocks
from mobilenets.errors import ConfigError
from model_util import bf16_isas, engine_isa, require_engine, trained_like

ATOL = 1e-4

require_engine()


def _assert_taps_equal(backbone: torch.nn.Module, taps: list[str], shapes: list[tuple[int, ...]], threads: int,
                       isa: str | None = None, multiple: int = 1) -> None:  # fmt: skip
    engine = FusedBackbone(backbone, taps, threads=threads, isa=isa)
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = backbone.forward_taps(x, taps, input_multiple=multiple)
        got = engine(x, multiple)
        assert list(got) == list(want)
        for name in taps:
            assert got[name].shape == want[name].shape, (name, shape)
            assert (got[name] - want[name]).abs().max() <= ATOL, (name, shape)


@pytest.mark.parametrize("isa", list(fused.ISAS))
def test_ssdlite_v2_taps_equal_eager_on_every_isa(isa: str) -> None:
    # SSDLite's V2 taps (the layer-15 expansion, V2 §6.2, and the last 1×1 conv) at 320, and at odd sides with
    # input_multiple=1 (every stride-2 layer rounds up); batches below, at and above the thread count.
    detector = trained_like("ssdlite_mobilenet_v2", width=0.5, num_classes=3)
    assert detector.taps == ("blocks.13.expansion", "head")
    for threads in (1, 2):
        shapes = [(1, 3, 320, 320), (threads + 1, 3, 321, 193)]
        _assert_taps_equal(detector.backbone, list(detector.taps), shapes, threads, engine_isa(isa))


@pytest.mark.parametrize(
    ("case", "overrides", "taps"),
    [
        ("ssdlite_mobilenet_v1", {}, None),  # V1: Conv2d_11 and Conv2d_13 pointwise
        ("ssdlite_mobilenet_v3_large", {}, None),  # V3 §6.2: C4 the 13th block's expansion (squeeze-excite, 5×5)
        ("deeplabv3_mobilenet_v2", {"output_stride": 32}, None),  # the last block
        ("deeplabv3_mobilenet_v2", {}, None),  # output stride 16: the last stage dilated (V2 §6.3)
        ("lraspp_mobilenet_v2", {"output_stride": 32}, None),  # a stride-8 block and the last 1×1 conv
        ("lraspp_mobilenet_v3_large", {}, None),  # V3 §6.3 at output stride 16: SE, h-swish, 5×5, dilation 2
        ("mobilenet_v3_large_minimal", {}, ["blocks.5", "head", "blocks.12.expansion"]),  # no SE, 3×3, ReLU
        ("mobilenet_v2", {}, ["stem", "stage2", "blocks.3", "blocks.0.expansion", "blocks.1.expansion"]),
    ],
)
def test_dense_backbones_taps_equal_eager(case: str, overrides: dict, taps: list[str] | None) -> None:
    if taps is None:
        model = trained_like(case, width=0.5, num_classes=3, **overrides)
        backbone = model.backbone
        taps = list(getattr(model, "taps", None) or [t.name for t in _model_taps(model)])
    else:
        backbone = trained_like(case, width=0.5, num_classes=0)
    # One thread alone (the wide layers streamed as one chain), and a batch above two threads (one image each).
    _assert_taps_equal(backbone, taps, [(1, 3, 129, 97)], threads=1)
    _assert_taps_equal(backbone, taps, [(3, 3, 64, 160)], threads=2)


def _model_taps(model: torch.nn.Module) -> list:
    return [model.tap] if hasattr(model, "tap") else [model.low_tap, model.high_tap]


@pytest.mark.parametrize("isa", list(fused.ISAS))
def test_int8_taps_equal_their_fake_quantized_backbone(isa: str) -> None:
    # As tests/test_fused.py: the engine's int8 error is its fake-quantised twin's, bounded on norms per map
    # (‖engine − twin‖ ≤ 0.5 ‖twin − fp32‖ on both 8-bit grids; a wrong scale or zero point gives ~1 or more).
    torch.manual_seed(0)
    detector = trained_like("ssdlite_mobilenet_v2", width=0.5, num_classes=3)
    backbone, taps = detector.backbone, list(detector.taps)
    calibration = list(torch.randn(16, 3, 64, 64).split(8))
    # The fp16 depthwise (amx level, where the CPU has AVX512-FP16) is held to the exact sums' engine as in
    # tests/test_fused.py (≤ 0.75 of the int8 error).
    engine = FusedBackbone(
        backbone, taps, threads=2, calibration=calibration, isa=engine_isa(isa), half_depthwise=False
    )
    assert engine.precision == "int8" and engine.isa == isa
    half = None
    if isa == "amx" and fused.HALF_FLAG in fused.cpu_flags():
        half = FusedBackbone(backbone, taps, threads=2, calibration=calibration, isa=isa)
        assert half.half_depthwise
    # At avx2 the engine reorders the inner channels of every block but the tapped expansions': so does the twin.
    twin = fused.fake_quantized(backbone, calibration, fused.int8_grid(isa), keep_order=tapped_blocks(backbone, taps))
    for seed, (h, w) in enumerate([(96, 64), (65, 97)]):
        torch.manual_seed(seed)
        x = torch.randn(3, 3, h, w)
        with torch.no_grad():
            want, fp32 = twin.forward_taps(x, taps, input_multiple=1), backbone.forward_taps(x, taps, input_multiple=1)
        got = engine(x, 1)
        halved = half(x, 1) if half else got
        for name in taps:
            assert (got[name] - want[name]).norm() <= 0.5 * (want[name] - fp32[name]).norm(), name
            assert (halved[name] - got[name]).norm() <= 0.75 * (want[name] - fp32[name]).norm(), name


def test_bf16_taps_equal_their_rounded_backbone() -> None:
    detector = trained_like("ssdlite_mobilenet_v2", width=0.5, num_classes=3)
    backbone, taps = detector.backbone, list(detector.taps)
    twin = fused.bf16_rounded(backbone)
    x = torch.randn(3, 3, 128, 96)
    with torch.no_grad():
        want, fp32 = twin.forward_taps(x, taps), backbone.forward_taps(x, taps)
    for isa in bf16_isas():
        got = FusedBackbone(backbone, taps, threads=2, precision="bf16", isa=isa)(x)
        for name in taps:
            assert (got[name] - want[name]).norm() <= 0.3 * (want[name] - fp32[name]).norm(), (isa, name)


def test_what_the_backbone_engine_refuses() -> None:
    v2 = trained_like("mobilenet_v2", width=0.35, num_classes=0)
    with pytest.raises(ConfigError, match=r"cannot tap blocks\.2\.expansion: its block adds a residual"):
        FusedBackbone(v2, ["blocks.2.expansion"])  # 24 → 24, stride 1: the shortcut reads the block's input
    with pytest.raises(ConfigError, match="unknown feature tap"):
        FusedBackbone(v2, ["blocks.99"])
    engine = FusedBackbone(v2, ["head"])
    with pytest.raises(ConfigError, match="built for the taps"):
        engine.forward_taps(torch.randn(1, 3, 64, 64), ["blocks.3"])
    # A model the engine cannot run (TensorFlow's 'same' padding): one line naming why, before any image.
    with pytest.raises(ConfigError, match="'same' padding"):
        engine_model(trained_like("deeplabv3_mobilenet_v2", width=0.35, num_classes=3, padding="same"))


def test_engine_models_equal_the_eager_models() -> None:
    # The heads in PyTorch on the engine's maps: a detector's decoded detections and a segmenter's logits.
    detector = trained_like("ssdlite_mobilenet_v2", width=0.5, num_classes=3)
    x = torch.randn(2, 3, 128, 128)
    ours, theirs = detector.predict(x), engine_model(detector, threads=2).predict(x)
    for a, b in zip(ours, theirs, strict=True):
        top = min(10, len(a["scores"]))  # far down the list near-equal scores may swap
        assert torch.equal(a["labels"][:top], b["labels"][:top])
        assert torch.allclose(a["boxes"][:top], b["boxes"][:top], atol=1e-3)
    segmenter = trained_like("lraspp_mobilenet_v2", width=0.35, num_classes=3, output_stride=32)
    x = torch.randn(2, 3, 97, 65)
    with torch.no_grad():
        assert (engine_model(segmenter, threads=1)(x) - segmenter(x)).abs().max() <= ATOL
    assert type(segmenter.backbone).__name__ == "MobileNet"  # the model itself is unchanged


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    for split, count in (("train", 4), ("val", 3)):
        write_split(root, split, count, SceneConfig(size=97, seed=3))
    return root


def _eval(checkpoint: Path, data: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0", "--threads", "2",
            "--device", "cpu", "--batch-size", "2", "--no-progress", "--json", "--out", str(checkpoint.parent),
            *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_and_predict_detect_through_the_engine(scenes: Path, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "det.safetensors"
    save_weights(trained_like("ssdlite_mobilenet_v2", width=0.35, num_classes=10), checkpoint)
    eager = _eval(checkpoint, scenes, capsys)
    engine = _eval(checkpoint, scenes, capsys, "--engine", "fused")
    assert engine["engine"] == "fused" and engine["images"] == eager["images"] == 3
    for metric in ("mAP", "AP50", "AP75"):
        assert engine[metric] == pytest.approx(eager[metric], abs=1e-3)
    image = next((scenes / "val" / "images").iterdir())
    found = []
    for name in ("pytorch", "fused"):
        out = tmp_path / name
        args = ["predict", "--checkpoint", str(checkpoint), str(image), "--engine", name, "--out", str(out),
                "--score-threshold", "0", "--json"]  # fmt: skip
        assert main(args) == 0
        (result,) = json.loads(capsys.readouterr().out)
        assert Path(result["png"]).is_file()
        found.append(result["detections"][:5])
    assert [d["label"] for d in found[0]] == [d["label"] for d in found[1]]
    assert [d["score"] for d in found[0]] == pytest.approx([d["score"] for d in found[1]], abs=1e-3)
    # The text output ends with what ran: the backbone's engine, built at the first image.
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--engine", "fused", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"engine: fused ({fused.resolve_isa(None)} level, fp32)"


def test_eval_segment_through_the_engine(scenes: Path, tmp_path: Path, capsys) -> None:
    # 97-px scenes at their own size: maps of 49, 25, 13, 7 and 4 (input_multiple=1).
    checkpoint = tmp_path / "seg.safetensors"
    model = trained_like("deeplabv3_mobilenet_v2", width=0.35, num_classes=11, output_stride=32)
    save_weights(model, checkpoint)
    eager = _eval(checkpoint, scenes, capsys)
    engine = _eval(checkpoint, scenes, capsys, "--engine", "fused")
    assert engine["engine"] == "fused"
    assert engine["miou"] == pytest.approx(eager["miou"], abs=1e-3)
    assert engine["pixel_acc"] == pytest.approx(eager["pixel_acc"], abs=1e-3)
    # int8, calibrated on the training scenes (97 px: not a multiple of 32, calibrated through forward_features);
    # pixel accuracy moved by 0.008 here (0.146 → 0.154, random weights).
    int8 = _eval(checkpoint, scenes, capsys, "--engine", "fused-int8", "--calibration", str(scenes),
                 "--calibration-count", "4")  # fmt: skip
    assert int8["engine"] == "fused-int8" and abs(int8["pixel_acc"] - eager["pixel_acc"]) <= 0.05
    assert f"{fused.resolve_isa(None)} level, int8" in int8["engine_runs"] and "engine_runs" not in eager
    if fused.bf16_isas():  # AVX512-BF16 or AMX
        bf16 = _eval(checkpoint, scenes, capsys, "--engine", "fused-bf16")
        assert bf16["engine"] == "fused-bf16" and abs(bf16["pixel_acc"] - eager["pixel_acc"]) <= 0.05
    same = tmp_path / "same.safetensors"
    save_weights(trained_like("deeplabv3_mobilenet_v2", width=0.35, num_classes=11, padding="same"), same)
    assert main(["eval", "--checkpoint", str(same), "--data", str(scenes), "--engine", "fused"]) == 2
    err = capsys.readouterr().err
    assert "'same' padding" in err and len(err.strip().splitlines()) == 1


def test_bench_rows_for_an_ssdlite_backbone() -> None:
    # `bench infer ssdlite_mobilenet_v2` times the backbone to its taps: the fused rows return the same maps.
    from mobilenets.bench.infer import fused_candidates
    from mobilenets.bench.models import BackboneTaps

    model = BackboneTaps(trained_like("ssdlite_mobilenet_v2", width=0.35, num_classes=3))
    calibration = list(torch.randn(8, 3, 96, 96).split(4))
    notes: list[str] = []
    no_bf16 = {"amx_bf16": False, "avx512_bf16": False}
    rows = {c.precision: c for c in fused_candidates(model, 2, 96, calibration, no_bf16, notes)}
    assert set(rows) == {"fp32", "int8"} and "neither AMX-BF16 nor AVX512-BF16" in notes[0]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = model(x)
    for precision, tolerance in (("fp32", ATOL), ("int8", 0.1)):  # int8: measured 0.03 on maps up to 3.7
        got = rows[precision].predict(x)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) <= tolerance, precision
    assert rows["fp32"].activation_bytes > 0 and "isa=" in rows["fp32"].detail
    # The int8 row names what it runs in fp32 (this width's thin expansions); the fp32 row has none to name.
    assert "thin expansions in fp32" in rows["int8"].detail and "thin" not in rows["fp32"].detail

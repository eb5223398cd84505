"""ONNX export (dynamic batch) checked in ONNX Runtime, int8 quantization, and `mobilenets export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobilenets import create_model
from mobilenets.checkpoint import save_weights
from mobilenets.cli import main
from mobilenets.deploy.export import ONNX_ATOL, export_onnx, ort_session, quantize_onnx, run_onnx
from model_util import trained_like

pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_onnx_matches_pytorch_with_dynamic_batch(name: str, tmp_path: Path) -> None:
    model = trained_like(name, width=0.5, num_classes=10)
    path = export_onnx(model, tmp_path / "m.onnx", 64)
    session = ort_session(path, threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert (run_onnx(session, x) - model(x)).abs().max() <= ONNX_ATOL


def test_int8_is_quantized_and_close(tmp_path: Path) -> None:
    import onnx

    model = trained_like("mobilenet_v2", width=0.35, num_classes=10)
    fp32 = export_onnx(model, tmp_path / "m.onnx", 32)
    calib = [torch.randn(8, 3, 32, 32) for _ in range(4)]
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calib)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    x = calib[0]
    with torch.no_grad():
        ref = model(x)
    out = run_onnx(ort_session(int8, threads=1), x)
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.9


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = trained_like("mobilenet_v2", width=0.35, num_classes=10)
    ckpt = tmp_path / "w.safetensors"
    save_weights(model, ckpt)
    out = tmp_path / "m.onnx"
    code = main(["export", "--checkpoint", str(ckpt), "--resolution", "32", "--int8", "--calibration", "embedded",
                 "--calibration-count", "16", "--eval", "embedded", str(out), "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fp32_max_abs_diff"] <= ONNX_ATOL
    assert out.is_file() and (tmp_path / "m.fp32.onnx").is_file()
    assert summary["calibration"]["images"] == 16
    top1 = summary["top1"]  # an untrained model: the paths must agree with each other, not be accurate
    assert top1["onnx_fp32"] == top1["pytorch"]
    if "fused_engine" not in summary:  # skipped only where the engine cannot be built (said in the summary)
        assert top1["fused_fp32"] == top1["pytorch"] and 0.0 <= top1["fused_int8"] <= 1.0


def test_export_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "w.safetensors"
    save_weights(create_model("mobilenet_v2", width=0.35), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--int8", str(tmp_path / "m.onnx")]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), str(tmp_path / "m.onnx")]) == 2


@pytest.mark.parametrize(
    ("name", "overrides", "resolution"),
    [
        ("deeplabv3_mobilenet_v2", {"width": 0.35, "num_classes": 5}, 65),  # any size: upsampled to the input
        ("lraspp_mobilenet_v3_small", {"width": 0.5, "num_classes": 5}, 64),
        ("lraspp_mobilenet_v2", {"width": 0.35, "num_classes": 5, "naming_pool": 3}, 96),  # the naming branch
        ("ssdlite_mobilenet_v3_small", {"width": 0.5, "num_classes": 3}, 128),
    ],
)
def test_dense_models_onnx_match_pytorch(name: str, overrides: dict, resolution: int, tmp_path: Path) -> None:
    from mobilenets.deploy.export import export_graph, run_onnx_all

    model = trained_like(name, **overrides)
    graph, outputs = export_graph(model)
    path = export_onnx(model, tmp_path / "m.onnx", resolution)
    session = ort_session(path, threads=1)
    assert [o.name for o in session.get_outputs()] == list(outputs)
    for batch in (1, 3):
        x = torch.randn(batch, 3, resolution, resolution)
        with torch.no_grad():
            ref = graph(x)
        refs = list(ref) if isinstance(ref, tuple) else [ref]
        for out, r in zip(run_onnx_all(session, x), refs, strict=True):
            assert out.shape == r.shape and (out - r).abs().max() <= ONNX_ATOL
    if model.task == "detect":  # NMS outside the graph, on ONNX Runtime's outputs: the detections of predict()
        x = torch.randn(2, 3, resolution, resolution)
        ours = model.predict(x)
        theirs = model.select(*run_onnx_all(session, x), (resolution, resolution))
        for a, b in zip(ours, theirs, strict=True):
            top = min(10, len(a["scores"]))  # the best ones; far down the list near-equal scores may swap
            assert torch.equal(a["labels"][:top], b["labels"][:top])
            assert torch.allclose(a["boxes"][:top], b["boxes"][:top], atol=1e-2)


def test_export_command_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "det.safetensors"
    save_weights(trained_like("ssdlite_mobilenet_v3_small", width=0.5, num_classes=3), ckpt)
    out = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "128", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "detect" and summary["outputs"] == ["boxes", "scores"]
    assert summary["fp32_max_abs_diff"] <= ONNX_ATOL and out.is_file()
    assert main(["export", "--checkpoint", str(ckpt), "--int8", "--calibration", "embedded", str(out)]) == 2
    assert "classifiers" in capsys.readouterr().err

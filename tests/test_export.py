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
    # Calibration data of another class count: a clear error, not a quantised model of the wrong data.
    assert main(["export", "--checkpoint", str(ckpt), "--int8", "--calibration", "embedded", str(out)]) == 2
    assert "trained for 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "overrides", "resolution"),
    [
        ("lraspp_mobilenet_v2", {"width": 0.35, "num_classes": 5, "naming_pool": 3}, 64),
        ("ssdlite_mobilenet_v3_small", {"width": 0.5, "num_classes": 3}, 128),
    ],
)
def test_dense_int8_quantises_the_modules_and_keeps_the_glue_fp32(
    name: str, overrides: dict, resolution: int, tmp_path: Path
) -> None:
    import onnx

    from mobilenets.deploy.export import export_graph, glue_nodes, run_onnx_all

    model = trained_like(name, **overrides)
    fp32 = export_onnx(model, tmp_path / "m.onnx", resolution)
    calib = [torch.randn(4, 3, resolution, resolution) for _ in range(3)]
    glue = set(glue_nodes(fp32))
    assert any(n.startswith(("/Exp", "/Softmax", "/Resize")) for n in glue)  # decoding / upsampling at top level

    def glue_quantised(path: Path) -> int:
        """Tensors passed from one glue node to another through a QuantizeLinear → DequantizeLinear pair."""
        nodes = onnx.load(str(path)).graph.node
        producer = {out: n for n in nodes for out in n.output}
        consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        return sum(
            1
            for q in nodes
            if q.op_type == "QuantizeLinear" and q.input[0] in producer and producer[q.input[0]].name in glue
            for dq in consumers[q.output[0]]
            for c in consumers.get(dq.output[0], [])
            if c.name in glue
        )

    assert glue_quantised(quantize_onnx(fp32, tmp_path / "all.int8.onnx", calib)) > 0  # what the flag prevents
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calib, glue_fp32=True)
    assert glue_quantised(int8) == 0
    nodes = onnx.load(str(int8)).graph.node
    producer = {out: n for n in nodes for out in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) > 10 and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    x = torch.randn(2, 3, resolution, resolution)
    graph, _ = export_graph(model)
    with torch.no_grad():
        ref = graph(x)
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    for out, r in zip(run_onnx_all(ort_session(int8, threads=1), x), refs, strict=True):
        assert out.shape == r.shape
        assert torch.corrcoef(torch.stack([out.flatten(), r.flatten()]))[0, 1] > 0.9


def test_export_command_segmenter_int8_with_miou(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main([
        "train", "--task", "segment", "--model", "lraspp_mobilenet_v3_small", "--width", "0.35", "--data", "embedded",
        "--scenes", "4", "2", "--scene-size", "48", "--resolution", "32", "--epochs", "1", "--batch-size", "2",
        "--out", str(run), "--workers", "0", "--threads", "1", "--no-progress",
    ]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(run), "--int8", "--calibration", "embedded", "--eval", "embedded",
                 "--latency-runs", "5", "--threads", "1", str(out), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "segment" and summary["fp32_max_abs_diff"] <= ONNX_ATOL
    assert summary["calibration"]["images"] == 4  # the 4 training scenes the run was trained on
    metrics = summary["metrics"]
    assert set(metrics) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert metrics["onnx_fp32"]["mIoU"] == pytest.approx(metrics["pytorch"]["mIoU"], abs=1e-3)
    assert 0.0 <= metrics["onnx_int8"]["mIoU"] <= 1.0
    latency = summary["latency"]
    assert set(latency["batch1_ms_median"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert min(latency["batch1_ms_median"].values()) > 0 and latency["int8_speedup_over_fp32"] > 0
    assert latency["precision"] == {"onnx_fp32": "fp32", "onnx_int8": "int8"}
    # Exported with a dynamic height and width: the 48-px validation scenes ran on a graph traced at 32 px.
    session = ort_session(out.with_suffix(".fp32.onnx"), threads=1)
    assert run_onnx(session, torch.randn(1, 3, 40, 56)).shape == (1, 11, 40, 56)


def test_export_command_detector_int8_with_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from mobilenets.data.scenes import SceneConfig, write_split

    scenes = tmp_path / "scenes"
    objects = (np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (10, 28, 1)), np.arange(10, dtype=np.uint8))
    for split, n in (("train", 6), ("val", 3)):
        write_split(scenes, split, n, SceneConfig(size=64, seed=2), objects=objects)
    ckpt = tmp_path / "det.safetensors"
    save_weights(trained_like("ssdlite_mobilenet_v3_small", width=0.5, num_classes=10), ckpt)
    out = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "64", "--int8", "--calibration", str(scenes),
                 "--eval", str(scenes), str(out), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["calibration"]["images"] == 6
    metrics = summary["metrics"]
    assert set(metrics["onnx_int8"]) == {"mAP", "AP50", "AP75"}
    assert metrics["onnx_fp32"] == pytest.approx(metrics["pytorch"], abs=1e-3)

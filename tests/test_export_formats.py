"""TFLite (LiteRT) and OpenVINO exports of every task checked in their runtimes against PyTorch; the metadata
every artefact carries; in-graph NMS against predict; `predict --model`; where an export may and may not write.

The TFLite tests skip without ``mobilenets[tflite]`` (litert-torch, ai-edge-litert), the OpenVINO ones without
``mobilenets[openvino]``: each says which extra is missing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets.checkpoint import save_weights
from mobilenets.cli import main
from mobilenets.deploy.artefact import load_artefact, read_artefact_metadata
from mobilenets.deploy.export import ONNX_ATOL, export_graph, export_onnx
from model_util import trained_like

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


HAVE_TFLITE = _have("litert_torch") and _have("ai_edge_litert")
needs_tflite = pytest.mark.skipif(not HAVE_TFLITE, reason='needs the tflite extra: pip install "mobilenets[tflite]"')
needs_openvino = pytest.mark.skipif(
    not _have("openvino"), reason='needs the openvino extra: pip install "mobilenets[openvino]"'
)

# One small model per task (random weights, BatchNorm statistics set), and the size it is exported at.
TASKS = {
    "classify": ("mobilenet_v2", {"width": 0.35, "num_classes": 10}, 32),
    "segment": ("lraspp_mobilenet_v3_small", {"width": 0.35, "num_classes": 5}, 32),
    "detect": ("ssdlite_mobilenet_v3_small", {"width": 0.5, "num_classes": 3}, 64),
}
META = {"task": "x", "classes": ["a"], "input": {"size": None}, "outputs": ["logits"], "config": {}}


def _reference(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    graph, _ = export_graph(model)
    with torch.no_grad():
        out = graph(x)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _metadata(task: str, model: torch.nn.Module, resolution: int, fmt: str, dynamic: bool = False) -> dict:
    from mobilenets.checkpoint import model_config
    from mobilenets.deploy.formats import build_metadata

    return build_metadata(
        task=task, model_name=model.registry_name, model_config=model_config(model),
        classes=[f"c{i}" for i in range(model.config.num_classes)], fmt=fmt, precision="fp32",
        resolution=resolution, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channel_order="rgb",
        resize={"rule": "test"}, outputs=list(export_graph(model)[1]), layout="NHWC" if fmt == "tflite" else "NCHW",
        dynamic_size=dynamic,
    )  # fmt: skip


@needs_tflite
@pytest.mark.parametrize("task", list(TASKS))
def test_tflite_matches_pytorch_in_litert(task: str, tmp_path: Path) -> None:
    from mobilenets.deploy.tflite import TFLITE_ATOL, export_tflite

    name, overrides, resolution = TASKS[task]
    model = trained_like(name, **overrides)
    meta = _metadata(task, model, resolution, "tflite")
    path = export_tflite(model, tmp_path / "m.tflite", resolution, meta)
    assert read_artefact_metadata(path) == json.loads(json.dumps(meta))  # carried in the flatbuffer, intact
    artefact = load_artefact(path, threads=1)
    assert artefact.format == "tflite" and artefact.precision == "fp32"
    for batch in (1, 3):  # a file converted for one image; the runner loops over a batch
        x = torch.randn(batch, 3, resolution, resolution)
        for out, ref in zip(artefact(x), _reference(model, x), strict=True):
            assert out.shape == ref.shape and np.abs(out - ref).max() <= TFLITE_ATOL
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temporary file left behind


@pytest.mark.slow  # PT2E calibration + two conversions: ~2.5 min on the loaded 2-core test machine
@needs_tflite
def test_tflite_int8_is_full_integer_and_close(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from mobilenets.deploy.tflite import export_tflite

    name, overrides, resolution = TASKS["classify"]
    model = trained_like(name, **overrides)
    calib = [torch.randn(8, 3, resolution, resolution) for _ in range(2)]
    meta = _metadata("classify", model, resolution, "tflite")
    fp32 = export_tflite(model, tmp_path / "m.fp32.tflite", resolution, meta)
    int8 = export_tflite(model, tmp_path / "m.tflite", resolution, {**META, "precision": "int8"}, calibration=calib)
    interpreter = Interpreter(model_path=str(int8))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # full-integer: even the input is int8
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    convs = [t for t in interpreter.get_tensor_details() if "conv" in t["name"].lower() and t["dtype"] == np.int8]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops and convs
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    out = load_artefact(int8, threads=1)(calib[0])[0]
    ref = _reference(model, calib[0])[0]
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.95


@needs_openvino
@pytest.mark.isolated
@pytest.mark.parametrize("task", list(TASKS))
def test_openvino_matches_pytorch_at_f32(task: str, tmp_path: Path) -> None:
    from mobilenets.deploy.openvino import OPENVINO_ATOL, export_openvino

    name, overrides, resolution = TASKS[task]
    model = trained_like(name, **overrides)
    meta = _metadata(task, model, resolution, "openvino", dynamic=task == "segment")
    onnx = export_onnx(model, tmp_path / "m.onnx", resolution)
    xml = export_openvino(onnx, tmp_path / "ov" / "model.xml", meta)
    assert xml.with_suffix(".bin").is_file() and read_artefact_metadata(tmp_path / "ov") == json.loads(json.dumps(meta))
    artefact = load_artefact(tmp_path / "ov", threads=1)
    assert artefact.precision == "fp32"  # the f32 hint took: not OpenVINO's bf16 default on AMX CPUs
    sizes = [(resolution, resolution), (40, 56)] if task == "segment" else [(resolution, resolution)]
    for h, w in sizes:  # a segmenter takes any size, as in PyTorch
        x = torch.randn(2, 3, h, w)
        for out, ref in zip(artefact(x), _reference(model, x), strict=True):
            assert out.shape == ref.shape and np.abs(out - ref).max() <= OPENVINO_ATOL


def _detection_rows(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[tuple]:
    return sorted(zip(np.round(scores, 4).tolist(), labels.tolist(), np.round(boxes, 1).tolist(), strict=True))


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=[needs_openvino, pytest.mark.isolated])])
def test_in_graph_nms_gives_the_detections_of_predict(fmt: str, tmp_path: Path) -> None:
    name, overrides, resolution = TASKS["detect"]
    model = trained_like(name, **overrides)
    path = export_onnx(model, tmp_path / "m.onnx", resolution, metadata=META, nms_in_graph=True)
    if fmt == "openvino":
        from mobilenets.deploy.openvino import export_openvino

        path = export_openvino(path, tmp_path / "ov" / "model.xml", META)
    artefact = load_artefact(path, threads=1)
    found = 0
    for seed in range(3):
        x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
        want = model.predict(x)[0]
        boxes, scores, labels = artefact(x)
        assert len(scores) <= model.config.max_detections and (np.diff(scores) <= 1e-6).all()  # best first
        # Same set of detections (near-equal scores may come in either order).
        assert _detection_rows(boxes * resolution, scores, labels) == _detection_rows(
            want["boxes"].numpy(), want["scores"].numpy(), want["labels"].numpy()
        )
        found += len(scores)
    assert found > 0


def _checkpoint(tmp_path: Path, task: str) -> Path:
    name, overrides, _ = TASKS[task]
    ckpt = tmp_path / f"{task}.safetensors"
    save_weights(trained_like(name, **overrides), ckpt)
    return ckpt


def _image(path: Path, size: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


FORMAT_CASES = [
    ("onnx", "m.onnx"),
    pytest.param("tflite", "m.tflite", marks=needs_tflite),
    pytest.param("openvino", "ov", marks=[needs_openvino, pytest.mark.isolated]),
]


@pytest.mark.parametrize(("fmt", "out_name"), FORMAT_CASES)
@pytest.mark.parametrize("task", list(TASKS))
def test_predict_model_gives_what_predict_checkpoint_gives(
    task: str, fmt: str, out_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path, task)
    resolution = 224  # a plain weight file's: exported and predicted at the checkpoint's own resolution
    out = tmp_path / out_name
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fp32_max_abs_diff"] <= summary["fp32_tolerance"]
    meta = read_artefact_metadata(out)
    assert meta["task"] == task and meta["format"] == fmt and len(meta["classes"]) == TASKS[task][1]["num_classes"]
    assert meta["input"]["dynamic_size"] == (task == "segment" and fmt != "tflite")
    images = [_image(tmp_path / f"img{i}.png", resolution, seed=i) for i in range(2)]
    runs = {}
    for flag, source in (("--checkpoint", ckpt), ("--model", out)):
        dest = tmp_path / flag.strip("-")
        extra = [] if task == "classify" else ["--out", str(dest)]
        assert main(["predict", flag, str(source), *map(str, images), *extra, "--json"]) == 0
        runs[flag] = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(runs["--checkpoint"], runs["--model"], strict=True):
        if task == "classify":
            assert [t["class"] for t in ours["top"]] == [t["class"] for t in theirs["top"]]
            assert [t["prob"] for t in ours["top"]] == pytest.approx([t["prob"] for t in theirs["top"]], abs=1e-4)
        elif task == "detect":
            a, b = ours["detections"], theirs["detections"]
            assert [(d["class"], d["score"]) for d in a] == pytest.approx([(d["class"], d["score"]) for d in b])
            assert np.allclose([d["box"] for d in a], [d["box"] for d in b], atol=0.2)
        else:
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(ours["mask"])), np.asarray(Image.open(theirs["mask"])))


@pytest.mark.slow  # two conversions, PT2E calibration, top-1 of PyTorch, both files and the fused engine
@needs_tflite
def test_export_command_tflite_int8_with_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path, "classify")
    out = tmp_path / "m.tflite"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "tflite", "--resolution", "32", "--int8",
                 "--calibration", "embedded", "--calibration-count", "16", "--eval", "embedded",
                 "--latency-runs", "5", "--threads", "1", str(out), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["int8"] == str(out) and summary["fp32"] == str(tmp_path / "m.fp32.tflite")
    assert summary["int8_output_correlation"] >= 0.95
    top1 = summary["top1"]  # an untrained model: the paths must agree with each other, not be accurate
    assert top1["tflite_fp32"] == top1["pytorch"] and 0.0 <= top1["tflite_int8"] <= 1.0
    assert summary["latency"]["precision"] == {"tflite_fp32": "fp32", "tflite_int8": "int8"}
    assert read_artefact_metadata(out)["precision"] == "int8"


# -- where an export may write ------------------------------------------------------------------------------
def test_export_refuses_outputs_that_would_lose_something(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path, "classify")
    before = ckpt.read_bytes()
    base = ["export", "--checkpoint", str(ckpt), "--resolution", "32"]

    def refused(out: Path, *extra: str, fmt: str = "onnx") -> str:
        assert main([*base, "--format", fmt, *extra, str(out)]) == 2
        return capsys.readouterr().err

    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)
    assert "is the input" in refused(link)  # the checkpoint through a link named like an output
    (tmp_path / "dir.onnx").mkdir()
    assert "is a folder" in refused(tmp_path / "dir.onnx")
    assert "is a file, not a folder" in refused(ckpt / "m.onnx")
    assert "writes a .onnx file" in refused(tmp_path / "m.tflite")
    # With --int8 the fp32 model goes beside OUT: a file there that no export wrote is not replaced.
    (tmp_path / "m.fp32.onnx").write_text("a user's notes")
    assert "did not write" in refused(tmp_path / "m.onnx", "--int8", "--calibration", "embedded")
    assert (tmp_path / "m.fp32.onnx").read_text() == "a user's notes"
    (tmp_path / "notes.txt").write_text("x")
    assert "is a file" in refused(tmp_path / "notes.txt", fmt="openvino") if _have("openvino") else True
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert "not writable" in refused(locked / "m.onnx")
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["classify.safetensors", "link.onnx", "dir.onnx", "m.fp32.onnx", "notes.txt"]
        + (["locked"] if os.geteuid() != 0 else [])
    )  # nothing else written, no temporary file left


def test_export_replaces_its_own_files_atomically_and_a_failed_check_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobilenets.deploy.export as onnx_export

    ckpt = _checkpoint(tmp_path, "classify")
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--resolution", "32", str(out)]
    assert main(args) == 0 and main(args) == 0  # a second export replaces the first
    first = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(onnx_export, "ONNX_ATOL", -1.0)  # every runtime check now fails
    assert main(args) == 2
    assert "tolerance" in capsys.readouterr().err
    assert out.read_bytes() == first  # the file that was there is kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classify.safetensors", "m.onnx"]


def test_missing_extra_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    ckpt = _checkpoint(tmp_path, "classify")
    for fmt, out, extra in (("tflite", "m.tflite", "tflite"), ("openvino", "ov", "openvino")):
        assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"mobilenets[{extra}]" in err
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "ov").exists()


def test_onnx_carries_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path, "detect")
    out = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "64", "--nms-in-graph", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"] == ["boxes", "scores", "labels"] and summary["fp32_max_abs_diff"] <= ONNX_ATOL
    import onnxruntime as ort

    stored = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["mobilenets"]
    meta = json.loads(stored)  # readable by any ONNX Runtime user, without this library
    assert meta["task"] == "detect" and meta["classes"] == ["1", "2", "3"]
    assert meta["input"]["size"] == [64, 64] and meta["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["postprocess"]["nms"].startswith("in the graph") and meta["postprocess"]["max_detections"] == 100

"""Peer runtimes as benchmark rows, each labelled by the precision it really runs.

ONNX Runtime's CPU provider computes in the graph's types (fp32, or int8 where the QDQ model says). OpenVINO does
not: on a CPU with AVX512-BF16 or AMX its default ``INFERENCE_PRECISION_HINT`` is bf16, so an "fp32" row must ask
for f32 and the row's precision is read back from the compiled model. LiteRT runs the project's own TFLite export
on its default XNNPACK delegate. timm's eager model is PyTorch eager with its own (random) weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenets.bench.timing import Candidate, as_list

# timm's name of the same architecture (width 1.0), for the peer eager row.
TIMM_NAMES = {
    "mobilenet_v1": "mobilenetv1_100",
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
}
OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def export_onnx(model: nn.Module, path: Path, x: torch.Tensor) -> Path:
    """``model`` (unfolded: the runtimes fold BatchNorm themselves) as ONNX with a dynamic batch, one output per
    tensor the model returns (a classifier's logits, a backbone's taps)."""
    with torch.no_grad():
        count = len(as_list(model(x)))
    outputs = [f"out{i}" for i in range(count)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the Python-side input check
        torch.onnx.export(
            model.eval(),
            (x,),
            str(path),
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ("images", *outputs)},
            opset_version=17,
            dynamo=False,
        )
    return path


def onnxruntime_candidates(fp32_path: Path, int8_path: Path | None, threads: int) -> list[Candidate]:
    from mobilenets.deploy.export import ort_session

    out = []
    for path, precision, note in ((fp32_path, "fp32", "plain export"),
                                  (int8_path, "int8", "QDQ, per-channel, calibrated on photos")):  # fmt: skip
        if path is None:
            continue
        session = ort_session(path, threads)

        def predict(x: torch.Tensor, session: Any = session) -> list[torch.Tensor]:
            return [torch.from_numpy(y) for y in session.run(None, {"images": x.numpy()})]

        out.append(Candidate(f"onnxruntime {precision}", False, precision, predict, note=note, runtime="onnxruntime",
                             detail="CPUExecutionProvider"))  # fmt: skip
    return out


def _openvino_precision(compiled: Any) -> str:
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def openvino_candidates(
    fp32_path: Path, int8_path: Path | None, threads: int, isa: Mapping[str, bool | None], notes: list[str]
) -> list[Candidate]:
    """fp32 (hint f32), bf16 (hint bf16, only where the CPU has AVX512-BF16 or AMX-BF16) and the QDQ int8 model
    at OpenVINO's default hint (its fastest: the layers it leaves in float run in that precision)."""
    try:
        import openvino as ov
    except ImportError:
        notes.append("openvino rows skipped: openvino not installed (pip install openvino)")
        return []
    core = ov.Core()
    base = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    variants: list[tuple[str, Path, str | None]] = [("fp32", fp32_path, "f32")]
    bf16_cpu = bool(isa.get("avx512_bf16") or isa.get("amx_bf16"))
    if bf16_cpu and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        variants.append(("bf16", fp32_path, "bf16"))
    else:
        notes.append("openvino bf16 row skipped: this CPU has neither AVX512-BF16 nor AMX-BF16")
    if int8_path is not None:
        variants.append(("int8", int8_path, None))
    out = []
    for label, path, hint in variants:
        config: dict[str, Any] = dict(base)
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = core.compile_model(str(path), "CPU", config)
        actual = _openvino_precision(compiled)
        if label == "int8":
            precision = "int8"
            detail = f"INFERENCE_PRECISION_HINT={actual} (default; layers left in float run in {actual})"
        else:
            precision = OPENVINO_PRECISIONS.get(actual, actual)
            detail = f"INFERENCE_PRECISION_HINT={actual} (asked {hint})"
            if precision != label:
                notes.append(f"openvino asked for {hint} ran {actual}: its row is labelled {precision}")
        request = compiled.create_infer_request()
        ports = list(compiled.outputs)

        def predict(x: torch.Tensor, request: Any = request, ports: list[Any] = ports) -> list[torch.Tensor]:
            result = request.infer({0: x.numpy()})
            return [torch.from_numpy(result[port].copy()) for port in ports]

        note = "plain export" if label != "int8" else "the ONNX Runtime QDQ model"
        out.append(Candidate(f"openvino {precision}", False, precision, predict, note=note, runtime="openvino",
                             detail=detail))  # fmt: skip
    return out


def litert_candidates(
    model: nn.Module, resolution: int, calibration: list[torch.Tensor], threads: int, tmp: Path, notes: list[str]
) -> list[Candidate]:
    """LiteRT (XNNPACK) fp32 and int8 rows through the project's own TFLite export (``deploy.tflite``: fp32, and
    PT2E full-integer int8 calibrated on the photos), where ``litert-torch`` and ``ai-edge-litert`` are installed.
    The file is converted for one image: its batch-32 figure is 32 single-image calls."""
    try:
        from mobilenets.deploy import tflite
    except ImportError as e:
        notes.append(f"LiteRT rows skipped: no TFLite export here ({e})")
        return []
    missing = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    if missing:
        notes.append(f'LiteRT rows skipped: {", ".join(missing)} not installed (pip install "mobilenets[tflite]")')
        return []
    out = []
    for precision in ("fp32", "int8"):
        path = tmp / f"{precision}.tflite"
        meta = {"task": getattr(model, "task", "features"), "input": {"layout": "NHWC"}, "precision": precision}
        try:
            tflite.export_tflite(model, path, resolution, meta, calibration if precision == "int8" else None)
        except Exception as e:  # a graph the converter refuses: say why, keep the other rows
            notes.append(f"LiteRT {precision} row skipped: the TFLite export failed ({type(e).__name__}: {e})")
            continue
        artefact = tflite.tflite_artefact(path, threads)

        def predict(x: torch.Tensor, artefact: Any = artefact) -> list[torch.Tensor]:
            return [torch.from_numpy(y) for y in artefact(x)]

        detail = "XNNPACK (default delegate)" + (", full-integer PT2E int8" if precision == "int8" else "")
        out.append(Candidate(f"litert {artefact.precision}", False, artefact.precision, predict,
                             note="the project's TFLite export, one image per call", runtime="litert",
                             detail=detail))  # fmt: skip
    return out


def _import_timm() -> Any:
    # timm imports torchvision, whose CUDA wheel cannot load here; its two custom ops are all timm's import needs.
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm

    return timm


def timm_candidates(model_name: str, images: torch.Tensor, notes: list[str]) -> list[Candidate]:
    from mobilenets.bench.photos import recalibrate_batchnorm

    if model_name not in TIMM_NAMES:
        notes.append(f"timm row skipped: no timm counterpart registered for {model_name}")
        return []
    try:
        timm = _import_timm()
    except Exception as e:
        notes.append(f"timm row skipped: timm unavailable ({e})")
        return []
    torch.manual_seed(0)
    peer = recalibrate_batchnorm(timm.create_model(TIMM_NAMES[model_name]), images)
    note = "own random weights, BN re-estimated on the same photos"
    return [Candidate(f"timm {TIMM_NAMES[model_name]} eager", False, "fp32", peer, False, peer, note=note,
                      runtime="pytorch eager")]  # fmt: skip

"""OpenVINO IR export (``model.xml`` + ``model.bin`` in a folder), converted from the ONNX export, and its run
in OpenVINO on the CPU. Optional: ``pip install "mobilenets[openvino]"``.

fp32 is converted from the fp32 ONNX file and saved uncompressed (``save_model`` would otherwise store fp16
weights); int8 from the ONNX Runtime QDQ file (OpenVINO runs its quantize / dequantize pairs as int8 kernels).
Compiled with ``INFERENCE_PRECISION_HINT`` f32 always: OpenVINO's default on CPUs with AMX or AVX512-BF16 is bf16,
which would run an "fp32" model (and an int8 model's float parts) in bf16. The model's metadata is in its
``rt_info`` under ``mobilenets`` (kept in the .xml).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilenets.deploy.formats import META_KEY, Artefact, metadata_json, parse_metadata, require
from mobilenets.errors import InputError

MODEL_FILE = "model.xml"
# fp32 OpenVINO (f32 hint) vs PyTorch: other kernels and summation orders (measured ≤ 2e-6 on the test models).
OPENVINO_ATOL = 1e-4


def model_xml(path: str | Path) -> Path:
    """The IR file of an export folder (or the .xml itself)."""
    path = Path(path)
    return path / MODEL_FILE if path.suffix != ".xml" else path


def export_openvino(onnx_path: str | Path, xml_path: str | Path, metadata: dict[str, Any]) -> Path:
    """Convert an exported ONNX file to IR at ``xml_path`` (+ its .bin) with ``metadata`` in rt_info. Both files
    are written under temporary names in the same folder and renamed into place, the .bin first."""
    ov = require("openvino")
    xml_path = Path(xml_path)
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(metadata_json(metadata), [META_KEY])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{xml_path.stem}.", suffix=".tmp", dir=xml_path.parent))
    try:
        ov.save_model(model, str(staging / xml_path.name), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            staged = staging / xml_path.with_suffix(suffix).name
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged, xml_path.with_suffix(suffix))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml_path


def read_openvino_metadata(path: str | Path) -> dict[str, Any]:
    ov = require("openvino")
    xml = model_xml(path)
    if not xml.is_file():
        raise InputError(f"OpenVINO model not found: {xml}")
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as e:  # a truncated or foreign file: say which
        raise InputError(f"cannot read OpenVINO model {xml}: {e}") from None
    text = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None
    return parse_metadata(text, xml)


def openvino_artefact(path: Path, threads: int = 0) -> Artefact:
    """OpenVINO on the CPU, latency hint, f32 inference precision, ``threads`` (0: its default)."""
    ov = require("openvino")
    xml = model_xml(path)
    meta = read_openvino_metadata(xml)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    precision = str(meta.get("precision", "fp32"))
    label = precision if hint == "f32" else f"{precision} (float parts {hint})"
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: x})
        return [np.asarray(result[out]) for out in compiled.outputs]

    return Artefact(xml, "openvino", label, meta, run)

"""TFLite / LiteRT export through Google's PyTorch → LiteRT converter (``litert-torch``), run again in the LiteRT
interpreter (``ai-edge-litert``, XNNPACK). Optional: ``pip install "mobilenets[tflite]"``.

The graph is the ONNX export's (BN folded; a detector's boxes and scores before NMS, its anchors a constant) with
an N×H×W×C input — LiteRT's own layout, so no transpose is left at the input — at a fixed size (the converter
specialises the height and width: a segmenter is exported for one input size, stated in its metadata). int8 is
full-integer where the converter allows: PT2E static quantization (litert-torch's ``PT2EQuantizer``: int8
per-channel symmetric weights, int8 activations from histogram ranges on real images), int8 input and outputs.
The model's metadata is a metadata buffer named ``mobilenets`` in the flatbuffer.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenets.checkpoint import atomic_write
from mobilenets.deploy.fold import fold_batchnorm
from mobilenets.deploy.formats import META_KEY, Artefact, metadata_json, parse_metadata, require
from mobilenets.errors import InputError

# fp32 LiteRT (XNNPACK) vs PyTorch: the same float graph, other kernels and summation orders (measured ≤ 1e-6 on
# the test models; the bound is ONNX's).
TFLITE_ATOL = 1e-4


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """The converter prints a progress tree and warns about tracing internals; the library stays silent."""
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def tflite_graph(model: nn.Module, resolution: int) -> nn.Module:
    """The module converted: :func:`export.export_graph`'s, BN folded, taking N×H×W×C."""
    from mobilenets.deploy.export import DetectorGraph, export_graph

    folded = fold_batchnorm(model)
    if getattr(model, "task", "classify") == "detect":
        graph: nn.Module = DetectorGraph(folded, fixed_anchors=resolution)
    else:
        graph, _ = export_graph(folded)
    return _ChannelsLast(graph).eval()


class _ChannelsLast(nn.Module):
    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.net = graph

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x.permute(0, 3, 1, 2))


def export_tflite(
    model: nn.Module,
    path: str | Path,
    resolution: int,
    metadata: dict[str, Any],
    calibration: Sequence[torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` as a ``.tflite`` file for a 1×``resolution``×``resolution``×C input, fp32, or int8
    calibrated on ``calibration`` (batches of N×C×H×W images in the model's eval transform); ``metadata`` in
    its metadata buffer; written atomically."""
    litert_torch = require("litert_torch")
    path = Path(path)
    graph = tflite_graph(model, resolution)
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    sample = (torch.randn(1, resolution, resolution, in_chans),)
    with _quiet_converter():
        if calibration is None:
            edge = litert_torch.convert(graph, sample)
        else:
            edge = _convert_int8(litert_torch, graph, [b.permute(0, 2, 3, 1) for b in calibration], sample)
        content = with_metadata(edge.model_content(), metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(content), suffix=".tflite")
    return path


def _convert_int8(litert_torch: Any, graph: nn.Module, batches: list[torch.Tensor], sample: tuple) -> Any:
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    # Traced with a batch of 2 and a dynamic batch dimension so the calibration batches run whole (a batch of 1
    # would be specialised to 1).
    batch = torch.export.Dim("batch", max=4096)
    two = torch.cat([sample[0], sample[0]])
    prepared = torch.export.export(graph, (two,), dynamic_shapes=({0: batch},)).module()
    prepared = quantize_pt2e.prepare_pt2e(prepared, quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(quantized)  # else the converter warns about training mode
    return litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def with_metadata(content: bytes, metadata: dict[str, Any]) -> bytes:
    """The flatbuffer ``content`` with ``metadata`` (JSON) in a metadata buffer named ``mobilenets`` (an earlier
    one replaced)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(content), 0)
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(metadata_json(metadata).encode(), dtype=np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    entry = fb.MetadataT()
    entry.name = META_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != META_KEY.encode()] + [entry]
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(path: str | Path) -> dict[str, Any]:
    from ai_edge_litert import schema_py_generated as fb

    data = Path(path).read_bytes()
    try:
        model = fb.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == META_KEY.encode():
                return parse_metadata(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(), path)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"cannot read TFLite file {path}: {e}") from None
    return parse_metadata(None, path)


def tflite_artefact(path: Path, threads: int = 0) -> Artefact:
    """The LiteRT interpreter (XNNPACK, the default CPU delegate) on ``path``: NCHW float in, the outputs in the
    export's order out, one image at a time; an int8 file's input is quantised and its outputs dequantised with
    their own scales."""
    interpreter_module = require("ai_edge_litert.interpreter")
    meta = read_tflite_metadata(path)
    interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads or None)
    runner = interpreter.get_signature_runner()
    ((input_name, input_detail),) = runner.get_input_details().items()
    output_names = sorted(runner.get_output_details(), key=lambda n: int(n.rsplit("_", 1)[-1]))

    def run_one(x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if input_detail["dtype"] != np.float32:
            scale, zero = input_detail["quantization"]
            info = np.iinfo(input_detail["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(input_detail["dtype"])
        outputs = runner(**{input_name: x})
        details = runner.get_output_details()
        result = []
        for name in output_names:
            value, detail = outputs[name], details[name]
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                value = (value.astype(np.float32) - zero) * scale
            result.append(np.asarray(value, dtype=np.float32))
        return result

    def run(x: np.ndarray) -> list[np.ndarray]:
        # The file is converted for one image (its batch is 1; a detector's constant anchors do not resize):
        # a batch runs image by image.
        if len(x) == 1:
            return run_one(x)
        per_image = [run_one(x[i : i + 1]) for i in range(len(x))]
        return [np.concatenate(outs) for outs in zip(*per_image, strict=True)]

    return Artefact(path, "tflite", str(meta.get("precision", "fp32")), meta, run)

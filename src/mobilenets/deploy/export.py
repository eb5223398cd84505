"""ONNX export with a dynamic batch, its check in ONNX Runtime, and int8 post-training static quantization.

Quantization (ONNX Runtime ``quantize_static``): QDQ format, int8 weights per output channel (symmetric), uint8
activations, ranges calibrated by MinMax on real images (the training split, never the test images the accuracy
is measured on).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.deploy.fold import fold_batchnorm
from mobilenets.errors import ConfigError, InputError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DETECTION_OUTPUTS = ("boxes", "scores")
# fp32 ONNX Runtime vs PyTorch: both run the same float graph with different kernels and summation orders.
ONNX_ATOL = 1e-4


def require(module: str):  # type: ignore[no-untyped-def]
    """Import an optional deployment dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this needs the optional package {module!r}: pip install {module}") from None


class DetectorGraph(nn.Module):
    """The exported part of a detector: raw outputs decoded to boxes N×A×4 (x1, y1, x2, y2 as fractions of the
    input) and class probabilities N×A×C (background dropped). The per-class NMS stays outside the graph: run
    ``SSDLite.select(boxes, scores, (h, w))`` on ONNX Runtime's outputs, or any NMS with the model's thresholds."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.decode_outputs(self.detector.forward_raw(x))


def export_graph(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """What ``export_onnx`` writes for ``model`` and the names of its outputs: a classifier's logits N×K, a
    segmenter's logits N×K×H×W at the input size, a detector's (boxes, scores) before NMS."""
    if getattr(model, "task", "classify") == "detect":
        return DetectorGraph(model).eval(), DETECTION_OUTPUTS
    return model.eval(), (OUTPUT_NAME,)


def export_onnx(model: nn.Module, path: str | Path, resolution: int, fold: bool = True) -> Path:
    """Write ``model`` (a classifier, segmenter or detector; see :func:`export_graph`) as ONNX with a dynamic
    batch dimension, traced at ``resolution``; BN folded first when ``fold``. A segmenter's height and width are
    dynamic too (it takes any size, as in PyTorch); a classifier's and a detector's are fixed (a detector's
    anchors are laid out for its input size)."""
    require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph, outputs = export_graph(fold_batchnorm(model) if fold else model)
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    x = torch.randn(1, in_chans, resolution, resolution)
    any_size = getattr(model, "task", "classify") == "segment"
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the Python-side input check
        torch.onnx.export(
            graph,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_axes={name: axes for name in (INPUT_NAME, *outputs)},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def ort_session(path: str | Path, threads: int = 0):  # type: ignore[no-untyped-def]
    """An ONNX Runtime CPU session (``threads`` 0 = ORT's default)."""
    ort = require("onnxruntime")

    if not Path(path).is_file():
        raise InputError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The first output (a classifier's or segmenter's logits)."""
    return run_onnx_all(session, x)[0]


def run_onnx_all(session, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [torch.from_numpy(out) for out in session.run(None, {INPUT_NAME: x.numpy()})]


def check_onnx(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max abs difference over every output between ONNX Runtime on ``path`` and ``model`` (eval) on ``x``."""
    graph, _ = export_graph(model)
    with torch.no_grad():
        ref = graph(x)
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    outs = run_onnx_all(ort_session(path), x)
    return max(float((out - r).abs().max()) for out, r in zip(outs, refs, strict=True))


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over batches of images."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self.batches: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch.numpy()}


def glue_nodes(path: str | Path) -> list[str]:
    """Names of the nodes of an exported graph that belong to no module: the exporter names a module's nodes
    ``/module/.../Op`` and the top-level forward's own ones ``/Op`` (a detector's anchors, box decoding and
    softmax; a segmenter's sum of branches and upsampling to the input size)."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.name.count("/") < 2]


def quantize_onnx(
    fp32_path: str | Path, out_path: str | Path, calibration: Iterable[torch.Tensor], glue_fp32: bool = False
) -> Path:
    """int8 static quantization of an fp32 export, calibrated on ``calibration`` (batches of N×C×H×W images);
    with ``glue_fp32`` the :func:`glue_nodes` stay fp32 (detectors and segmenters)."""
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=glue_nodes(prepared) if glue_fp32 else [],
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out_path


def calibration_batches(data: str, transform, count: int = 256, batch: int = 32) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """The first ``count`` training images of ``data`` (``embedded``, a Fashion-MNIST IDX folder or an image
    folder), in the model's eval transform (a ``TransformConfig``)."""
    from PIL import Image

    from mobilenets.classification.sources import EMBEDDED, is_idx_folder
    from mobilenets.data import embedded, fashion_mnist
    from mobilenets.data.datasets import scan_folder
    from mobilenets.data.images import load_rgb
    from mobilenets.data.transforms import eval_transform

    if count < 1:
        raise ConfigError(f"calibration needs at least one image, got {count}")
    if data == EMBEDDED or is_idx_folder(Path(data)):
        arrays, _ = embedded.load("train") if data == EMBEDDED else fashion_mnist.load_split("train", data)
        images = [Image.fromarray(a) for a in arrays[:count]]
    else:
        root = Path(data)
        _, samples = scan_folder(root / "train" if (root / "train").is_dir() else root)
        images = [load_rgb(p) for p, _ in samples[:count]]
    if not images:
        raise InputError(f"no calibration images in {data}")
    tensors = torch.stack([eval_transform(transform, img) for img in images])
    return list(tensors.split(batch))

"""ONNX export with a dynamic batch, its check in ONNX Runtime, and int8 post-training static quantization.

Every file carries the model's metadata in ``metadata_props`` (``mobilenets.deploy.artefact``) and is written
atomically. A detector's graph ends before NMS, or with ``nms_in_graph`` runs ONNX ``NonMaxSuppression`` itself.

Quantization (ONNX Runtime ``quantize_static``): QDQ format, int8 weights per output channel (symmetric), uint8
activations, ranges calibrated by MinMax on real images (the training split, never the test images the accuracy
is measured on).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenets.checkpoint import atomic_write
from mobilenets.deploy.fold import fold_batchnorm
from mobilenets.deploy.formats import META_KEY, Artefact, metadata_json, parse_metadata, require
from mobilenets.errors import ConfigError, InputError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DETECTION_OUTPUTS = ("boxes", "scores")
NMS_OUTPUTS = ("boxes", "scores", "labels")  # the detections of one image, best first
# fp32 ONNX Runtime vs PyTorch: both run the same float graph with different kernels and summation orders.
ONNX_ATOL = 1e-4


class DetectorGraph(nn.Module):
    """The exported part of a detector: raw outputs decoded to boxes N×A×4 (x1, y1, x2, y2 as fractions of the
    input) and class probabilities N×A×C (background dropped). The per-class NMS stays outside the graph: run
    ``SSDLite.select(boxes, scores, (h, w))`` on ONNX Runtime's outputs, or any NMS with the model's thresholds.

    ``fixed_anchors``: the anchors of a ``resolution`` input as a constant of the graph instead of computed in
    it (the LiteRT converter cannot lower their float64 grid; the values are the same)."""

    def __init__(self, detector: nn.Module, fixed_anchors: int | None = None) -> None:
        super().__init__()
        self.detector = detector
        anchors = None
        if fixed_anchors is not None:
            with torch.no_grad():
                raw = detector.forward_raw(torch.zeros(1, detector.config.in_chans, fixed_anchors, fixed_anchors))
            anchors = raw["anchors"].float().clone()
        self.register_buffer("anchors", anchors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.anchors is None:
            return self.detector.decode_outputs(self.detector.forward_raw(x))
        d = self.detector
        feats = d.backbone.forward_taps(x, d.taps)
        logits, codes, _ = d.head([feats[name] for name in d.taps])
        return d.decode_outputs({"cls_logits": logits, "box_codes": codes, "anchors": self.anchors})


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset 10+): per batch and class, boxes scoring above the threshold, greedy,
    IoU strictly above ``iou`` suppressed. Eagerly the library's own ``nms`` gives the same rows, in the ONNX
    order (batch, class, score descending)."""

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float,
                threshold: float) -> torch.Tensor:  # fmt: skip
        from mobilenets.detection.boxes import nms

        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                keep = (scores[b, c] > threshold).nonzero().flatten()
                kept = keep[nms(boxes[b, keep], scores[b, c, keep], iou)][:max_per_class]
                rows += [torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], 1)]
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: int, iou: float, threshold: float) -> Any:
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float)),
            g.op("Constant", value_t=torch.tensor([threshold], dtype=torch.float)),
            center_point_box_i=0,
        )


class DetectorNmsGraph(nn.Module):
    """A detector with its post-processing inside the graph, for one image: ``boxes`` K×4 (fractions of the
    input), ``scores`` K and ``labels`` K (1..C), best first — ``SSDLite.select``'s steps in graph ops: the
    ``pre_nms_top_k`` best (anchor, class) scores, the score threshold, per-class NMS (ONNX
    ``NonMaxSuppression``), the ``max_detections`` best."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.decoded = DetectorGraph(detector)
        self.config = detector.config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        boxes, scores = self.decoded(x)  # 1×A×4, 1×A×C
        flat = scores.reshape(1, -1)
        k = min(cfg.pre_nms_top_k, flat.shape[1])
        top = torch.zeros_like(flat).scatter(1, flat.topk(k).indices, 1.0)
        candidates = (flat * top).reshape(scores.shape).transpose(1, 2)  # 1×C×A, all but the top k zeroed
        selected = _NonMaxSuppression.apply(boxes, candidates, cfg.max_detections, cfg.nms_iou, cfg.score_threshold)
        classes, anchors = selected[:, 1], selected[:, 2]
        kept = candidates[0, classes, anchors]
        n = torch.clamp(torch.ones_like(kept).sum().long(), max=cfg.max_detections)
        best = kept.topk(n if torch.onnx.is_in_onnx_export() else int(n)).indices
        return boxes[0, anchors[best]], kept[best], classes[best] + 1


def export_graph(model: nn.Module, nms_in_graph: bool = False) -> tuple[nn.Module, tuple[str, ...]]:
    """What ``export_onnx`` writes for ``model`` and the names of its outputs: a classifier's logits N×K, a
    segmenter's logits N×K×H×W at the input size, a detector's (boxes, scores) before NMS, or with
    ``nms_in_graph`` its detections (:class:`DetectorNmsGraph`)."""
    if getattr(model, "task", "classify") == "detect":
        if nms_in_graph:
            return DetectorNmsGraph(model).eval(), NMS_OUTPUTS
        return DetectorGraph(model).eval(), DETECTION_OUTPUTS
    if nms_in_graph:
        raise ConfigError("--nms-in-graph applies to detectors only")
    return model.eval(), (OUTPUT_NAME,)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    resolution: int,
    fold: bool = True,
    metadata: dict[str, Any] | None = None,
    nms_in_graph: bool = False,
) -> Path:
    """Write ``model`` (a classifier, segmenter or detector; see :func:`export_graph`) as ONNX with a dynamic
    batch dimension, traced at ``resolution``; BN folded first when ``fold``; ``metadata`` stored in its
    ``metadata_props``; written atomically. A segmenter's height and width are dynamic too (it takes any size,
    as in PyTorch); a classifier's and a detector's are fixed (a detector's anchors are laid out for its input
    size). With ``nms_in_graph`` a detector's graph ends with its detections, for a batch of one."""
    require("onnx")
    path = Path(path)
    graph, outputs = export_graph(fold_batchnorm(model) if fold else model, nms_in_graph)
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    x = torch.randn(1, in_chans, resolution, resolution)
    any_size = getattr(model, "task", "classify") == "segment"
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    dynamic = {n: {0: "detections"} for n in outputs} if nms_in_graph else {n: axes for n in (INPUT_NAME, *outputs)}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the Python-side input check
            torch.onnx.export(
                graph,
                (x,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        if metadata is not None:
            set_onnx_metadata(tmp, metadata)

    atomic_write(path, write, suffix=".onnx")
    return path


def set_onnx_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` under ``mobilenets`` in the file's ``metadata_props`` (replacing an earlier value)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=META_KEY, value=metadata_json(metadata))
    onnx.save(proto, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise InputError(f"cannot read ONNX file {path}: {e}") from None
    return parse_metadata(next((p.value for p in proto.metadata_props if p.key == META_KEY), None), path)


def onnx_artefact(path: Path, threads: int = 0) -> Artefact:
    meta = read_onnx_metadata(path)
    session = ort_session(path, threads)
    return Artefact(path, "onnx", str(meta.get("precision", "fp32")), meta,
                    lambda x: session.run(None, {INPUT_NAME: x}))  # fmt: skip


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
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[torch.Tensor],
    glue_fp32: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """int8 static quantization of an fp32 export, calibrated on ``calibration`` (batches of N×C×H×W images);
    with ``glue_fp32`` the :func:`glue_nodes` stay fp32 (detectors and segmenters); ``metadata`` stored in the
    int8 file; written atomically."""
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The pre-processed copy gets a fresh name of its own: it must never replace a file of the user's.
    fd, prepared_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".prep.onnx", dir=out_path.parent)
    os.close(fd)
    prepared = Path(prepared_name)

    def write(tmp: Path) -> None:
        quantize_static(
            str(prepared),
            str(tmp),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=glue_nodes(prepared) if glue_fp32 else [],
        )
        if metadata is not None:
            set_onnx_metadata(tmp, metadata)

    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        atomic_write(out_path, write, suffix=".onnx")
    finally:
        prepared.unlink(missing_ok=True)
    return out_path

"""What every export format shares: the metadata an exported file carries, the optional runtimes' imports,
checked and atomic writes, and the record of a file loaded in its runtime (:class:`Artefact`).

Metadata: one JSON object under the key ``mobilenets`` in the format's own mechanism — ONNX ``metadata_props``,
a TFLite metadata buffer, OpenVINO ``rt_info`` — with the task, class names, model name and config, input
size / layout / mean / std / resize rule, output names and the post-processing (a detector's NMS thresholds).
A runtime user reads it without this library; ``predict --model`` reads it to run the file like the checkpoint.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenets.errors import ConfigError, InputError

META_KEY = "mobilenets"
FORMAT_VERSION = 1
FORMATS = ("onnx", "tflite", "openvino")
# The pip extra that installs each optional runtime (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"litert_torch": "tflite", "ai_edge_litert": "tflite", "openvino": "openvino", "onnxruntime": "test"}


def require(module: str) -> Any:
    """Import an optional deployment dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0])
        how = f'pip install "mobilenets[{extra}]"' if extra else f"pip install {module}"
        raise ConfigError(f"this needs the optional package {module!r}: {how}") from None


# -- metadata -----------------------------------------------------------------------------------------------
def input_rule(task: str, transform: Any, resolution: int, dynamic_size: bool) -> dict[str, Any]:
    """How an image becomes the network's input for ``task`` (what ``predict`` does before the network)."""
    if task == "classify":
        return {
            "rule": "resize the shorter side, then centre-crop",
            "shorter_side": transform.resize,
            "crop": [resolution, resolution],
            "interpolation": transform.interpolation,
        }
    if task == "detect":  # boxes come back as fractions of this input; scale them by the image's own size
        return {
            "rule": "resize (stretch) to the input size",
            "size": [resolution, resolution],
            "interpolation": "bilinear",
        }
    if dynamic_size:
        return {"rule": "none: the image at its own size (any height and width)"}
    return {
        "rule": "resize (stretch) to the fixed input size; resize the logits back to the image",
        "size": [resolution, resolution],
        "interpolation": "bilinear",
    }


def build_metadata(
    *,
    task: str,
    model_name: str,
    model_config: dict[str, Any],
    classes: Sequence[str],
    fmt: str,
    precision: str,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    channel_order: str,
    resize: dict[str, Any],
    outputs: Sequence[str],
    layout: str = "NCHW",
    dynamic_size: bool = False,
    nms_in_graph: bool = False,
) -> dict[str, Any]:
    """The metadata object every artefact carries (see the module docstring)."""
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "model": model_name,
        "config": model_config,
        "classes": list(classes),
        "format": fmt,
        "precision": precision,
        "input": {
            "layout": layout,
            "size": None if dynamic_size else [resolution, resolution],
            "traced_size": [resolution, resolution],
            "dynamic_size": dynamic_size,
            "pixels": "RGB (or channel_order) scaled to [0, 1], then (x - mean) / std per channel",
            "channel_order": channel_order,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "resize": resize,
        },
        "outputs": list(outputs),
    }
    if task == "detect":
        keys = ("score_threshold", "nms_iou", "max_detections", "pre_nms_top_k")
        meta["postprocess"] = {
            "nms": "in the graph (batch 1)" if nms_in_graph else "after the graph, per class",
            "boxes": "x1, y1, x2, y2 as fractions of the input",
            "labels": "1..num_classes (class names index label - 1)",
            **{k: model_config[k] for k in keys if k in model_config},
        }
    return meta


def metadata_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True)


def parse_metadata(text: str | bytes | None, source: str | Path) -> dict[str, Any]:
    """The metadata object from its stored JSON, or an :class:`InputError` naming ``source``."""
    if text is None:
        raise InputError(f"{source} carries no mobilenets metadata (was it exported by `mobilenets export`?)")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: malformed mobilenets metadata: {e}") from None
    if not isinstance(meta, dict) or "task" not in meta or "input" not in meta:
        raise InputError(f"{source}: mobilenets metadata lacks task / input")
    return meta


# -- where an export may write ------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(named: Path, written: Iterable[Path], inputs: Iterable[Path], ours: Callable[[Path], bool]) -> None:
    """Refuse, before any work, every output path that would lose something or fail half-way.

    ``named`` is the path the user gave; ``written`` every file the export will write (``named`` or files in it /
    beside it); ``inputs`` the files it reads (the checkpoint). A written file may not be an input (also through
    a link), may not be a folder, its folder may not be a file and must be writable; a file other than ``named``
    that already exists is replaced only when ``ours(path)`` says an earlier export wrote it."""
    inputs = [Path(p) for p in inputs]
    for path in written:
        for source in inputs:
            if _same_file(path, source) or path.resolve() == source.resolve():
                raise ConfigError(f"refusing to write {path}: it is the input {source}")
        if path.is_dir():
            raise ConfigError(f"output {path} is a folder; name a file (for example {path / 'model'}.<format>)")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"cannot write {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write {path}: folder {parent} is not writable")
        if path.exists() and path != named and not ours(path):
            raise ConfigError(f"refusing to overwrite {path}, which `mobilenets export` did not write; move it first")


# -- running an artefact again ------------------------------------------------------------------------------
@dataclass
class Artefact:
    """An exported file loaded in its runtime. Call it on an N×C×H×W float32 batch (numpy or torch, normalised
    as ``metadata["input"]`` says, NCHW whatever the file's own layout) to get its outputs as numpy arrays in the
    order of ``metadata["outputs"]``. ``precision`` is what actually runs (e.g. ``fp32``, ``int8``), for
    benchmark labels."""

    path: Path
    format: str
    precision: str
    metadata: dict[str, Any]
    run: Callable[[np.ndarray], list[np.ndarray]] = field(repr=False)

    def __call__(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

"""What every exported file shares, whatever its format: the metadata it carries, how it is written (checked
output paths, atomic replacement) and how it is run again (:func:`load_artefact`, one callable per runtime).

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


def replace_atomically(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """``write`` to a temporary name in ``path``'s folder, then rename it over ``path``: a reader (or a crash)
    sees the old file or the new one, never half of one. ``suffix`` keeps the extension a writer insists on."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def artefact_format(path: str | Path) -> str:
    """The format of an exported file from its name: ``.onnx``, ``.tflite``, or an OpenVINO ``.xml`` / folder."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".xml":
        return "openvino"
    if path.suffix in (".onnx", ".tflite"):
        return path.suffix[1:]
    raise InputError(f"{path}: not an exported model (expected .onnx, .tflite, or an OpenVINO folder / .xml)")


def read_artefact_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an exported file carries (without building a runtime session where the format allows)."""
    fmt = artefact_format(path)
    if fmt == "onnx":
        from mobilenets.deploy.export import read_onnx_metadata

        return read_onnx_metadata(path)
    if fmt == "tflite":
        from mobilenets.deploy.tflite import read_tflite_metadata

        return read_tflite_metadata(path)
    from mobilenets.deploy.openvino import read_openvino_metadata

    return read_openvino_metadata(path)


def load_artefact(path: str | Path, threads: int = 0) -> Artefact:
    """An exported ONNX / TFLite / OpenVINO file ready to run on the CPU with ``threads`` (0: the runtime's
    default): ONNX Runtime, the LiteRT interpreter with XNNPACK, or OpenVINO with its precision hint set to f32
    (so that fp32 is not silently run as bf16 on CPUs with AMX / AVX512-BF16)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"exported model not found: {path}")
    fmt = artefact_format(path)
    if fmt == "onnx":
        from mobilenets.deploy.export import onnx_artefact

        return onnx_artefact(path, threads)
    if fmt == "tflite":
        from mobilenets.deploy.tflite import tflite_artefact

        return tflite_artefact(path, threads)
    from mobilenets.deploy.openvino import openvino_artefact

    return openvino_artefact(path, threads)


# -- an artefact in the model's place ------------------------------------------------------------------------
def artefact_logits(artefact: Artefact) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier's or segmenter's forward through ``artefact``: N×C×H×W → logits. A fixed-size segmenter
    runs at its size: the input is resized to it and the logits back to the input's (bilinear), the rule its
    metadata states."""
    size = artefact.metadata["input"].get("size")
    resize = artefact.metadata["task"] == "segment" and size is not None

    def forward(x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        if resize and [h, w] != list(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        logits = torch.from_numpy(artefact(x)[0])
        if resize and logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    return forward


class ArtefactDetector:
    """A detector's ``predict`` (one dict of ``boxes`` in pixels of the input, ``scores``, ``labels`` per image)
    through ``artefact``: its boxes and scores then the model's own NMS (``SSDLite.select`` with the thresholds in
    the metadata), or the detections of an in-graph-NMS file, one image at a time."""

    def __init__(self, artefact: Artefact) -> None:
        from types import SimpleNamespace

        self.artefact = artefact
        self.config = SimpleNamespace(**artefact.metadata["config"])
        self.in_graph = list(artefact.metadata["outputs"]) == ["boxes", "scores", "labels"]

    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        from mobilenets.detection.model import SSDLite

        h, w = x.shape[-2:]
        if not self.in_graph:
            boxes, scores = (torch.from_numpy(o) for o in self.artefact(x))
            return SSDLite.select(self, boxes, scores, (h, w))  # type: ignore[arg-type]  # reads .config only
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        results = []
        for image in x.split(1):
            boxes, scores, labels = (torch.from_numpy(o) for o in self.artefact(image))
            results.append({"boxes": boxes * scale, "scores": scores, "labels": labels.long()})
        return results


class ArtefactModel:
    """An exported file standing in for the PyTorch model where a task's ``predict_images`` uses one: called, it
    gives logits (:func:`artefact_logits`); ``predict`` gives detections (:class:`ArtefactDetector`); ``config``
    is the model's stored config."""

    def __init__(self, artefact: Artefact) -> None:
        from types import SimpleNamespace

        self.artefact = artefact
        self.task = artefact.metadata["task"]
        self.config = SimpleNamespace(**artefact.metadata["config"])
        self._logits = artefact_logits(artefact) if self.task != "detect" else None
        self._detector = ArtefactDetector(artefact) if self.task == "detect" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._logits is None:
            raise ConfigError(f"{self.artefact.path} is a detector: use predict()")
        return self._logits(x)

    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if self._detector is None:
            raise ConfigError(f"{self.artefact.path} is a {self.task} model, not a detector")
        return self._detector.predict(x)

    def parameters(self) -> Iterable[torch.Tensor]:  # where inputs go: the runtimes take CPU arrays
        return iter([torch.zeros(0)])

    def eval(self) -> ArtefactModel:
        return self


def exported_trained(artefact: Artefact) -> Any:
    """What a task's ``predict_images`` reads from a loaded checkpoint (``engine.checkpoints.Trained``: model,
    task, class names, transform, resolution), read from an exported file's metadata instead."""
    from types import SimpleNamespace

    meta = artefact.metadata
    metadata: dict[str, Any] = {"classes": meta["classes"], "mean": meta["input"]["mean"], "std": meta["input"]["std"]}
    if "transform" in meta:
        metadata["transform"] = meta["transform"]
    resolution = meta["input"]["traced_size"][0]
    config = SimpleNamespace(model=SimpleNamespace(resolution=resolution))
    return SimpleNamespace(model=ArtefactModel(artefact), task=meta["task"], metadata=metadata, config=config,
                           path=artefact.path)  # fmt: skip

"""Running an exported file again, whatever its format: :func:`load_artefact` (one callable per runtime) and
adapters that put a loaded file in the model's place for the tasks' metrics and ``predict --model``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from mobilenets.deploy.formats import Artefact
from mobilenets.errors import ConfigError, InputError


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

"""A training run's files: weights as safetensors (loadable by ``create_model``), the rest of the state beside
them, and ``last.json`` naming the newest complete pair. Every file is written atomically and ``last.json``
last, so a run killed at any instant resumes from a consistent checkpoint."""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from mobilenets.checkpoint import (
    META_KEY,
    atomic_write,
    json_metadata,
    load_into,
    model_config,
    read_info,
    read_metadata,
    read_weights,
)
from mobilenets.errors import CheckpointError, MobilenetsError
from mobilenets.registry import create_model

TRAIN_META_KEY = "mobilenets.train"  # task name, train args, task metadata, epoch, step
POINTER = "last.json"
KEEP = 2  # step checkpoints kept besides best.safetensors


def save_model(model: nn.Module, path: Path, train_meta: dict[str, Any]) -> None:
    """``checkpoint.save_weights``'s format plus the training metadata (so eval/predict know the task)."""
    name = getattr(model, "registry_name", None)
    if not name:
        raise CheckpointError(f"{type(model).__name__} has no registry_name; build it with create_model")
    meta = {
        META_KEY: json.dumps({"model": name, "config": model_config(model)}),
        TRAIN_META_KEY: json.dumps(train_meta, default=str),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    state["python"] = random.getstate()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, tag: str, model: nn.Module, train_meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``checkpoints/<tag>.safetensors`` + ``.state.pt``, then point ``last.json`` at them and prune old
    checkpoints. Returns the weights path."""
    folder = out / "checkpoints"
    weights, extra = folder / f"{tag}.safetensors", folder / f"{tag}.state.pt"
    save_model(model, weights, train_meta)
    atomic_write(extra, lambda tmp: torch.save(state, tmp))
    pointer = {"weights": weights.name, "state": extra.name, "epoch": state["epoch"], "step": state["step"]}
    atomic_write(out / POINTER, lambda tmp: tmp.write_text(json.dumps(pointer, indent=2)))
    tags = sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors"))
    for old in tags[:-KEEP]:
        for suffix in (".safetensors", ".state.pt"):
            (folder / f"{old}{suffix}").unlink(missing_ok=True)
    return weights


@dataclass
class Resumed:
    """What ``--resume`` restores: the model weights, the loop state, and the args the run started with."""

    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    train_meta: dict[str, Any]
    weights_path: Path


def find_last(path: str | Path) -> tuple[Path, Path]:
    """(weights, state) named by ``last.json`` in a run folder (or the pointer file itself)."""
    path = Path(path)
    pointer = path / POINTER if path.is_dir() else path
    if not pointer.is_file():
        raise CheckpointError(f"nothing to resume: {pointer} not found (was the run started with --out {path}?)")
    try:
        info = json.loads(pointer.read_text())
        folder = pointer.parent / "checkpoints"
        weights, extra = folder / info["weights"], folder / info["state"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{pointer} is not a checkpoint pointer: {e}") from None
    if not weights.is_file() or not extra.is_file():
        raise CheckpointError(f"{pointer} names {weights.name} / {extra.name}, which are missing")
    return weights, extra


def load_resume(path: str | Path) -> Resumed:
    weights_path, extra = find_last(path)
    _, _, weights = read_weights(weights_path)
    try:
        state = torch.load(extra, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn or foreign file: say which
        raise CheckpointError(f"cannot read training state {extra}: {e}") from None
    return Resumed(weights, state, read_train_meta(weights_path), weights_path)


def read_train_meta(path: Path) -> dict[str, Any]:
    """The engine's training metadata of a checkpoint (task, train args, task metadata, epoch, step); {} for a
    plain ``save_weights`` file."""
    return json_metadata(path, read_metadata(path), TRAIN_META_KEY, "training") or {}


def resolve_weights(path: str | Path) -> Path:
    """A run folder → its ``best.safetensors`` (else the last checkpoint); ``last.json`` → its weights; a
    ``.safetensors`` file → itself."""
    path = Path(path)
    if path.is_dir():
        if (path / "best.safetensors").is_file():
            return path / "best.safetensors"
        return find_last(path)[0]
    if path.name.endswith(".json"):
        return find_last(path)[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def task_of(path: str | Path) -> str | None:
    """The task a checkpoint was trained for (for a plain ``save_weights`` file: its model's), or None when it is
    not one of ours (or does not exist)."""
    try:
        weights = resolve_weights(path)
        task = read_train_meta(weights).get("task")
        if task is None:
            name, _ = read_info(weights)
            task = getattr(create_model(name), "task", "classify")
        return task
    except MobilenetsError:  # unreadable, or a model name we do not know: loading it will say so
        return None


@dataclass
class Trained:
    """A trained model ready for inference, with how it was trained."""

    model: nn.Module
    task: str
    args: dict[str, Any]  # the train namespace, as stored
    metadata: dict[str, Any]  # the task's ``metadata()``
    path: Path


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Trained:
    """Load a checkpoint written by the engine (or a plain ``save_weights`` file: the task is the model's)."""
    weights = resolve_weights(path)
    name, _ = read_info(weights)
    meta = read_train_meta(weights)
    model = create_model(name, weights=weights)
    model.to(device).eval()
    task = meta.get("task", getattr(model, "task", "classify"))
    return Trained(model, task, meta.get("args", {}), meta.get("metadata", {}), weights)


def init_from(model: nn.Module, path: str | Path) -> None:
    """``--init``: load another checkpoint's weights (a new classifier is kept when the class count differs).

    A detector or segmenter (a model with a ``backbone``) also accepts a classification checkpoint of the same
    backbone: its keys are the backbone's without the prefix, and the parts the dense model does not have (the
    classifier, and for DeepLabv3 the dropped 1280-channel conv) are left out; every backbone tensor must be there.
    A segmenter with a naming branch (``naming_pool``) starts it as the checkpoint's classifier when the shapes
    match (``LRASPP.load_classifier``).
    """
    _, _, state = read_weights(resolve_weights(path))
    backbone = getattr(model, "backbone", None)
    wanted = backbone.state_dict() if isinstance(backbone, nn.Module) else {}
    if wanted and not set(wanted) - set(state):
        load_into(backbone, {k: v for k, v in state.items() if k in wanted}, source=f"{path} (as backbone)")
        load_classifier = getattr(model, "load_classifier", None)
        if callable(load_classifier) and {"classifier.weight", "classifier.bias"} <= set(state):
            load_classifier(state["classifier.weight"], state["classifier.bias"])
        return
    load_into(model, state, source=str(path))


def namespace_from(meta: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**meta.get("args", {}))

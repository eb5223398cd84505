"""Weight files: safetensors with the model's name and config in the metadata, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mobilenets.errors import CheckpointError

META_KEY = "mobilenets"


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash leaves the old file or the new
    one, never half of either. ``suffix`` ends the temporary name, for a writer that insists on an extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_config(model: nn.Module) -> dict[str, object]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise CheckpointError(f"{type(model).__name__} has no config to store")
    return config.to_dict()


def save_weights(model: nn.Module, path: str | Path, name: str | None = None) -> None:
    """Save ``model``'s weights and config so ``create_model(name, weights=path)`` rebuilds it."""
    name = name or getattr(model, "registry_name", None)
    if not name:
        raise CheckpointError("save_weights needs the registered model name (pass name=...)")
    meta = {META_KEY: json.dumps({"model": name, "config": model_config(model)})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file, read from its header (no tensor is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


def json_metadata(path: str | Path, meta: dict[str, str], key: str, what: str) -> dict[str, Any] | None:
    """``meta[key]`` (``what`` metadata of the file at ``path``) parsed as a JSON object; None when the key is
    absent. Text that is not a JSON object is a ``CheckpointError`` naming the file."""
    if key not in meta:
        return None
    try:
        info = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: malformed {what} metadata ({e})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: malformed {what} metadata (not a JSON object)")
    return info


def read_info(path: str | Path) -> tuple[str, dict[str, object]]:
    """(model name, config) from a file written by ``save_weights``, without loading its tensors."""
    info = json_metadata(path, read_metadata(path), META_KEY, "mobilenets")
    if info is None:
        raise CheckpointError(f"{path} has no mobilenets metadata; convert it first with `mobilenets convert`")
    if not isinstance(info.get("model"), str) or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{path}: malformed mobilenets metadata (needs a model name and a config)")
    return info["model"], info["config"]


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header, without loading a tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


def check_shapes(path: str | Path, model: nn.Module) -> None:
    """Refuse a file whose tensors are not the ones ``model`` (built from the file's config) has."""
    shapes = read_shapes(path)
    for key, tensor in model.state_dict().items():
        if key not in shapes:
            raise CheckpointError(f"{path}: its config builds {key} {tuple(tensor.shape)}, which the file lacks")
        if tuple(tensor.shape) != shapes[key]:
            raise CheckpointError(
                f"{path}: its config gives {key} the shape {tuple(tensor.shape)} but the file holds {shapes[key]}; "
                "the metadata does not describe these weights"
            )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; read errors name the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load ``state`` strictly, except a classifier whose shape differs (a new label set: kept fresh)."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    to_load = {}
    for key, value in state.items():
        if own[key].shape != value.shape:
            if key.startswith("classifier."):
                continue  # fine-tuning: num_classes changed, keep the freshly initialised classifier
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, model needs {tuple(own[key].shape)}"
            )
        to_load[key] = value
    model.load_state_dict(to_load, strict=False)

"""Weight files: safetensors with the model's name and config in the metadata, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from mobilenets.errors import CheckpointError

META_KEY = "mobilenets"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash leaves the old file or the new
    one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def _open_weights(path: str | Path, tensors: bool) -> tuple[str, dict[str, object], dict[str, torch.Tensor]]:
    """(model name, config, state dict) of a file written by ``save_weights``; the state dict is empty unless
    ``tensors``. The file is opened once, and its metadata checked before any tensor is read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if META_KEY not in meta:
                raise CheckpointError(f"{path} has no mobilenets metadata; convert it first with `mobilenets convert`")
            info = json.loads(meta[META_KEY])
            name, config = str(info["model"]), dict(info["config"])
            names = f.keys() if tensors else []  # safe_open objects are not iterable
            state = {key: f.get_tensor(key) for key in names}
    except CheckpointError:
        raise
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: malformed mobilenets metadata ({e!r})") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None
    return name, config, state


def read_info(path: str | Path) -> tuple[str, dict[str, object]]:
    """(model name, config) from a file written by ``save_weights``, without loading its tensors."""
    name, config, _ = _open_weights(path, tensors=False)
    return name, config


def read_weights(path: str | Path) -> tuple[str, dict[str, object], dict[str, torch.Tensor]]:
    """Return (model name, config, state dict) from a file written by ``save_weights``."""
    return _open_weights(path, tensors=True)


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

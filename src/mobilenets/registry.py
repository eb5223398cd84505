"""One registry for every model the library builds: ``create_model(name, **overrides)`` / ``list_models()``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mobilenets.checkpoint import check_shapes, load_into, load_state, read_info
from mobilenets.errors import CheckpointError, ConfigError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
# Modules whose import registers models. Listed here, not discovered, so what exists is written down once.
_MODEL_MODULES = (
    "mobilenets.models.zoo",
    "mobilenets.detection.model",
    "mobilenets.segmentation.model",
)


def register_model(name: str) -> Callable[[Builder], Builder]:
    def add(fn: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ConfigError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return add


def _load_builtin() -> None:
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not e.name or not module.startswith(e.name):  # a task not built yet is fine; a broken import is not
                raise


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, weights: str | Path | None = None, **overrides: object) -> nn.Module:
    """Build a registered model. ``weights`` is a checkpoint written by this library (``save_weights`` or
    ``mobilenets convert``); its stored config is used, updated by ``overrides``. When ``num_classes``
    differs from the checkpoint's, everything but the classifier is loaded (fine-tuning)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if weights is None:
        return _REGISTRY[name](**overrides)
    stored_name, config, state = read_weights(weights)
    if stored_name != name:
        raise ConfigError(f"{weights} holds weights for {stored_name!r}, not {name!r}")
    model = _REGISTRY[name](**{**config, **overrides})
    load_into(model, state, source=str(weights))
    return model


def check_config(path: str | Path, name: str, config: dict[str, object]) -> None:
    """Refuse a file whose stored config does not describe its own tensors, before anything is allocated.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory) and every tensor it has must be in the
    file with the same shape. A config claiming 10⁹ classes or a width of 10⁴ thus fails here, naming the file,
    instead of asking for terabytes when the real model is built: what a file can make us allocate is bounded by
    the tensors it actually holds."""
    _load_builtin()
    if name not in _REGISTRY:
        raise CheckpointError(f"{path} holds weights for an unknown model {name!r}")
    try:
        with torch.device("meta"):
            model = _REGISTRY[name](**config)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError; an unknown key is a TypeError
        raise CheckpointError(f"{path}: its stored config cannot build {name!r}: {e}") from None
    check_shapes(path, model)


def read_weights(path: str | Path) -> tuple[str, dict[str, object], dict[str, torch.Tensor]]:
    """Return (model name, config, state dict) from a file written by ``save_weights``; the metadata is checked
    against the tensors' shapes in the header (``check_config``) before any tensor is loaded."""
    name, config = read_info(path)
    check_config(path, name, config)
    return name, config, load_state(path)

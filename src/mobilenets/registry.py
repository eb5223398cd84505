"""One registry for every model the library builds: ``create_model(name, **overrides)`` / ``list_models()``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from torch import nn

from mobilenets.errors import ConfigError

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
    from mobilenets.checkpoint import load_into, read_weights

    stored_name, config, state = read_weights(weights)
    if stored_name != name:
        raise ConfigError(f"{weights} holds weights for {stored_name!r}, not {name!r}")
    model = _REGISTRY[name](**{**config, **overrides})
    load_into(model, state, source=str(weights))
    return model

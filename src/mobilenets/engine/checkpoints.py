"""A training run's files: weights as safetensors (loadable by ``create_model``), the rest of the state beside
them, and ``last.json`` naming the newest complete pair. Every file is written atomically and ``last.json``
last, so a run killed at any instant resumes from a consistent checkpoint.

Nothing is unpickled. The loop state (optimiser slots, EMA, every rank's RNG states, running sums, log rows)
is a nested structure of tensors and plain values; ``encode_state`` stores its tensors as safetensors entries
and the rest as JSON in the same file's metadata, so reading a run folder can never run code. A run written
before this format (``*.state.pt``) is read with ``torch.load(weights_only=True)`` and numpy's array type
allow-listed, which refuses any other pickled object.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mobilenets.checkpoint import (
    META_KEY,
    atomic_write,
    json_metadata,
    load_into,
    model_config,
    read_info,
    read_metadata,
)
from mobilenets.config import TrainConfig, stored_config
from mobilenets.errors import CheckpointError, MobilenetsError
from mobilenets.registry import create_model, read_weights

TRAIN_META_KEY = "mobilenets.train"  # task name, train args, task metadata, epoch, step
STATE_KEY = "mobilenets.state"  # the loop state's JSON part; its tensors are the file's entries
STATE_SUFFIX = ".state.safetensors"
LEGACY_STATE_SUFFIX = ".state.pt"  # runs written before the pickle-free format
POINTER = "last.json"
KEEP = 2  # step checkpoints kept besides best.safetensors
TAG = re.compile(r"e\d{4}-s\d{9}")  # the engine's checkpoint names; nothing else in checkpoints/ is ever pruned


class NonFiniteWeights(CheckpointError):
    """A model whose weights hold NaN or infinity: never written as a checkpoint."""


def finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating tensor of ``state`` holding NaN or infinity, or None when all are finite."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


# -- the loop state as tensors + JSON ------------------------------------------------------------------------
def encode_state(state: Any) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, JSON) for a nested structure of dicts, lists, tuples, tensors, numpy arrays and JSON scalars.
    Tensors become references ``{"$t": name}``; tuples, numpy arrays and dicts with non-string keys (an
    optimiser's parameter ids) are tagged so ``decode_state`` rebuilds exactly what was saved."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().cpu().contiguous().clone()
            return {"$t": name}
        if isinstance(x, np.ndarray):
            return {"$np": x.tolist(), "dtype": x.dtype.str}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, tuple):
            return {"$tuple": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"$dict": {k: enc(v) for k, v in x.items()}}
            return {"$items": [[enc(k), enc(v)] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise CheckpointError(f"cannot store a {type(x).__name__} in a training state")

    return tensors, json.dumps(enc(state))


def decode_state(tensors: dict[str, torch.Tensor], text: str, source: str | Path) -> Any:
    """Inverse of :func:`encode_state`; anything that is not what it writes is a ``CheckpointError``."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "$t" in x:
            return tensors[x["$t"]]
        if "$np" in x:
            return np.asarray(x["$np"], dtype=np.dtype(x["dtype"]))
        if "$tuple" in x:
            return tuple(dec(v) for v in x["$tuple"])
        if "$dict" in x:
            return {k: dec(v) for k, v in x["$dict"].items()}
        if "$items" in x:
            return {dec(k): dec(v) for k, v in x["$items"]}
        raise ValueError(f"unknown entry {sorted(x)[:3]}")

    try:
        return dec(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: malformed training state ({e})") from None


def write_state(path: Path, state: dict[str, Any]) -> None:
    tensors, text = encode_state(state)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={STATE_KEY: text}))


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's loop state (``*.state.safetensors``; a legacy ``*.state.pt`` strictly, see above)."""
    path = Path(path)
    if path.name.endswith(LEGACY_STATE_SUFFIX):
        return _read_legacy_state(path)
    meta = read_metadata(path)
    if STATE_KEY not in meta:
        raise CheckpointError(f"{path} is not a mobilenets training state (no {STATE_KEY!r} metadata)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read training state {path}: {e}") from None
    state = decode_state(tensors, meta[STATE_KEY], path)
    if not isinstance(state, dict) or not {"epoch", "step", "rows"} <= set(state):
        raise CheckpointError(f"{path}: malformed training state (no epoch / step / rows)")
    return state


def _read_legacy_state(path: Path) -> dict[str, Any]:
    """A ``torch.save``d state of an older run, unpickled by torch's restricted loader: tensors, containers,
    numbers and numpy's RNG array only — a file that needs anything else (such as a crafted ``__reduce__``) is
    refused, never run."""
    allowed: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray._reconstruct)
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch's own refusal all raise their own types
        lines = str(e).strip().splitlines() or [""]
        # torch's refusal names the forbidden object on an "Unsupported global" line; its advice to load with
        # weights_only=False is exactly what must not be done with a file of unknown origin, so it is not repeated
        named = [ln.strip() for ln in lines if "unsupported global" in ln.lower()]
        reason = (named[0] if named else f"{type(e).__name__}: {lines[0]}")[:200]
        raise CheckpointError(
            f"refusing to read training state {path}: it is an old pickle file holding more than tensors and "
            f"numbers ({reason}); mobilenets never unpickles other objects, as loading them can run code"
        ) from None
    if not isinstance(state, dict) or not {"epoch", "step", "rows"} <= set(state):
        raise CheckpointError(f"{path}: not a mobilenets training state")
    return state


def save_model(model: nn.Module, path: Path, train_meta: dict[str, Any]) -> None:
    """``checkpoint.save_weights``'s format plus the training metadata (so eval/predict know the task). Weights
    holding NaN or infinity are refused (``NonFiniteWeights``): a checkpoint on disk is always usable."""
    name = getattr(model, "registry_name", None)
    if not name:
        raise CheckpointError(f"{type(model).__name__} has no registry_name; build it with create_model")
    meta = {
        META_KEY: json.dumps({"model": name, "config": model_config(model)}),
        TRAIN_META_KEY: json.dumps(train_meta, default=str),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = finite(state)
    if bad is not None:
        raise NonFiniteWeights(f"{path.name} not written: the model's {bad} holds NaN or infinity")
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


# -- the pointer and the run's own checkpoints ---------------------------------------------------------------
def _read_pointer(pointer: Path) -> dict[str, Any]:
    try:
        info = json.loads(pointer.read_text())
        if not isinstance(info, dict) or not isinstance(info["weights"], str) or not isinstance(info["state"], str):
            raise TypeError("weights / state must be file names")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{pointer} is not a checkpoint pointer: {e}") from None
    for name in (info["weights"], info["state"]):
        if Path(name).name != name or name in (".", ".."):  # a pointer names files in checkpoints/, nothing else
            raise CheckpointError(f"{pointer} names {name!r}, which is not a file name in checkpoints/")
    return info


def own_checkpoints(out: Path) -> list[tuple[Path, Path]]:
    """(weights, state) of this run's checkpoints as ``last.json`` lists them, newest first. Only these are ever
    pruned or fallen back to; anything else in ``checkpoints/`` is the user's and is left alone."""
    pointer = out / POINTER
    if not pointer.is_file():
        return []
    info = _read_pointer(pointer)
    folder = out / "checkpoints"
    newest = (folder / info["weights"], folder / info["state"])
    tags = [t for t in info.get("checkpoints", []) if isinstance(t, str) and TAG.fullmatch(t)]
    older = [(folder / f"{t}.safetensors", folder / f"{t}{STATE_SUFFIX}") for t in reversed(tags)]
    return [newest] + [pair for pair in older if pair[0] != newest[0]]


def last_good(out: Path) -> str:
    """The newest checkpoint of the run at ``out`` whose weights load and are all finite (checked, not assumed),
    as a path; or a sentence saying there is none."""
    for weights, _ in own_checkpoints(out) if (out / POINTER).is_file() else []:
        try:
            _, _, state = read_weights(weights)
        except CheckpointError:
            continue
        if finite(state) is None:
            return str(weights)
    return "none (no checkpoint with finite weights was written)"


def save_checkpoint(out: Path, tag: str, model: nn.Module, train_meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``checkpoints/<tag>.safetensors`` + ``<tag>.state.safetensors``, then point ``last.json`` at them and
    prune this run's older checkpoints. Returns the weights path."""
    folder = out / "checkpoints"
    weights, extra = folder / f"{tag}.safetensors", folder / f"{tag}{STATE_SUFFIX}"
    try:
        previous = [w.name[: -len(".safetensors")] for w, _ in own_checkpoints(out)][::-1]
    except CheckpointError:
        previous = []
    try:
        save_model(model, weights, train_meta)
    except NonFiniteWeights as e:
        raise NonFiniteWeights(
            f"stopping at epoch {state['epoch']}, step {state['step']}: {e}; last good checkpoint: {last_good(out)}"
        ) from None
    write_state(extra, state)
    kept = [t for t in previous if t != tag and TAG.fullmatch(t)] + [tag]
    pointer = {"weights": weights.name, "state": extra.name, "epoch": state["epoch"], "step": state["step"],
               "checkpoints": kept[-KEEP:]}  # fmt: skip
    atomic_write(out / POINTER, lambda tmp: tmp.write_text(json.dumps(pointer, indent=2)))
    for old in kept[:-KEEP]:
        for suffix in (".safetensors", STATE_SUFFIX, LEGACY_STATE_SUFFIX):
            (folder / f"{old}{suffix}").unlink(missing_ok=True)
    return weights


@dataclass
class Resumed:
    """What ``--resume`` restores: the model weights, the loop state, and the args the run started with.
    ``note`` says which checkpoint was skipped as unreadable, when the newest one was."""

    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    train_meta: dict[str, Any]
    weights_path: Path
    note: str = ""


def find_last(path: str | Path) -> tuple[Path, Path]:
    """(weights, state) of the newest checkpoint that ``last.json`` (in a run folder, or the pointer file itself)
    lists and whose headers read; a torn or corrupt newest one gives way to the previous (``load_resume`` says
    so)."""
    path = Path(path)
    pointer = path / POINTER if path.is_dir() else path
    if not pointer.is_file():
        raise CheckpointError(f"nothing to resume: {pointer} not found (was the run started with --out {path}?)")
    pairs = own_checkpoints(pointer.parent)
    for weights, extra in pairs:
        try:
            read_metadata(weights)
            if not extra.name.endswith(LEGACY_STATE_SUFFIX):
                read_metadata(extra)
        except CheckpointError:
            continue
        if extra.is_file():
            return weights, extra
    weights, extra = pairs[0]
    if not weights.is_file() or not extra.is_file():
        raise CheckpointError(f"{pointer} names {weights.name} / {extra.name}, which are missing")
    read_metadata(weights)
    read_metadata(extra)  # the newest one's own error
    return weights, extra


def load_resume(path: str | Path) -> Resumed:
    """The newest readable checkpoint of a run. A newest checkpoint that is torn or corrupt (a disk fault, a
    foreign write) falls back to the previous one, and ``note`` says so."""
    path = Path(path)
    pointer = path / POINTER if path.is_dir() else path
    find_last(path)  # the pointer exists and is well-formed: else its own clear error
    failures: list[str] = []
    for weights_path, extra in own_checkpoints(pointer.parent):
        try:
            _, _, weights = read_weights(weights_path)
            state = read_state(extra)
            meta = read_train_meta(weights_path)
        except CheckpointError as e:
            failures.append(str(e))
            continue
        note = ""
        if failures:
            note = f"warning: the newest checkpoint is unreadable ({failures[0]}); resuming from {weights_path}"
        return Resumed(weights, state, meta, weights_path, note)
    raise CheckpointError(f"no readable checkpoint in {pointer.parent}: " + "; ".join(failures))


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
    config: TrainConfig  # how it was trained (a plain weight file: the task's defaults)
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
    config = stored_config(meta, task, name, str(weights))
    return Trained(model, task, config, meta.get("metadata", {}), weights)


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

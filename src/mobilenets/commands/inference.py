"""What `eval`, `predict` and `export` share: loading a checkpoint with its task, threads and device, the deploy
paths handed to a task as predictors, and the image inputs of `predict`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from mobilenets.commands.train import DEFAULT_TASK, task_module
from mobilenets.config import EvalConfig, PredictConfig
from mobilenets.errors import ConfigError, InputError


def checkpoint_task(path: str) -> str:
    from mobilenets.engine.checkpoints import task_of

    return task_of(path) or DEFAULT_TASK


def load(path: str, device: str, threads: int | None) -> tuple[Any, ModuleType]:
    """(the trained model with its stored config, its task's module), on ``device`` with ``threads``."""
    from mobilenets.engine.checkpoints import load_trained
    from mobilenets.engine.distributed import resolve_device

    if threads:
        torch.set_num_threads(threads)
    trained = load_trained(path, resolve_device(device))
    return trained, task_module(trained.task)


def predictor_for(trained: Any, cfg: EvalConfig | PredictConfig) -> Any:
    """None (the model itself), or for ``--engine fused|fused-int8|fused-bf16`` what the task's evaluation and
    prediction use in the model's place: a classifier's fused C++ engine (a callable on image batches); for a
    detector or a segmenter, a copy of the model whose backbone runs in the engine as far as its feature taps, the
    heads in PyTorch."""
    if cfg.engine == "pytorch":
        return None
    from mobilenets.classification.task import eval_transform_of
    from mobilenets.deploy.calibration import calibration_batches
    from mobilenets.deploy.fused import FusedEngine
    from mobilenets.deploy.fused_backbone import engine_model

    if next(trained.model.parameters()).device.type != "cpu":
        raise ConfigError(f"--engine {cfg.engine} runs on the CPU; add --device cpu")
    calibration = None
    if cfg.engine == "fused-int8":
        if not cfg.calibration:
            raise ConfigError("--engine fused-int8 needs --calibration DATA (real images for the activation ranges)")
        calibration = calibration_batches(trained, cfg.calibration, cfg.calibration_count, eval_transform_of(trained))
    precision = "bf16" if cfg.engine == "fused-bf16" else None
    if trained.task == "classify":
        return FusedEngine(trained.model, cfg.threads or None, calibration=calibration, precision=precision)
    return engine_model(trained.model, cfg.threads or None, calibration=calibration, precision=precision)


def engine_description(predictor: Any) -> str | None:
    """What a ``predictor_for`` predictor runs (``FusedEngine.describe``: level, precision), or None for PyTorch."""
    backbone = getattr(predictor, "backbone", None)  # a detector's or segmenter's copy: its EngineTaps
    for engine in (predictor, backbone):
        if engine is not None and callable(getattr(engine, "describe", None)):
            return engine.describe()
    return None


def with_predictor(trained: Any, cfg: PredictConfig) -> Any:
    """``trained`` with its model replaced by ``predictor_for`` (a detector's or segmenter's ``predict_images``
    reads the model from it)."""
    predictor = predictor_for(trained, cfg)
    return trained if predictor is None else dataclasses.replace(trained, model=predictor)


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders → their image files (sorted, recursive)."""
    from mobilenets.data.images import is_image_file

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not files:
                raise InputError(f"no image files in folder {p}")
            paths += files
        else:
            paths.append(p)
    return paths


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per input: its stem, and for inputs sharing a stem (``a/x.png``, ``b/x.jpg``) the
    stem with ``-2``, ``-3`` … in input order, so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen[p.stem] = seen.get(p.stem, 0) + 1
        stems.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return stems

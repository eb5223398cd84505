"""The models a benchmark table holds: a classifier by its registry name, or an SSDLite model's backbone up to the
feature taps its head reads (``ssdlite_mobilenet_v2`` → MobileNetV2's layer-15 expansion and head, V2 §6.2), each
at its own resolution (``name@320``; default 320 for SSDLite backbones, 224 otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.bench.photos import recalibrate_batchnorm
from mobilenets.errors import ConfigError

DETECTOR_PREFIX = "ssdlite_"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    resolution: int

    @property
    def backbone_only(self) -> bool:
        return self.name.startswith(DETECTOR_PREFIX)

    @property
    def label(self) -> str:
        return f"{self.name} backbone" if self.backbone_only else self.name


def parse_model_spec(text: str, resolution: int | None = None) -> ModelSpec:
    """``name`` or ``name@resolution``; without ``@``, ``resolution`` or the model's usual one."""
    name, sep, size = text.partition("@")
    if sep:
        try:
            value = int(size)
        except ValueError:
            raise ConfigError(f"model {text!r}: the resolution after '@' must be an integer") from None
    else:
        value = resolution or (320 if name.startswith(DETECTOR_PREFIX) else 224)
    if value < 32:
        raise ConfigError(f"model {text!r}: resolution must be >= 32, got {value}")
    return ModelSpec(name, value)


class BackboneTaps(nn.Module):
    """An SSDLite model's backbone run as far as its feature taps; returns them in the head's order."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.taps = tuple(detector.taps)
        self.config = detector.backbone.config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone.forward_taps(x, self.taps).values())


class FusedTaps:
    """A ``BackboneTaps`` run by the fused engine (``deploy.fused_backbone``): the same tuple of maps, and the
    engine's ``precision``, ``isa``, ``run_notes`` and ``activation_bytes`` for the benchmark's row."""

    def __init__(
        self,
        taps: BackboneTaps,
        threads: int,
        calibration: list[torch.Tensor] | None = None,
        precision: str | None = None,
    ) -> None:
        from mobilenets.deploy.fused_backbone import FusedBackbone

        self.engine = FusedBackbone(taps.backbone, taps.taps, threads, calibration, precision)
        self.precision, self.isa = self.engine.precision, self.engine.isa
        self.run_notes = self.engine.run_notes

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.engine(x).values())

    def activation_bytes(self, h: int, w: int) -> int:
        return self.engine.activation_bytes(h, w)


def build(spec: ModelSpec, images: torch.Tensor, checkpoint: str | None = None) -> tuple[nn.Module, str]:
    """The model to time (eval mode) and a line saying where its weights come from. Without a checkpoint the
    weights are random (seed 0) and BatchNorm is re-estimated on ``images``."""
    from mobilenets.registry import create_model

    torch.manual_seed(0)
    model = create_model(spec.name, weights=checkpoint) if checkpoint else create_model(spec.name)
    if spec.backbone_only:
        model = BackboneTaps(model)
    if checkpoint:
        return model.eval(), checkpoint
    return recalibrate_batchnorm(model, images), "random init, BatchNorm re-estimated on real photos"

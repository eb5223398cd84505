"""Optimiser presets, the learning-rate schedule (a pure function of the step) and the weight EMA.

``paper`` — MobileNetV2 §6.1 / TF-Slim ``train_image_classifier.py``: RMSProp with decay 0.9, momentum 0.9 and
TensorFlow's epsilon convention (inside the square root, ``opt_epsilon`` default 1.0 in TF-Slim; mean-square
slots start at 1 as in TF1), lr 0.045 × 0.98 per epoch, weight decay 4e-5 as an L2 term — not on depthwise
filters (V1 paper §3.3: "very little or no weight decay on the depthwise filters"), BatchNorm or biases.
``modern`` — SGD with Nesterov momentum (or AdamW), linear warm-up then cosine, label smoothing 0.1, EMA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Everything the optimiser and schedule need; ``resolve_recipe`` fills it from a preset and overrides."""

    optimizer: str  # "rmsproptf" | "sgd" | "adamw"
    lr: float
    weight_decay: float
    schedule: str  # "exponential" (× decay_rate per epoch) | "cosine"
    decay_rate: float = 0.98
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    eps: float = 1.0


PRESETS: dict[str, Recipe] = {
    "paper": Recipe("rmsproptf", lr=0.045, weight_decay=4e-5, schedule="exponential", eps=1.0),
    "modern": Recipe(
        "sgd", lr=0.1, weight_decay=4e-5, schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1, ema_decay=0.999
    ),
}
_ADAMW_DEFAULTS = {"lr": 2e-3, "weight_decay": 0.05}


def resolve_recipe(
    preset: str,
    optimizer: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    label_smoothing: float | None = None,
    ema_decay: float | None = None,
) -> Recipe:
    """The preset with every non-None override applied (AdamW brings its own lr / weight-decay defaults)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    fields = base.__dict__.copy()
    if optimizer is not None:
        if optimizer not in ("rmsproptf", "sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {optimizer!r}; expected rmsproptf, sgd or adamw")
        fields["optimizer"] = optimizer
        if optimizer == "adamw" and base.optimizer != "adamw":
            fields.update(_ADAMW_DEFAULTS)
    overrides = {
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "ema_decay": ema_decay,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    recipe = Recipe(**fields)
    if recipe.lr <= 0 or recipe.weight_decay < 0 or not 0 <= recipe.ema_decay < 1:
        raise ConfigError(f"invalid recipe: lr {recipe.lr}, weight decay {recipe.weight_decay}, EMA {recipe.ema_decay}")
    if not 0 <= recipe.label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {recipe.label_smoothing}")
    return recipe


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two groups: decayed (regular conv and linear weights) and not decayed (depthwise filters, BatchNorm and
    other 1-D parameters, biases)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if is_depthwise(module):
            no_decay.add(id(module.weight))
        for p in module.parameters(recurse=False):
            if p.dim() <= 1:
                no_decay.add(id(p))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1 computes it: ``ms ← ρ·ms + (1-ρ)·g²`` (ms starts at 1),
    ``mom ← μ·mom + lr·g / sqrt(ms + ε)``, ``w ← w - mom``. Weight decay is an L2 term added to ``g``."""

    def __init__(
        self, params: Iterable, lr: float, alpha: float = 0.9, eps: float = 1.0, momentum: float = 0.9
    ) -> None:
        # weight decay comes per group from ``param_groups`` (0 for depthwise filters, BN and biases)
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
                mom.mul_(group["momentum"]).addcdiv_(g, (ms + group["eps"]).sqrt_(), value=group["lr"])
                p.sub_(mom)
        return None


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "rmsproptf":
        return RMSpropTF(groups, lr=recipe.lr, alpha=recipe.rmsprop_decay, eps=recipe.eps, momentum=recipe.momentum)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate for optimiser step ``step`` (0-based) of ``total_steps``: linear warm-up, then the
    preset's decay. Pure, so the schedule needs no state of its own in a checkpoint."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    if warmup and step < warmup:
        return recipe.lr * (step + 1) / warmup
    if recipe.schedule == "exponential":  # V2 §6.1: × 0.98 every epoch, stepwise as in TF-Slim (staircase)
        return recipe.lr * recipe.decay_rate ** (step // steps_per_epoch)
    total = max(1.0, total_steps - warmup)
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))


class EMA:
    """Exponential moving average of the weights (and a copy of the buffers), with timm's warm-up of the
    decay — ``min(decay, (1 + n) / (10 + n))`` — so short runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        self.module.load_state_dict(state["weights"])  # type: ignore[arg-type]

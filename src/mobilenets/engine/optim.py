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

import torch
from torch import nn

# The recipe (optimiser, schedule, presets) is configuration and lives with the other configs.
from mobilenets.config import PRESETS, Recipe, resolve_recipe

__all__ = ["EMA", "PRESETS", "RMSpropTF", "Recipe", "build_optimizer", "lr_at", "param_groups", "resolve_recipe"]


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

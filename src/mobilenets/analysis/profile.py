"""Parameters and multiply-adds, the papers' way.

Convention (V1 §3, V2 Table 4, V3 Table 3): multiply-adds count convolutions and fully connected layers only —
not BatchNorm, activations, additions or pooling — for one image. Parameters are reported with BatchNorm's affine
parameters (torchvision's convention) and without them (TF-Slim's convention; TF-Slim also uses 1001 classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    params: int
    madds: int
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    resolution: tuple[int, int]
    params: int
    params_no_bn: int
    madds: int
    layers: list[LayerCount] = field(default_factory=list)
    # Totals per top-level submodule (e.g. backbone vs detection head, for the SSDLite Table 5 figures).
    modules: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self, with_layers: bool = False) -> dict[str, object]:
        d = asdict(self)
        if not with_layers:
            d.pop("layers")
        return d


def _layer_madds(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = module.in_channels // module.groups * kh * kw
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside BatchNorm)."""
    total = sum(p.numel() for p in model.parameters())
    bn = sum(p.numel() for m in model.modules() if _is_bn(m) for p in m.parameters(recurse=False))
    return total, total - bn


@torch.no_grad()
def profile(model: nn.Module, resolution: int | tuple[int, int] = 224) -> Profile:
    """Count parameters and multiply-adds of ``model`` on one ``resolution`` image, per layer and in total.

    Models whose ``forward`` does more than the network (detection post-processing) expose ``forward_raw``,
    which is what gets counted.
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    layers: list[LayerCount] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        layers.append(
            LayerCount(
                names[module],
                type(module).__name__,
                sum(p.numel() for p in module.parameters(recurse=False)),
                _layer_madds(module, inputs, output),
                tuple(output.shape[1:]),
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, h, w)
        forward = getattr(model, "forward_raw", model)
        forward(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params, params_no_bn = count_params(model)
    modules: dict[str, dict[str, int]] = {}
    for name, child in model.named_children():
        p, p_no_bn = count_params(child)
        madds = sum(layer.madds for layer in layers if layer.name == name or layer.name.startswith(name + "."))
        modules[name] = {"params": p, "params_no_bn": p_no_bn, "madds": madds}
    return Profile((h, w), params, params_no_bn, sum(layer.madds for layer in layers), layers, modules)

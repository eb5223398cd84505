"""Weights from timm and torchvision into this library's models (and back out to torchvision's layout).

Both libraries build the same published networks (timm follows TF-Slim; torchvision its own reading of the
papers), so converting is renaming: every tensor of ours has exactly one source tensor of the same shape. The
key maps below are written from each library's module structure:

- timm (``timm/models/efficientnet.py``, ``mobilenetv3.py``): ``conv_stem``/``bn1``, then ``blocks.s.j`` with
  ``conv_pw``/``bn1`` (expansion), ``conv_dw``/``bn2`` (depthwise), ``se.conv_reduce``/``se.conv_expand``,
  ``conv_pwl``/``bn3`` (projection); blocks without expansion are ``conv_dw``/``bn1`` + ``conv_pw``/``bn2``.
  V2's last 1×1 conv is ``conv_head``/``bn2``; V3's is a ``ConvBnAct`` block ``blocks.6.0.conv``/``bn1`` and
  its ``conv_head`` is the 1×1 conv without BN after the pool (our ``pre_logits``).
- torchvision (``torchvision/models/mobilenetv2.py``, ``mobilenetv3.py``): ``features.N`` in order, each
  conv-BN-act a ``Sequential`` (``.0`` conv, ``.1`` BN); V2 blocks are ``features.N.conv.*``, V3 blocks
  ``features.N.block.*`` with ``fc1``/``fc2`` for squeeze-and-excite; ``classifier.1`` (V2) or
  ``classifier.0``/``classifier.3`` (V3).

Neither file records BatchNorm's epsilon or the padding: timm's ``tf_*`` models (ported TensorFlow weights) use
TensorFlow 'SAME' padding and eps 1e-3; its other models eps 1e-5 — also for V3, where ours (like torchvision
and TF-Slim) defaults to 1e-3. torchvision uses 1e-5 for V2 and 1e-3 for V3.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from mobilenets.checkpoint import save_weights
from mobilenets.errors import CheckpointError, ConfigError
from mobilenets.models.mobilenet import MobileNet, build_mobilenet
from mobilenets.models.specs import ARCH_OF_MODEL, NetSpec, build_spec

SOURCES = ("timm", "torchvision")
# Widths tried, in order, when the caller does not give one: the published multipliers first, then a fine grid.
_WIDTHS = (1.0, 0.75, 0.5, 0.35, 1.4, 1.3, 0.25, 1.25, 1.5, 2.0, *(round(0.05 * i, 2) for i in range(2, 41)))
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
KeyMap = dict[str, str]  # our state-dict key → the source's


# -- reading -------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``.pth``/``.pt``/``.bin``).

    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) and
    ``DataParallel``'s ``module.`` prefix are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors all raise their own types for a damaged file
        reason = (str(e).strip().splitlines() or [""])[0][:160]  # torch's messages run to many lines
        raise CheckpointError(f"cannot read {path} as a state dict: {type(e).__name__}: {reason}") from None
    for wrapper in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict: entry {bad[0]!r} is not a named tensor")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


# -- key maps ------------------------------------------------------------------------------------------------
def _conv_bn(ours: str, conv: str, bn: str) -> KeyMap:
    return {f"{ours}.conv.weight": f"{conv}.weight", **{f"{ours}.bn.{p}": f"{bn}.{p}" for p in _BN}}


def _biased(ours: str, theirs: str) -> KeyMap:
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


def _block_paths(spec: NetSpec) -> list[str]:
    """Our state-dict prefix of every block, in order (``stages.s.j``)."""
    return [f"stages.{s}.{j}" for s, stage in enumerate(spec.stages) for j in range(len(stage))]


def timm_key_map(spec: NetSpec, timm_blocks: list[str], num_classes: int) -> KeyMap:
    """Our keys → timm's, for a backbone ``spec`` whose timm blocks are ``timm_blocks`` (``blocks.s.j``, in
    order). timm groups blocks into stages by the arch definition's rows; we map block by block in order."""
    extra = 1 if spec.arch.startswith("v3") else 0  # V3's last 1×1 conv is a block in timm
    if len(timm_blocks) != len(spec.blocks) + extra:
        raise CheckpointError(
            f"the timm weights have {len(timm_blocks)} blocks, MobileNet {spec.arch} needs {len(spec.blocks) + extra}"
        )
    keys = _conv_bn("stem", "conv_stem", "bn1")
    for block, ours, theirs in zip(spec.blocks, _block_paths(spec), timm_blocks, strict=False):
        if block.kind == "separable":  # V1: timm's DepthwiseSeparableConv with an activation after the 1×1
            keys |= _conv_bn(f"{ours}.depthwise", f"{theirs}.conv_dw", f"{theirs}.bn1")
            keys |= _conv_bn(f"{ours}.pointwise", f"{theirs}.conv_pw", f"{theirs}.bn2")
            continue
        if block.has_expand:  # timm's InvertedResidual
            keys |= _conv_bn(f"{ours}.expand", f"{theirs}.conv_pw", f"{theirs}.bn1")
            keys |= _conv_bn(f"{ours}.depthwise", f"{theirs}.conv_dw", f"{theirs}.bn2")
            keys |= _conv_bn(f"{ours}.project", f"{theirs}.conv_pwl", f"{theirs}.bn3")
        else:  # t = 1: timm builds it as a DepthwiseSeparableConv without the 1×1's activation
            keys |= _conv_bn(f"{ours}.depthwise", f"{theirs}.conv_dw", f"{theirs}.bn1")
            keys |= _conv_bn(f"{ours}.project", f"{theirs}.conv_pw", f"{theirs}.bn2")
        if block.se_channels:
            keys |= _biased(f"{ours}.se.squeeze", f"{theirs}.se.conv_reduce")
            keys |= _biased(f"{ours}.se.excite", f"{theirs}.se.conv_expand")
    if spec.arch == "v2":
        keys |= _conv_bn("head", "conv_head", "bn2")
    elif extra:
        keys |= _conv_bn("head", f"{timm_blocks[-1]}.conv", f"{timm_blocks[-1]}.bn1")
        keys |= _biased("pre_logits.0", "conv_head")
    if num_classes:
        keys |= _biased("classifier", "classifier")
    return keys


def torchvision_key_map(spec: NetSpec, num_classes: int) -> KeyMap:
    """Our keys → torchvision's (``mobilenet_v2``, ``mobilenet_v3_large``, ``mobilenet_v3_small``)."""
    if spec.arch == "v1":
        raise CheckpointError("torchvision has no MobileNetV1; its layout exists for V2 and V3 only")
    v2 = spec.arch == "v2"
    keys = _conv_bn("stem", "features.0.0", "features.0.1")
    for n, (block, ours) in enumerate(zip(spec.blocks, _block_paths(spec), strict=True), start=1):
        body = f"features.{n}.conv" if v2 else f"features.{n}.block"
        i = 0  # position inside torchvision's Sequential
        if block.has_expand:
            keys |= _conv_bn(f"{ours}.expand", f"{body}.0.0", f"{body}.0.1")
            i = 1
        keys |= _conv_bn(f"{ours}.depthwise", f"{body}.{i}.0", f"{body}.{i}.1")
        i += 1
        if block.se_channels:
            keys |= _biased(f"{ours}.se.squeeze", f"{body}.{i}.fc1")
            keys |= _biased(f"{ours}.se.excite", f"{body}.{i}.fc2")
            i += 1
        if v2:  # V2's projection is a bare Conv2d followed by a bare BatchNorm2d
            keys |= _conv_bn(f"{ours}.project", f"{body}.{i}", f"{body}.{i + 1}")
        else:
            keys |= _conv_bn(f"{ours}.project", f"{body}.{i}.0", f"{body}.{i}.1")
    last = len(spec.blocks) + 1
    keys |= _conv_bn("head", f"features.{last}.0", f"features.{last}.1")
    if v2:
        if num_classes:
            keys |= _biased("classifier", "classifier.1")  # classifier.0 is the dropout
    else:
        keys |= _biased("pre_logits.0", "classifier.0")
        if num_classes:
            keys |= _biased("classifier", "classifier.3")  # .1 hard-swish, .2 dropout
    return keys


# -- what the source holds -----------------------------------------------------------------------------------
def _timm_blocks(state: dict[str, torch.Tensor]) -> list[str]:
    found = {(int(m[1]), int(m[2])) for k in state if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    return [f"blocks.{s}.{j}" for s, j in sorted(found)]


def _infer_timm(state: dict[str, torch.Tensor]) -> str:
    blocks = _timm_blocks(state)
    if not blocks or "conv_stem.weight" not in state:
        raise CheckpointError("not a timm MobileNet state dict: no conv_stem.weight / blocks.* keys")
    minimal = not any(".se." in k for k in state)
    if f"{blocks[-1]}.conv.weight" in state:  # V3: the last 1×1 conv is a ConvBnAct block
        size = {16: "large", 12: "small"}.get(len(blocks))
        if size is None:
            raise CheckpointError(
                f"timm's MobileNetV3 has 16 (large) or 12 (small) blocks, these weights {len(blocks)}"
            )
        return f"mobilenet_v3_{size}" + ("_minimal" if minimal else "")
    return "mobilenet_v2" if "conv_head.weight" in state else "mobilenet_v1"


def _infer_torchvision(state: dict[str, torch.Tensor]) -> str:
    if "features.0.0.weight" not in state:
        raise CheckpointError("not a torchvision MobileNet state dict: no features.0.0.weight key")
    if any(k.startswith("features.1.conv.") for k in state):
        return "mobilenet_v2"
    n = len({k.split(".")[1] for k in state if k.startswith("features.")})
    size = {17: "large", 13: "small"}.get(n)
    if size is None:
        raise CheckpointError(f"torchvision's MobileNetV3 has 17 (large) or 13 (small) features, not {n}")
    minimal = not any(".fc1." in k for k in state)
    return f"mobilenet_v3_{size}" + ("_minimal" if minimal else "")


def _num_classes(state: dict[str, torch.Tensor], key: str) -> int:
    return int(state[key].shape[0]) if key in state else 0


def _mismatches(spec: NetSpec, keys: KeyMap, shapes: Callable[[str], tuple[int, ...] | None]) -> int:
    """How many channel counts of ``spec`` differ from the source's (read through ``keys``); 0 = this width."""
    expected: dict[str, int] = {"stem.conv.weight": spec.stem_channels}
    for block, ours in zip(spec.blocks, _block_paths(spec), strict=True):
        expected[f"{ours}.depthwise.conv.weight"] = block.mid_channels
        last = "pointwise" if block.kind == "separable" else "project"
        expected[f"{ours}.{last}.conv.weight"] = block.out_channels
        if block.se_channels:
            expected[f"{ours}.se.squeeze.weight"] = block.se_channels
    if spec.head_channels:
        expected["head.conv.weight"] = spec.head_channels
    if spec.pre_logits_channels:
        expected["pre_logits.0.weight"] = spec.pre_logits_channels
    wrong = 0
    for ours, channels in expected.items():
        shape = shapes(keys[ours]) if ours in keys else None
        wrong += shape is None or shape[0] != channels
    return wrong


def _infer_width(arch: str, minimal: bool, key_map: Callable[[NetSpec], KeyMap], shapes: Callable) -> float:
    """The width multiplier whose channel counts are the source's; else the closest, whose load then fails
    with an error naming the first tensor that does not fit."""
    best, fewest = 1.0, None
    for width in _WIDTHS:
        spec = build_spec(arch, width, minimal=minimal)
        wrong = _mismatches(spec, key_map(spec), shapes)
        if wrong == 0:
            return width
        if fewest is None or wrong < fewest:
            best, fewest = width, wrong
    return best


# -- conversion ----------------------------------------------------------------------------------------------
def convert_state_dict(
    state: dict[str, torch.Tensor],
    source: str,
    model: str | None = None,
    width: float | None = None,
    bn_eps: float | None = None,
    padding: str | None = None,
    tf: bool = False,
) -> MobileNet:
    """Build our model from a timm or torchvision state dict.

    ``model`` (our registry name), ``width`` and the class count are inferred from the keys and shapes unless
    given. ``tf=True`` marks a timm ``tf_*`` model: TensorFlow 'SAME' padding and BatchNorm eps 1e-3.
    ``bn_eps`` and ``padding`` override what the source implies. Any key or shape that does not fit raises
    :class:`CheckpointError` naming it.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown weight source {source!r}; expected one of {SOURCES}")
    if model is None:
        model = _infer_timm(state) if source == "timm" else _infer_torchvision(state)
    if model not in ARCH_OF_MODEL:
        raise ConfigError(f"cannot convert into {model!r}; expected one of {', '.join(ARCH_OF_MODEL)}")
    arch, minimal = ARCH_OF_MODEL[model]
    if source == "timm":
        num_classes = _num_classes(state, "classifier.weight")
        default_eps, default_padding = (1e-3, "same") if tf else (1e-5, "symmetric")
        blocks = _timm_blocks(state)

        def key_map(spec: NetSpec) -> KeyMap:
            return timm_key_map(spec, blocks, num_classes)
    else:
        num_classes = _num_classes(state, "classifier.1.weight" if arch == "v2" else "classifier.3.weight")
        default_eps, default_padding = (1e-5 if arch == "v2" else 1e-3), "symmetric"

        def key_map(spec: NetSpec) -> KeyMap:
            return torchvision_key_map(spec, num_classes)

    def shape_of(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    if width is None:
        width = _infer_width(arch, minimal, key_map, shape_of)
    net = build_mobilenet(
        arch,
        width=width,
        num_classes=num_classes,
        minimal=minimal,
        bn_eps=default_eps if bn_eps is None else bn_eps,
        padding=default_padding if padding is None else padding,
    )
    net.load_state_dict(_remap(state, key_map(net.spec), net.state_dict(), source, width))
    return net.eval()


def _remap(
    state: dict[str, torch.Tensor], keys: KeyMap, own: dict[str, torch.Tensor], source: str, width: float
) -> dict[str, torch.Tensor]:
    if set(keys) != set(own):  # a bug in the key maps, not in the user's file
        raise AssertionError(f"key map and model disagree: {sorted(set(keys) ^ set(own))[:5]}")
    unused = sorted(set(state) - set(keys.values()))
    if unused:
        raise CheckpointError(f"{source} weights have keys this model does not: {_few(unused)}")
    out = {}
    for ours, theirs in keys.items():
        if theirs not in state:
            if theirs.endswith("num_batches_tracked"):  # older checkpoints lack it; it does not affect outputs
                out[ours] = own[ours]
                continue
            raise CheckpointError(f"{source} weights lack {theirs} (for our {ours})")
        value = state[theirs]
        if value.shape != own[ours].shape and value.shape == (*own[ours].shape, 1, 1):
            value = value.flatten(1)  # a 1×1 conv after the pool is our Linear (V3's pre-logits)
        if value.shape != own[ours].shape:
            raise CheckpointError(
                f"{source} weight {theirs} has shape {tuple(value.shape)}, our {ours} at width {width} needs "
                f"{tuple(own[ours].shape)}"
            )
        out[ours] = value.to(own[ours].dtype)
    return out


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def convert_file(
    src: str | Path,
    dst: str | Path,
    source: str,
    model: str | None = None,
    width: float | None = None,
    bn_eps: float | None = None,
    padding: str | None = None,
    tf: bool | None = None,
) -> MobileNet:
    """Convert a timm/torchvision weight file into a checkpoint ``create_model(name, weights=dst)`` loads.

    ``tf`` defaults to whether the file's name starts with ``tf_`` (timm's names for ported TF weights).
    """
    if tf is None:
        tf = source == "timm" and Path(src).name.startswith("tf_")
    net = convert_state_dict(read_state_dict(src), source, model, width, bn_eps, padding, tf)
    save_weights(net, dst)
    return net


def to_torchvision(net: MobileNet) -> dict[str, torch.Tensor]:
    """Our model's weights in torchvision's layout (V2 and V3 Large/Small), e.g. to load into torchvision."""
    if net.config.minimal:
        raise CheckpointError("torchvision has no minimalistic MobileNetV3")
    own = net.state_dict()
    keys = torchvision_key_map(net.spec, net.config.num_classes)
    return {theirs: own[ours] for ours, theirs in keys.items()}

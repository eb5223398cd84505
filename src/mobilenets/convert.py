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

Nor do they record what the weights expect of an image, or what their outputs mean. A converted checkpoint
stores both (``mobilenets predict`` / ``eval`` / ``export`` read them): the eval transform each source documents
(torchvision's ``ImageClassification``: resize 256, centre crop 224, bilinear, ImageNet mean/std; timm's
``pretrained_cfg`` of the named model, ``TIMM_PRETRAINED``), and for 1000 outputs the ImageNet-1k class names
(1001: TF-Slim's extra background class first).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig
from mobilenets.errors import CheckpointError, ConfigError
from mobilenets.models.mobilenet import MobileNet, build_mobilenet
from mobilenets.models.specs import ARCH_OF_MODEL, NetSpec, build_spec

SOURCES = ("timm", "torchvision")
# Widths tried, in order, when the caller does not give one: the published multipliers first, then a fine grid.
_WIDTHS = (1.0, 0.75, 0.5, 0.35, 1.4, 1.3, 0.25, 1.25, 1.5, 2.0, *(round(0.05 * i, 2) for i in range(2, 41)))
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
KeyMap = dict[str, str]  # our state-dict key → the source's

# -- what the weights expect and mean --------------------------------------------------------------------------
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TensorFlow's [-1, 1] inputs
_IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] inputs (timm's MIIL ImageNet-21k weights)
# timm's ``pretrained_cfg`` (``timm.create_model(name).pretrained_cfg``, timm 1.0) of every pretrained tag our
# converter can load: (crop_pct, (mean, std), interpolation); all are 224 px inputs.
TIMM_PRETRAINED: dict[str, tuple[float, tuple[tuple[float, ...], tuple[float, ...]], str]] = {
    "mobilenetv1_100.ra4_e3600_r224_in1k": (0.875, _HALF, "bicubic"),
    "mobilenetv1_125.ra4_e3600_r224_in1k": (0.9, _HALF, "bicubic"),
    "mobilenetv2_050.lamb_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv2_100.ra_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv2_140.ra_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv3_large_100.ra_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv3_large_100.ra4_e3600_r224_in1k": (0.95, _HALF, "bicubic"),
    "mobilenetv3_large_100.miil_in21k_ft_in1k": (0.875, _UNIT, "bilinear"),
    "mobilenetv3_small_050.lamb_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv3_small_075.lamb_in1k": (0.875, _IMAGENET, "bicubic"),
    "mobilenetv3_small_100.lamb_in1k": (0.875, _IMAGENET, "bicubic"),
    **{
        f"tf_mobilenetv3_{size}.in1k": (0.875, _HALF, "bilinear")
        for size in ("large_075", "large_100", "large_minimal_100", "small_075", "small_100", "small_minimal_100")
    },
}
# The tag timm loads for a bare model name (its first pretrained tag).
_TIMM_DEFAULT_TAG = {
    "mobilenetv1_100": "ra4_e3600_r224_in1k",
    "mobilenetv1_125": "ra4_e3600_r224_in1k",
    "mobilenetv2_050": "lamb_in1k",
    "mobilenetv2_100": "ra_in1k",
    "mobilenetv2_140": "ra_in1k",
    "mobilenetv3_large_100": "ra_in1k",
    "mobilenetv3_small_050": "lamb_in1k",
    "mobilenetv3_small_075": "lamb_in1k",
    "mobilenetv3_small_100": "lamb_in1k",
    **{name.split(".")[0]: "in1k" for name in TIMM_PRETRAINED if name.startswith("tf_")},
}


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k (ILSVRC 2012) class names in the order every framework's classifier uses (sorted
    WordNet ids, n01440764 "tench" first): WordNet's first lemma of each synset; the two lemmas ImageNet uses
    twice are told apart ("crane (machine)" at 517, "tank suit" — the second "maillot" synset — at 639)."""
    text = resources.files("mobilenets.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000 or len(set(names)) != 1000:  # a damaged install, not a user error
        raise AssertionError(f"imagenet_classes.txt holds {len(names)} names ({len(set(names))} distinct)")
    return names


def class_names(num_classes: int) -> list[str] | None:
    """ImageNet's names for a 1000-way classifier, TF-Slim's background + ImageNet for 1001; else None."""
    if num_classes == 1000:
        return list(imagenet_classes())
    if num_classes == 1001:
        return ["background", *imagenet_classes()]
    return None


def timm_name_in(text: str) -> str | None:
    """The timm model name (``name.tag`` when the tag is there) that ``text`` — a path, e.g. the Hugging Face
    cache's ``models--timm--mobilenetv3_large_100.ra_in1k/.../model.safetensors`` — mentions; the longest wins
    (``tf_mobilenetv3_large_100`` over ``mobilenetv3_large_100``)."""
    candidates = sorted([*TIMM_PRETRAINED, *_TIMM_DEFAULT_TAG], key=len, reverse=True)
    for name in candidates:
        if re.search(rf"(?<![A-Za-z0-9_.]){re.escape(name)}(?![A-Za-z0-9_])", text):
            return name
    return None


def source_transform(source: str, timm_name: str | None = None, tf: bool = False) -> tuple[TransformConfig, str]:
    """The eval transform the source documents for its weights, and where that came from (for the user).

    torchvision: ``ImageClassification(crop_size=224)`` — resize 256, crop 224, bilinear, ImageNet mean/std
    (its ``IMAGENET1K_V1`` weights; the ``V2`` ones of mobilenet_v2 resize to 232). timm: the named model's
    ``pretrained_cfg``; unnamed, its usual settings — ``tf_*`` ports 0.5 mean/std and bilinear, the others
    ImageNet mean/std and bicubic, crop_pct 0.875."""
    if source == "torchvision":
        return TransformConfig(resolution=224, crop_pct=224 / 256), "torchvision ImageClassification (resize 256)"
    if timm_name is not None:
        full = timm_name if "." in timm_name else f"{timm_name}.{_TIMM_DEFAULT_TAG.get(timm_name, '')}"
        if full not in TIMM_PRETRAINED:
            raise ConfigError(f"no timm pretrained_cfg known for {timm_name!r}; known: {', '.join(TIMM_PRETRAINED)}")
        crop_pct, (mean, std), interpolation = TIMM_PRETRAINED[full]
        how = f"timm pretrained_cfg of {full}"
    else:
        crop_pct, (mean, std), interpolation = (0.875, _HALF, "bilinear") if tf else (0.875, _IMAGENET, "bicubic")
        how = "timm's usual settings for " + ("tf_* ports" if tf else "its own weights") + " (no model name given)"
    config = TransformConfig(
        resolution=224,
        crop_pct=crop_pct,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,  # type: ignore[arg-type]
    )
    return config, how


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
    timm_name: str | None = None,
    overwrite: bool = False,
) -> MobileNet:
    """Convert a timm/torchvision weight file into a checkpoint ``create_model(name, weights=dst)`` loads,
    with the class names and eval transform ``predict`` / ``eval`` / ``export`` use (:func:`converted_metadata`).

    ``timm_name`` (e.g. ``mobilenetv3_large_100.ra_in1k``) defaults to a timm model name found in ``src``'s
    path; ``tf`` defaults to whether that name (or the file's) starts with ``tf_`` (timm's ported TF weights).
    An existing ``dst`` is replaced only with ``overwrite``, and never when it is ``src`` itself.
    """
    from mobilenets.engine.checkpoints import save_model  # the engine's format: eval/predict read its metadata

    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise ConfigError(f"{dst} is the input file; write the conversion to another path")
    if Path(dst).is_dir():
        raise ConfigError(f"{dst} is a folder; name the checkpoint file to write")
    if Path(dst).exists() and not overwrite:
        raise ConfigError(f"{dst} already exists; pass --overwrite to replace it")

    if source == "timm" and timm_name is None:
        timm_name = timm_name_in(str(Path(src).resolve()))
    if tf is None:
        tf = source == "timm" and (timm_name or Path(src).name).startswith("tf_")
    net = convert_state_dict(read_state_dict(src), source, model, width, bn_eps, padding, tf)
    save_model(net, Path(dst), converted_metadata(net, source, timm_name, tf, src))
    return net


def converted_metadata(
    net: MobileNet, source: str, timm_name: str | None, tf: bool, src: str | Path = ""
) -> dict[str, Any]:
    """What a converted checkpoint carries besides the weights: the task, and the task metadata a trained one
    has — class names (ImageNet's for 1000 / 1001 outputs, else ``"0"``, ``"1"``, …) and the eval transform."""
    transform, how = source_transform(source, timm_name, tf)
    n = net.config.num_classes
    classes = class_names(n) or [str(i) for i in range(n)]
    return {
        "task": "classify",
        "args": {"model": net.registry_name, "resolution": transform.resolution},
        "metadata": {"classes": classes, "transform": transform.to_dict()},
        "converted": {"source": source, "file": Path(src).name, "timm_name": timm_name, "transform_from": how},
    }


def classifier_config(path: str | Path | None) -> dict[str, Any] | None:
    """The MobileNet config of a classification checkpoint (converted, or trained here; a run folder works
    too), or None for no path or a checkpoint of another model: what a detector's or segmenter's backbone must
    match to start from it (BatchNorm epsilon, padding)."""
    if not path:
        return None
    from mobilenets.checkpoint import read_info
    from mobilenets.engine.checkpoints import resolve_weights

    name, config = read_info(resolve_weights(path))
    return config if name in ARCH_OF_MODEL else None


def to_torchvision(net: MobileNet) -> dict[str, torch.Tensor]:
    """Our model's weights in torchvision's layout (V2 and V3 Large/Small), e.g. to load into torchvision."""
    if net.config.minimal:
        raise CheckpointError("torchvision has no minimalistic MobileNetV3")
    own = net.state_dict()
    keys = torchvision_key_map(net.spec, net.config.num_classes)
    return {theirs: own[ours] for ours, theirs in keys.items()}

"""The MobileNet backbone + classifier: one class for V1, V2 and V3, built from a resolved ``NetSpec``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mobilenets.errors import ConfigError, InputError
from mobilenets.models.blocks import InvertedResidual, make_block
from mobilenets.models.layers import ConvBNAct, make_activation
from mobilenets.models.specs import ARCHS, NetSpec, build_spec


@dataclass(frozen=True)
class MobileNetConfig:
    """Everything that decides a MobileNet's shape. Stored beside the weights in every checkpoint."""

    arch: str = "v2"
    width: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    output_stride: int = 32
    minimal: bool = False  # V3 "minimalistic": no SE, ReLU only, 3×3 kernels
    project_act: str = "linear"  # V2 Figure 6a ablation: "linear" (the design) | "relu6"
    shortcut: str = "bottleneck"  # V2 Figure 6b ablation: "bottleneck" (the design) | "expansion" | "none"
    bn_eps: float = 0.0  # 0 = the architecture's default (1e-5 for V1/V2 as torchvision, 1e-3 for V3)
    padding: str = "symmetric"  # "same" = TensorFlow SAME padding, for weights trained in TF (timm's tf_*)
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; expected one of {ARCHS}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.minimal and not self.arch.startswith("v3"):
            raise ConfigError(f"minimal applies to V3 only, not {self.arch!r}")

    @property
    def resolved_bn_eps(self) -> float:
        if self.bn_eps:
            return self.bn_eps
        return 1e-3 if self.arch.startswith("v3") else 1e-5

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureInfo:
    """A feature map the backbone can return: known without running the model."""

    name: str
    channels: int
    stride: int


# Input sides must be a multiple of the deepest stride so every feature map has an integer size.
INPUT_MULTIPLE = 32


def check_image_batch(x: torch.Tensor, in_chans: int, multiple: int = INPUT_MULTIPLE) -> None:
    if x.dim() != 4:
        raise InputError(f"expected a batch of images N×C×H×W, got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise InputError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise InputError(f"input size {h}×{w} must be at least {multiple} and divisible by {multiple}")


class MobileNet(nn.Module):
    """MobileNetV1 / V2 / V3 with a classifier.

    Submodules are named as the papers speak: ``stem``, ``stages[i][j]`` (each block with ``expand``,
    ``depthwise``, ``se``, ``project``), ``head`` (the last 1×1 conv), ``pre_logits`` (V3's 1×1 conv without
    BN after the pool), ``classifier``.
    """

    model_name = "mobilenet"

    def __init__(self, config: MobileNetConfig) -> None:
        super().__init__()
        self.config = config
        self.spec: NetSpec = build_spec(
            config.arch,
            config.width,
            config.output_stride,
            config.minimal,
            config.project_act,
            config.shortcut,
        )
        spec, eps, pad = self.spec, config.resolved_bn_eps, config.padding
        self.stem = ConvBNAct(config.in_chans, spec.stem_channels, 3, 2, act=spec.stem_act, bn_eps=eps, padding=pad)
        self.stages = nn.ModuleList(
            nn.Sequential(*(make_block(spec.blocks[i], eps, pad) for i in stage)) for stage in spec.stages
        )
        last = spec.blocks[-1].out_channels
        self.head = (
            ConvBNAct(last, spec.head_channels, 1, act=spec.head_act, bn_eps=eps) if spec.head_channels else None
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre_logits: nn.Module | None = None
        if spec.pre_logits_channels:
            self.pre_logits = nn.Sequential(
                nn.Linear(spec.head_channels, spec.pre_logits_channels), make_activation(spec.pre_logits_act)
            )
        self.drop = nn.Dropout(config.dropout)
        self.classifier: nn.Module = self._make_classifier(config.num_classes)
        self._init_weights()

    # -- construction -------------------------------------------------------------------------------------
    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.spec.num_features, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (fine-tuning on another label set); 0 removes it."""
        self.classifier = self._make_classifier(num_classes)
        self.config = MobileNetConfig(**{**self.config.to_dict(), "num_classes": num_classes})
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def _init_weights(self) -> None:
        # torchvision's initialisation: He (fan-out) for convs, N(0, 0.01) for linear layers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # -- features -----------------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        """All blocks in order, flat (``blocks[i]`` is the (i+1)-th bottleneck of the paper's table)."""
        return [block for stage in self.stages for block in stage]

    def block_path(self, index: int) -> str:
        """The state-dict prefix of flat block ``index`` (``stages.s.j``)."""
        for s, stage in enumerate(self.spec.stages):
            if index in stage:
                return f"stages.{s}.{stage.index(index)}"
        raise ConfigError(f"block index {index} out of range (0..{len(self.spec.blocks) - 1})")

    def feature_info(self) -> list[FeatureInfo]:
        """Every tap ``forward_taps`` accepts, with its channels and stride, computed from the spec."""
        spec = self.spec
        infos = [FeatureInfo("stem", spec.stem_channels, 2)]
        in_stride = 2
        for i, (block, stride) in enumerate(zip(spec.blocks, spec.block_strides, strict=True)):
            if block.kind == "inverted":
                infos.append(FeatureInfo(f"blocks.{i}.expansion", block.mid_channels, in_stride))
            infos.append(FeatureInfo(f"blocks.{i}", block.out_channels, stride))
            in_stride = stride
        for s, stage in enumerate(spec.stages):
            infos.append(FeatureInfo(f"stage{s}", spec.blocks[stage[-1]].out_channels, spec.block_strides[stage[-1]]))
        if spec.head_channels:
            infos.append(FeatureInfo("head", spec.head_channels, spec.block_strides[-1]))
        return infos

    def tap_info(self, names: Iterable[str]) -> list[FeatureInfo]:
        known = {f.name: f for f in self.feature_info()}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"unknown feature tap(s) {missing}; see feature_info() for the available names")
        return [known[n] for n in names]

    def forward_taps(
        self, x: torch.Tensor, names: Iterable[str], input_multiple: int = INPUT_MULTIPLE
    ) -> dict[str, torch.Tensor]:
        """Run the backbone only as far as needed and return the named feature maps.

        Dense-prediction heads pass ``input_multiple=1``: they upsample to the input size, so sides such as
        DeepLab's 513 (every stride-2 layer then rounds up: 257, 129, 65, 33) are fine.
        """
        wanted = [f.name for f in self.tap_info(list(names))]
        check_image_batch(x, self.config.in_chans, input_multiple)
        out: dict[str, torch.Tensor] = {}
        stage_end = {stage[-1]: s for s, stage in enumerate(self.spec.stages)}

        def keep(name: str, value: torch.Tensor) -> bool:
            if name in wanted:
                out[name] = value
            return len(out) == len(wanted)

        x = self.stem(x)
        if keep("stem", x):
            return {n: out[n] for n in wanted}
        for i, block in enumerate(self.blocks):
            if isinstance(block, InvertedResidual) and f"blocks.{i}.expansion" in wanted:
                expanded = block.forward_expansion(x)
                keep(f"blocks.{i}.expansion", expanded)
                x = block.forward_from_expansion(x, expanded)
            else:
                x = block(x)
            done = keep(f"blocks.{i}", x)
            if i in stage_end:
                done = keep(f"stage{stage_end[i]}", x)
            if done:
                return {n: out[n] for n in wanted}
        if self.head is not None:
            keep("head", self.head(x))
        return {n: out[n] for n in wanted}

    # -- classification -----------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, blocks and the last 1×1 conv: the final feature map before pooling."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x) if self.head is not None else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        if pre_logits:
            return x
        return self.classifier(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.config.in_chans)
        return self.forward_head(self.forward_features(x))


def build_mobilenet(arch: str, /, **overrides: object) -> MobileNet:
    stored_arch = overrides.pop("arch", arch)  # present when the config comes from a checkpoint
    if stored_arch != arch:
        raise ConfigError(f"config is for architecture {stored_arch!r}, not {arch!r}")
    try:
        config = MobileNetConfig(arch=arch, **overrides)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"invalid option for a MobileNet: {e}") from None
    model = MobileNet(config)
    model.registry_name = _registry_name(config)
    return model


def _registry_name(config: MobileNetConfig) -> str:
    name = {"v1": "mobilenet_v1", "v2": "mobilenet_v2"}.get(config.arch, f"mobilenet_{config.arch}")
    return f"{name}_minimal" if config.minimal else name

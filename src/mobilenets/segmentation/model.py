"""Mobile DeepLabv3 (V2 paper §6.3) and LR-ASPP (V3 paper §6.3) on MobileNet backbones.

DeepLabv3 reads the backbone's *second-to-last* feature map — the output of the last bottleneck (320 channels on
V2, 1024 on V1); V2's 1280-channel 1×1 conv is dropped ("MNet V2*" in Table 7). Past the output stride (16 or 8)
the backbone dilates instead of striding (``MobileNetConfig.output_stride``). The head is either the full ASPP
(DeepLabv3 §3.3: a 1×1 branch, three 3×3 atrous branches at rates 6/12/18 for OS 16 — doubled for OS 8 — and an
image-pooling branch, 256 channels each, concatenated and fused by a 1×1 conv) or the reduced head of Table 7's
"without ASPP" rows, which keeps only the 1×1 and image-pooling branches.

LR-ASPP (V3 Figure 10): on the last 1×1 conv of V3 (960 / 576 channels, at OS 16), a 1×1 conv to 128 channels
gated by a sigmoid of pooled features, upsampled to the 1/8 features, classified and added to a classifier of
the 1/8 features. Pooling: the paper uses a 49×49 average pool with stride (16, 20), sized for 769×769 training
crops of Cityscapes, which is a global pool at the training crop and a local one at full 1024×2048. We pool
*globally* (as torchvision does), so the model is defined for any input size and behaves the same at training
and evaluation sizes. The 1/8 skip is the end of the last stride-8 stage (V3-Large ``blocks.5``, 40 channels;
V3-Small ``blocks.2``, 24 channels); torchvision takes the first stride-8 block instead. The paper's
"reduced tail" (halved last stage) is not applied: the backbone is V3 as its Tables 1 and 2 print it.
``lraspp_mobilenet_v2`` is the same head on MobileNetV2 (not in either paper): the high branch is V2's last 1×1
conv (1280 channels, at OS 16), the 1/8 skip the end of V2's stride-8 stage (``blocks.5``, 32·α channels).

Every model upsamples its logits bilinearly to the input size, so any input side works; DeepLab evaluates
513×513 crops (stride-2 layers round up: 257, 129, 65, 33), the size at which Table 7's figures are reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import ConfigError
from mobilenets.models.layers import ConvBNAct
from mobilenets.models.mobilenet import MobileNet, MobileNetConfig, check_image_batch
from mobilenets.models.specs import build_spec
from mobilenets.registry import register_model

HEADS = ("deeplabv3", "lraspp")
# DeepLabv3 §3.3: rates (6, 12, 18) at output stride 16, doubled at output stride 8.
ASPP_RATES_OS16 = (6, 12, 18)


@dataclass(frozen=True)
class SegmentationConfig:
    """Everything that decides a segmentation model's shape. Stored beside the weights in every checkpoint."""

    arch: str = "v2"  # backbone: "v1" | "v2" | "v3_large" | "v3_small"
    head: str = "deeplabv3"  # "deeplabv3" | "lraspp"
    num_classes: int = 21  # PASCAL VOC: 20 classes + background
    width: float = 1.0
    output_stride: int = 16
    aspp: bool = True  # DeepLabv3 only: full ASPP, or the reduced head (1×1 + image pooling)
    head_channels: int = 0  # 0 = the paper's: 256 for DeepLabv3, 128 for LR-ASPP
    dropout: float = 0.1  # before the classifier (DeepLab's keep_prob 0.9)
    context: int = 0  # LR-ASPP only: k > 0 adds a k×k depthwise-separable block to the high branch (not in the paper)
    naming_pool: int = 0  # LR-ASPP only: k > 0 adds the naming branch on k×k-pooled features (not in the paper)
    bn_eps: float = 0.0  # 0 = the backbone's default
    in_chans: int = 3
    padding: str = "symmetric"  # the backbone's: "same" for weights trained in TensorFlow (timm's tf_*)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"unknown segmentation head {self.head!r}; expected one of {HEADS}")
        if self.head == "lraspp" and self.arch == "v1":
            raise ConfigError("LR-ASPP needs a backbone with a last 1×1 conv: MobileNetV2 or V3, not 'v1'")
        if self.head == "lraspp" and not self.aspp:
            raise ConfigError("aspp=False applies to DeepLabv3 only; LR-ASPP has a single head")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"output stride must be 8, 16 or 32, got {self.output_stride}")
        if self.head_channels < 0:
            raise ConfigError(f"head_channels must be >= 0, got {self.head_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.context < 0 or (self.context and self.context % 2 == 0):
            raise ConfigError(f"context must be 0 (none) or an odd kernel size, got {self.context}")
        if self.context and self.head != "lraspp":
            raise ConfigError("context applies to LR-ASPP only (DeepLabv3's ASPP is its context module)")
        if self.naming_pool < 0 or (self.naming_pool and self.naming_pool % 2 == 0):
            raise ConfigError(f"naming_pool must be 0 (none) or an odd window size, got {self.naming_pool}")
        if self.naming_pool and self.head != "lraspp":
            raise ConfigError("naming_pool applies to LR-ASPP only (it reads the last 1×1 conv DeepLabv3 drops)")
        if self.naming_pool and self.num_classes < 3:
            raise ConfigError("naming_pool needs a background class 0 and at least two object classes")
        if self.padding not in ("symmetric", "same"):
            raise ConfigError(f"padding must be 'symmetric' or 'same' (TensorFlow's), got {self.padding!r}")

    @property
    def resolved_head_channels(self) -> int:
        return self.head_channels or (256 if self.head == "deeplabv3" else 128)

    @property
    def atrous_rates(self) -> tuple[int, ...]:
        """ASPP rates for this output stride (empty for the reduced head)."""
        if not self.aspp:
            return ()
        return tuple(r * 16 // self.output_stride for r in ASPP_RATES_OS16)

    def backbone_config(self) -> MobileNetConfig:
        return MobileNetConfig(
            arch=self.arch,
            width=self.width,
            num_classes=0,
            dropout=0.0,
            output_stride=self.output_stride,
            bn_eps=self.bn_eps,
            padding=self.padding,
            in_chans=self.in_chans,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def backbone_overrides(init: str | None) -> dict[str, object]:
    """The config fields that build the backbone as the classification checkpoint ``init`` (converted or trained
    here) computes: its BatchNorm epsilon (the head's too) and padding. Empty for no or another kind of file."""
    from mobilenets.convert import classifier_config

    config = classifier_config(init)
    if config is None:
        return {}
    return {"bn_eps": float(config.get("bn_eps", 0.0)), "padding": config.get("padding", "symmetric")}


def _build_backbone(config: SegmentationConfig, keep_head: bool) -> MobileNet:
    backbone = MobileNet(config.backbone_config())
    # Only the feature extractor is used: the classifier side goes, so it holds no parameters to count or to
    # leave without gradients under DDP.
    if not keep_head:
        backbone.head = None  # V2 §6.3: the 1280-channel conv is dropped
    backbone.pre_logits = None
    return backbone


def _upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ImagePooling(nn.Module):
    """DeepLabv3 §3.3 image-level features: global average pool, 1×1 conv + BN + ReLU, upsample back."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNAct(in_channels, out_channels, 1, act="relu", bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.conv(self.pool(x)), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling; with no ``rates`` it is Table 7's reduced head (1×1 + image pooling)."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...], bn_eps: float) -> None:
        super().__init__()
        self.rates = rates
        self.conv1x1 = ConvBNAct(in_channels, channels, 1, act="relu", bn_eps=bn_eps)
        self.atrous = nn.ModuleList(
            ConvBNAct(in_channels, channels, 3, dilation=r, act="relu", bn_eps=bn_eps) for r in rates
        )
        self.image_pool = ImagePooling(in_channels, channels, bn_eps)
        self.fuse = ConvBNAct(channels * (2 + len(rates)), channels, 1, act="relu", bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv1x1(x), *(conv(x) for conv in self.atrous), self.image_pool(x)]
        return self.fuse(torch.cat(branches, dim=1))


class DeepLabV3(nn.Module):
    """Mobile DeepLabv3: backbone (dilated past the output stride) → ASPP → 1×1 classifier → bilinear ×OS."""

    task = "segment"

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _build_backbone(config, keep_head=False)
        # The second-to-last feature map: the last block's output (V2: blocks.16, 320 ch; V1: blocks.12, 1024 ch).
        (self.tap,) = self.backbone.tap_info([f"blocks.{len(self.backbone.spec.blocks) - 1}"])
        eps = self.backbone.config.resolved_bn_eps
        channels = config.resolved_head_channels
        self.head = ASPP(self.tap.channels, channels, config.atrous_rates, eps)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Conv2d(channels, config.num_classes, 1)
        _init_head(self)

    @property
    def backbone_taps(self) -> tuple[str, ...]:
        """The backbone feature map the head reads (a ``MobileNet.forward_taps`` name)."""
        return (self.tap.name,)

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the output stride (what Table 7's multiply-adds count)."""
        check_image_batch(x, self.config.in_chans, multiple=1)
        features = self.backbone.forward_taps(x, self.backbone_taps, input_multiple=1)[self.tap.name]
        return self.classifier(self.drop(self.head(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits N×K×H×W at the input size."""
        return _upsample(self.forward_raw(x), x.shape[-2:])


class LRASPP(nn.Module):
    """LR-ASPP (V3 §6.3, Figure 10) on MobileNetV3 (or V2) at output stride 16 (default) with a 1/8 skip."""

    task = "segment"

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _build_backbone(config, keep_head=True)
        (self.high_tap,) = self.backbone.tap_info(["head"])
        # The 1/8 skip is the end of the backbone's own stride-8 stage, whatever the output stride dilates.
        natural = build_spec(config.arch, config.width).block_strides
        (self.low_tap,) = self.backbone.tap_info([f"blocks.{max(i for i, s in enumerate(natural) if s == 8)}"])
        eps = self.backbone.config.resolved_bn_eps
        channels = config.resolved_head_channels
        self.project = ConvBNAct(self.high_tap.channels, channels, 1, act="relu", bn_eps=eps)
        # The gate: pooled features → 1×1 conv → sigmoid (global pooling; see the module docstring).
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(self.high_tap.channels, channels, 1, bias=False), nn.Sigmoid()
        )
        # Optional (``context=k``, not in the V3 paper): a k×k depthwise + 1×1 block on the gated 1/16 features, so
        # that each position's class is read from a neighbourhood (an object) rather than from one position.
        self.context = (
            nn.Sequential(
                ConvBNAct(channels, channels, config.context, groups=channels, act="relu", bn_eps=eps),
                ConvBNAct(channels, channels, 1, act="relu", bn_eps=eps),
            )
            if config.context
            else nn.Identity()
        )
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.ModuleDict(
            {
                "high": nn.Conv2d(channels, config.num_classes, 1),
                "low": nn.Conv2d(self.low_tap.channels, config.num_classes, 1),
            }
        )
        # Optional (``naming_pool=k``, not in the V3 paper): the naming branch. A classification network names an
        # object from its last 1×1 conv averaged over the whole view; here the same features are averaged over a
        # k×k window around each 1/16 position and a linear classifier over the object classes (1..K-1) reads
        # them. Its log-softmax is added to the object-class logits, so it decides *which* object class a pixel
        # is, never object against background (adding the same amount to every object logit changes neither).
        # ``--init`` from a classification checkpoint of the same classes starts it as that checkpoint's
        # classifier (``load_classifier``): the k×k window of the scene is named as the classifier names a view.
        self.naming = (
            nn.Sequential(
                nn.AvgPool2d(config.naming_pool, stride=1, padding=config.naming_pool // 2, count_include_pad=False),
                nn.Dropout(config.dropout),
                nn.Conv2d(self.high_tap.channels, config.num_classes - 1, 1),
            )
            if config.naming_pool
            else None
        )
        _init_head(self)

    @property
    def backbone_taps(self) -> tuple[str, ...]:
        """The backbone feature maps the head reads: the 1/8 skip and the last 1×1 conv's output."""
        return (self.low_tap.name, self.high_tap.name)

    def load_classifier(self, weight: torch.Tensor, bias: torch.Tensor) -> bool:
        """Start the naming branch as a classifier's linear layer (``weight`` (K-1)×C, ``bias`` K-1; the
        classifier's class c is the segmenter's class c + 1). False when there is no naming branch or the shapes
        differ (the branch then keeps its initialisation)."""
        if self.naming is None:
            return False
        conv = self.naming[-1]
        if tuple(weight.shape) != tuple(conv.weight.shape[:2]) or tuple(bias.shape) != tuple(conv.bias.shape):
            return False
        with torch.no_grad():
            conv.weight.copy_(weight.reshape(conv.weight.shape))
            conv.bias.copy_(bias)
        return True

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the 1/8 skip's resolution."""
        check_image_batch(x, self.config.in_chans, multiple=1)
        taps = self.backbone.forward_taps(x, self.backbone_taps, input_multiple=1)
        low, high = taps[self.low_tap.name], taps[self.high_tap.name]
        gated = _upsample(self.context(self.project(high) * self.gate(high)), low.shape[-2:])
        logits = self.classifier["high"](self.drop(gated)) + self.classifier["low"](low)
        if self.naming is None:
            return logits
        names = _upsample(F.log_softmax(self.naming(high), dim=1), low.shape[-2:])
        return torch.cat([logits[:, :1], logits[:, 1:] + names], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits N×K×H×W at the input size."""
        return _upsample(self.forward_raw(x), x.shape[-2:])


SegmentationModel = DeepLabV3 | LRASPP


def _init_head(model: nn.Module) -> None:
    """Head convs: He fan-out, as the backbone (initialised by MobileNet itself). The per-pixel classifiers:
    N(0, 0.01) and zero bias, as the classification head — He-initialised they start with logits of size ~10
    (a first loss of ~9 for 11 classes) whose gradients scramble a backbone loaded from a classifier."""
    classifier_ids = {id(m) for m in model.classifier.modules()}  # one conv (DeepLab) or a ModuleDict (LR-ASPP)
    if getattr(model, "naming", None) is not None:
        classifier_ids |= {id(m) for m in model.naming.modules()}
    for name, m in model.named_modules():
        if name.startswith("backbone") or not isinstance(m, nn.Conv2d):
            continue
        if id(m) in classifier_ids:
            nn.init.normal_(m.weight, 0, 0.01)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


_NAMES = {
    ("deeplabv3", "v1"): "deeplabv3_mobilenet_v1",
    ("deeplabv3", "v2"): "deeplabv3_mobilenet_v2",
    ("lraspp", "v2"): "lraspp_mobilenet_v2",
    ("lraspp", "v3_large"): "lraspp_mobilenet_v3_large",
    ("lraspp", "v3_small"): "lraspp_mobilenet_v3_small",
}


def build_segmentation_model(head: str, arch: str, /, **overrides: object) -> DeepLabV3 | LRASPP:
    """Build a segmentation model; ``overrides`` are ``SegmentationConfig`` fields (a checkpoint's config
    includes ``head`` and ``arch``, which must agree with the registered name)."""
    for key, expected in (("head", head), ("arch", arch)):
        stored = overrides.pop(key, expected)
        if stored != expected:
            raise ConfigError(f"config is for {key} {stored!r}, not {expected!r}")
    try:
        config = SegmentationConfig(arch=arch, head=head, **overrides)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"invalid option for a segmentation model: {e}") from None
    model: DeepLabV3 | LRASPP = DeepLabV3(config) if head == "deeplabv3" else LRASPP(config)
    model.registry_name = _NAMES[(head, arch)]
    return model


@register_model("deeplabv3_mobilenet_v2")
def deeplabv3_mobilenet_v2(**overrides: object) -> DeepLabV3 | LRASPP:
    """Mobile DeepLabv3 on MobileNetV2's 320-channel map, V2 paper §6.3 / Table 7 ("MNet V2*")."""
    return build_segmentation_model("deeplabv3", "v2", **overrides)


@register_model("deeplabv3_mobilenet_v1")
def deeplabv3_mobilenet_v1(**overrides: object) -> DeepLabV3 | LRASPP:
    """DeepLabv3 on MobileNetV1's last 1024-channel map, V2 paper Table 7 ("MNet V1")."""
    return build_segmentation_model("deeplabv3", "v1", **overrides)


@register_model("lraspp_mobilenet_v2")
def lraspp_mobilenet_v2(**overrides: object) -> DeepLabV3 | LRASPP:
    """LR-ASPP (V3 Figure 10) on MobileNetV2's last 1×1 conv with the 1/8 skip (this library's combination)."""
    return build_segmentation_model("lraspp", "v2", **overrides)


@register_model("lraspp_mobilenet_v3_large")
def lraspp_mobilenet_v3_large(**overrides: object) -> DeepLabV3 | LRASPP:
    """LR-ASPP on MobileNetV3-Large, V3 paper §6.3 / Figure 10."""
    return build_segmentation_model("lraspp", "v3_large", **overrides)


@register_model("lraspp_mobilenet_v3_small")
def lraspp_mobilenet_v3_small(**overrides: object) -> DeepLabV3 | LRASPP:
    """LR-ASPP on MobileNetV3-Small, V3 paper §6.3 / Figure 10."""
    return build_segmentation_model("lraspp", "v3_small", **overrides)

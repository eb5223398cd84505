"""SSDLite (MobileNetV2 paper §6.2) on MobileNetV1 / V2 / V3 backbones.

SSDLite is SSD with every regular convolution of the prediction layers replaced by a depthwise separable one
(3×3 depthwise + BN + ReLU6, then 1×1). On MobileNetV2 the first prediction layer reads the expansion output of
layer 15 (TF-Slim's count; our ``blocks.13.expansion``: 576 channels, output stride 16) and the second the last
1×1 conv (1280 channels, stride 32); four extra layers of 512, 256, 256 and 128 channels follow (each: 1×1 conv
to half the width, 3×3 depthwise stride 2, 1×1 conv), as TF's ``ssd_mobilenet_v2`` feature extractor builds them
with ``use_depthwise: true``.

Class-count convention: ``num_classes`` counts the object classes only (80 for COCO, as the paper's Tables 5
and 6). The classifier predicts ``num_classes + 1`` scores per anchor, index 0 being background — as the TF OD
API does (``num_classes: 90`` in the config, 91 outputs). Detected labels are 1..num_classes.

``profile()`` counts ``forward_raw`` (the network without post-processing); its per-module split has
``backbone`` and ``head`` (extra layers + prediction layers: the paper's Table 5 "SSDLite head").
``separable=False`` builds the original SSD head (regular 3×3 convolutions) for Table 5's baseline row: at 320²
with 80 classes it counts 14.8M params / 1.26B MAdds, the paper's 14.8M / 1.25B. The SSDLite head counts 2.1M
params (paper 2.1M) but 0.18B MAdds where the paper prints 0.35B; the same convention reproduces the SSD row, so
we report the difference rather than bend the count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mobilenets.detection.anchors import AnchorSpec, anchors_per_location, generate_anchors
from mobilenets.detection.boxes import batched_nms, decode
from mobilenets.errors import ConfigError
from mobilenets.models.layers import ConvBNAct
from mobilenets.models.mobilenet import MobileNet, MobileNetConfig, check_image_batch
from mobilenets.registry import register_model

# Backbone taps (stride 16, stride 32) per architecture:
# - v2: TF ``ssd_mobilenet_v2_feature_extractor``: layer_15/expansion_output and layer_19 (the 1280 conv).
# - v1: TF ``ssd_mobilenet_v1_feature_extractor``: Conv2d_11_pointwise (512) and Conv2d_13_pointwise (1024).
# - v3: V3 paper §6.2: "C4 is the expansion layer of the 13th bottleneck block" (Large; 9th for Small), the
#   stride-32 block's expansion at stride 16, then the last 1×1 conv.
TAPS = {
    "v1": ("blocks.10", "blocks.12"),
    "v2": ("blocks.13.expansion", "head"),
    "v3_large": ("blocks.12.expansion", "head"),
    "v3_small": ("blocks.8.expansion", "head"),
}
EXTRA_CHANNELS = (512, 256, 256, 128)


@dataclass(frozen=True)
class SSDLiteConfig:
    """Everything that decides an SSDLite model. Stored beside the weights in every checkpoint."""

    arch: str = "v2"
    width: float = 1.0
    num_classes: int = 80  # object classes, background excluded (see the module docstring)
    extra_channels: tuple[int, ...] = EXTRA_CHANNELS
    bn_eps: float = 1e-3  # TF OD API's batch_norm epsilon for the SSD layers
    # False = the original SSD head (regular 3×3 convolutions), the paper's Table 5 baseline
    separable: bool = True
    # TF ``ssd_anchor_generator``'s ``reduce_boxes_in_lowest_layer`` (true in the config): three anchors per
    # location on the stride-16 map (one of them at scale 0.1), or (False) the six every other layer has. On the
    # embedded scenes at 160 px full doubles the positives per object (1.00 → 1.99 anchors with IoU >= 0.5); at
    # 320 px it loses more small objects than it gains (``scripts/anchor_coverage.py``).
    reduce_lowest_layer: bool = True
    # Post-processing (TF config: batch_non_max_suppression iou 0.6, 100 per class / 100 in total). The
    # score threshold is raised from TF's 1e-8 and a pre-NMS top-k added to bound the work on a CPU.
    score_threshold: float = 0.01
    nms_iou: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    in_chans: int = 3
    # The backbone's BatchNorm epsilon (0: the architecture's default) and padding, as the classification weights
    # it starts from were trained: timm's tf_* ports use TF 'SAME' padding and eps 1e-3, its others eps 1e-5.
    backbone_bn_eps: float = 0.0
    backbone_padding: str = "symmetric"

    def __post_init__(self) -> None:
        if self.arch not in TAPS:
            raise ConfigError(f"unknown SSDLite backbone {self.arch!r}; expected one of {tuple(TAPS)}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 (object classes, background excluded), got {self.num_classes}")
        if len(self.extra_channels) != 4 or min(self.extra_channels) < 2:
            raise ConfigError(f"extra_channels must be 4 counts >= 2, got {self.extra_channels}")
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_iou <= 1 or self.max_detections < 1:
            raise ConfigError("need 0 <= score_threshold < 1, 0 < nms_iou <= 1 and max_detections >= 1")
        if self.backbone_padding not in ("symmetric", "same") or self.backbone_bn_eps < 0:
            raise ConfigError(
                f"backbone_padding must be 'symmetric' or 'same' and backbone_bn_eps >= 0, got "
                f"{self.backbone_padding!r} and {self.backbone_bn_eps}"
            )

    @property
    def anchor_spec(self) -> AnchorSpec:
        return AnchorSpec(reduce_boxes_in_lowest_layer=self.reduce_lowest_layer)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["extra_channels"] = list(self.extra_channels)
        return d


class ExtraLayer(nn.Module):
    """One extra feature layer: 1×1 conv to half the width, 3×3 depthwise stride 2, 1×1 conv (all BN + ReLU6).
    With ``separable=False`` (SSD): 1×1 conv to half the width, then a regular 3×3 stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float, separable: bool = True) -> None:
        super().__init__()
        mid = out_channels // 2
        self.reduce = ConvBNAct(in_channels, mid, 1, bn_eps=bn_eps)
        if separable:
            self.depthwise = ConvBNAct(mid, mid, 3, 2, groups=mid, bn_eps=bn_eps)
            self.expand = ConvBNAct(mid, out_channels, 1, bn_eps=bn_eps)
        else:
            self.depthwise = nn.Identity()
            self.expand = ConvBNAct(mid, out_channels, 3, 2, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.depthwise(self.reduce(x)))


class SeparablePredictor(nn.Module):
    """SSDLite prediction layer: 3×3 depthwise (BN, ReLU6) then a 1×1 conv with bias (no BN, no activation).
    With ``separable=False`` (SSD): one regular 3×3 conv with bias."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float, separable: bool = True) -> None:
        super().__init__()
        if separable:
            self.depthwise: nn.Module = ConvBNAct(in_channels, in_channels, 3, groups=in_channels, bn_eps=bn_eps)
            self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.depthwise = nn.Identity()
            self.pointwise = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SSDLiteHead(nn.Module):
    """Extra layers + one box and one class predictor per feature map (the paper's Table 5 "SSDLite head")."""

    def __init__(self, in_channels: list[int], config: SSDLiteConfig) -> None:
        super().__init__()
        eps = config.bn_eps
        chans = [*in_channels]
        self.extras = nn.ModuleList()
        for out in config.extra_channels:
            self.extras.append(ExtraLayer(chans[-1], out, eps, config.separable))
            chans.append(out)
        anchors = anchors_per_location(config.anchor_spec)
        classes = config.num_classes + 1
        sep = config.separable
        self.classification = nn.ModuleList(
            SeparablePredictor(c, a * classes, eps, sep) for c, a in zip(chans, anchors, strict=True)
        )
        self.regression = nn.ModuleList(
            SeparablePredictor(c, a * 4, eps, sep) for c, a in zip(chans, anchors, strict=True)
        )
        self.num_outputs = classes

    def feature_maps(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(taps)
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps

    def forward(self, taps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        maps = self.feature_maps(taps)
        logits, codes = [], []
        for fmap, cls, reg in zip(maps, self.classification, self.regression, strict=True):
            n = fmap.shape[0]
            # N×(k·C)×H×W -> N×(H·W·k)×C: row, column, then anchor — the order of generate_anchors
            logits.append(cls(fmap).permute(0, 2, 3, 1).reshape(n, -1, self.num_outputs))
            codes.append(reg(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(logits, 1), torch.cat(codes, 1), [(m.shape[-2], m.shape[-1]) for m in maps]


class SSDLite(nn.Module):
    """SSDLite detector. ``forward`` returns raw outputs in training mode and detections in eval mode;
    ``forward_raw`` always returns ``{"cls_logits": N×A×(C+1), "box_codes": N×A×4, "anchors": A×4}``."""

    task = "detect"

    def __init__(self, config: SSDLiteConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MobileNet(MobileNetConfig(arch=config.arch, width=config.width, num_classes=0,
                                                  in_chans=config.in_chans, bn_eps=config.backbone_bn_eps,
                                                  padding=config.backbone_padding))  # fmt: skip
        self.backbone.pre_logits = None  # V3's post-pool 1×1 conv belongs to the classifier, not the features
        self.taps = TAPS[config.arch]
        channels = [f.channels for f in self.backbone.tap_info(self.taps)]
        self.head = SSDLiteHead(channels, config)
        self._anchor_cache: dict[tuple[int, int, int, int], torch.Tensor] = {}
        self._init_head()

    @property
    def backbone_taps(self) -> tuple[str, ...]:
        """The backbone feature maps the head reads (``MobileNet.forward_taps`` names)."""
        return tuple(self.taps)

    def _init_head(self) -> None:
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                # TF config: truncated_normal_initializer stddev 0.03
                nn.init.trunc_normal_(m.weight, std=0.03, a=-0.06, b=0.06)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def anchors(self, grid_sizes: list[tuple[int, int]], image_size: tuple[int, int]) -> torch.Tensor:
        key = (*image_size, *grid_sizes[0])
        if key not in self._anchor_cache:
            self._anchor_cache[key] = generate_anchors(grid_sizes, image_size, self.config.anchor_spec)
        return self._anchor_cache[key]

    def forward_raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image_batch(x, self.config.in_chans)
        feats = self.backbone.forward_taps(x, self.taps)
        logits, codes, grids = self.head([feats[name] for name in self.taps])
        anchors = self.anchors(grids, (x.shape[-2], x.shape[-1])).to(device=x.device, dtype=codes.dtype)
        return {"cls_logits": logits, "box_codes": codes, "anchors": anchors}

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes N×A×4 (x1, y1, x2, y2 as fractions of the input, clamped to it) and class probabilities N×A×C
        (softmax, background dropped): everything before the per-class NMS, so it is also the ONNX graph."""
        boxes = decode(raw["box_codes"].float(), raw["anchors"].float()).clamp(0, 1)
        return boxes, raw["cls_logits"].float().softmax(-1)[..., 1:]

    @torch.no_grad()
    def select(
        self, boxes_all: torch.Tensor, scores_all: torch.Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, torch.Tensor]]:
        """Score threshold, top-k and per-class NMS over :meth:`decode_outputs`; boxes scaled to pixels."""
        cfg = self.config
        h, w = image_size
        scale = torch.tensor([w, h, w, h], dtype=boxes_all.dtype, device=boxes_all.device)
        results = []
        for boxes, scores in zip(boxes_all * scale, scores_all, strict=True):
            flat = scores.flatten()
            keep = (flat > cfg.score_threshold).nonzero().flatten()
            keep = keep[flat[keep].topk(min(cfg.pre_nms_top_k, len(keep))).indices]
            anchor_idx, labels = keep // cfg.num_classes, keep % cfg.num_classes + 1
            cand_boxes, cand_scores = boxes[anchor_idx], flat[keep]
            kept = batched_nms(cand_boxes, cand_scores, labels, cfg.nms_iou)[: cfg.max_detections]
            results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]})
        return results

    @torch.no_grad()
    def postprocess(self, raw: dict[str, torch.Tensor], image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Decode, softmax, per-class NMS. Boxes in pixels of the network input, labels 1..num_classes."""
        return self.select(*self.decode_outputs(raw), image_size)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections for a batch (any mode): one dict of ``boxes`` (pixels), ``scores``, ``labels`` per image."""
        return self.postprocess(self.forward_raw(x), (x.shape[-2], x.shape[-1]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        raw = self.forward_raw(x)
        return raw if self.training else self.postprocess(raw, (x.shape[-2], x.shape[-1]))

    def load_backbone(self, path: str) -> None:
        """Initialise the backbone from a classification checkpoint of the same architecture and width."""
        from mobilenets.checkpoint import load_into
        from mobilenets.registry import read_weights

        _, _, state = read_weights(path)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "pre_logits."))}
        load_into(self.backbone, state, source=str(path))


def backbone_overrides(init: str | None) -> dict[str, object]:
    """The SSDLite config fields that build the backbone as the classification checkpoint ``init`` (converted
    or trained here) computes: its BatchNorm epsilon and padding. Empty for no or another kind of checkpoint."""
    from mobilenets.convert import classifier_config

    config = classifier_config(init)
    if config is None:
        return {}
    return {"backbone_bn_eps": float(config.get("bn_eps", 0.0)), "backbone_padding": config.get("padding", "symmetric")}


def build_ssdlite(arch: str, /, **overrides: object) -> SSDLite:
    stored = overrides.pop("arch", arch)
    if stored != arch:
        raise ConfigError(f"config is for SSDLite backbone {stored!r}, not {arch!r}")
    if "extra_channels" in overrides:
        overrides["extra_channels"] = tuple(overrides["extra_channels"])  # type: ignore[arg-type]
    try:
        config = SSDLiteConfig(arch=arch, **overrides)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"invalid option for SSDLite: {e}") from None
    model = SSDLite(config)
    model.registry_name = f"ssdlite_mobilenet_{arch}"
    return model


@register_model("ssdlite_mobilenet_v2")
def ssdlite_mobilenet_v2(**overrides: object) -> SSDLite:
    """MobileNetV2 + SSDLite, V2 paper §6.2 / Table 6."""
    return build_ssdlite("v2", **overrides)


@register_model("ssdlite_mobilenet_v1")
def ssdlite_mobilenet_v1(**overrides: object) -> SSDLite:
    """MobileNetV1 + SSDLite, V2 paper Table 6."""
    return build_ssdlite("v1", **overrides)


@register_model("ssdlite_mobilenet_v3_large")
def ssdlite_mobilenet_v3_large(**overrides: object) -> SSDLite:
    """MobileNetV3-Large + SSDLite, V3 paper §6.2."""
    return build_ssdlite("v3_large", **overrides)


@register_model("ssdlite_mobilenet_v3_small")
def ssdlite_mobilenet_v3_small(**overrides: object) -> SSDLite:
    """MobileNetV3-Small + SSDLite, V3 paper §6.2."""
    return build_ssdlite("v3_small", **overrides)

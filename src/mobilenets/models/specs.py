"""The architectures as the papers print them, and the one function that turns those rows into block specs.

Each table is copied row by row under the paper's own column headers, so it can be read against the paper.
``build_spec`` applies the width multiplier, the output stride and the ablation switches, and records for
every block its channels, stride and dilation: heads read these instead of running a dummy image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mobilenets.errors import ConfigError
from mobilenets.models.layers import make_divisible

Arch = Literal["v1", "v2", "v3_large", "v3_small"]
ARCHS: tuple[str, ...] = ("v1", "v2", "v3_large", "v3_small")

# MobileNetV1, Table 1 of arXiv 1704.04861. Each row is one depthwise separable layer.
# The stem is "Conv / s2, 3×3×3×32"; "/2" in the paper is a stride-2 depthwise conv.
V1_STEM = 32
V1_ROWS: list[tuple[int, int]] = [
    # c,    s
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]

# MobileNetV2, Table 2 of arXiv 1801.04381: t expansion, c output channels, n repeats, s first stride.
V2_STEM = 32
V2_ROWS: list[tuple[int, int, int, int]] = [
    # t, c,   n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
V2_HEAD = 1280

# MobileNetV3-Large, Table 1 of arXiv 1905.02244. NL: RE = ReLU, HS = h-swish.
V3_LARGE_STEM = 16
V3_LARGE_ROWS: list[tuple[int, int, int, bool, str, int]] = [
    # k, exp, out,  SE,    NL,  s
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
V3_LARGE_HEAD = (960, 1280)  # conv2d 1×1 (BN, HS), then after the pool conv2d 1×1 NBN (HS)

# MobileNetV3-Small, Table 2 of arXiv 1905.02244. The paper also marks SE on the final 1×1 conv (576);
# the TF-Slim, torchvision and timm implementations (and their published weights) have none there, so neither do we.
V3_SMALL_STEM = 16
V3_SMALL_ROWS: list[tuple[int, int, int, bool, str, int]] = [
    # k, exp, out,  SE,    NL,  s
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
V3_SMALL_HEAD = (576, 1024)

_NL = {"RE": "relu", "HS": "hswish"}
# Registered classifier names → (paper table, minimalistic variant): what ``build_spec`` needs to rebuild one.
ARCH_OF_MODEL = {
    "mobilenet_v1": ("v1", False),
    "mobilenet_v2": ("v2", False),
    "mobilenet_v3_large": ("v3_large", False),
    "mobilenet_v3_small": ("v3_small", False),
    "mobilenet_v3_large_minimal": ("v3_large", True),
    "mobilenet_v3_small_minimal": ("v3_small", True),
}


@dataclass(frozen=True)
class BlockSpec:
    """One block, fully resolved: what the module builder and every analysis read."""

    kind: Literal["separable", "inverted"]  # V1 depthwise separable | V2/V3 inverted residual
    in_channels: int
    mid_channels: int  # expansion width (== in_channels when there is no expansion conv)
    out_channels: int
    kernel: int
    stride: int
    dilation: int
    act: str
    se_channels: int  # 0: no squeeze-and-excite
    project_act: str  # "linear" is the V2 design; "relu6" the Figure 6a ablation
    shortcut: Literal["bottleneck", "expansion", "none"]  # where the residual goes, if the block can have one

    @property
    def has_expand(self) -> bool:
        return self.kind == "inverted" and self.mid_channels != self.in_channels

    @property
    def has_residual(self) -> bool:
        # V2 §3.3: the shortcut exists only when the block keeps resolution and width.
        return self.kind == "inverted" and self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class NetSpec:
    """A whole backbone: stem, blocks grouped into stages, head convs, and the bookkeeping of strides."""

    arch: str
    stem_channels: int
    stem_act: str
    blocks: tuple[BlockSpec, ...]
    stages: tuple[tuple[int, ...], ...]  # block indices of each stage
    head_channels: int  # 1×1 conv (with BN) after the last block; 0 = none (V1)
    head_act: str
    pre_logits_channels: int  # V3's 1×1 conv without BN after the pool; 0 = none
    pre_logits_act: str
    block_strides: tuple[int, ...] = field(default=())  # output stride after each block

    @property
    def num_features(self) -> int:
        """Channels entering the classifier."""
        if self.pre_logits_channels:
            return self.pre_logits_channels
        return self.head_channels or self.blocks[-1].out_channels


def _check(width: float, output_stride: int) -> None:
    if not width > 0:
        raise ConfigError(f"width multiplier must be > 0, got {width}")
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output stride must be 8, 16 or 32, got {output_stride}")


def _rows(arch: str, minimal: bool) -> tuple[list[tuple[int, int, int, bool, str, int, bool]], int]:
    """Unify the tables as (kernel, exp, out, se, act, stride, exp_is_factor) rows plus the stem width."""
    if arch == "v1":
        # The paper says ReLU; TF-Slim and timm (and so every published checkpoint) use ReLU6.
        return [(3, 1, c, False, "relu6", s, True) for c, s in V1_ROWS], V1_STEM
    if arch == "v2":
        rows = []
        for t, c, n, s in V2_ROWS:
            rows += [(3, t, c, False, "relu6", s if i == 0 else 1, True) for i in range(n)]
        return rows, V2_STEM
    if arch in ("v3_large", "v3_small"):
        table, stem = (V3_LARGE_ROWS, V3_LARGE_STEM) if arch == "v3_large" else (V3_SMALL_ROWS, V3_SMALL_STEM)
        if minimal:
            # TF-Slim / Keras "minimalistic": no SE, no h-swish, 3×3 kernels only.
            return [(3, e, c, False, "relu", s, False) for _, e, c, _, _, s in table], stem
        return [(k, e, c, se, _NL[nl], s, False) for k, e, c, se, nl, s in table], stem
    raise ConfigError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def build_spec(
    arch: str,
    width: float = 1.0,
    output_stride: int = 32,
    minimal: bool = False,
    project_act: str = "linear",
    shortcut: str = "bottleneck",
) -> NetSpec:
    """Resolve a paper table at a width multiplier and output stride into block specs.

    Rounding follows TF-Slim and V2 §6.1: every channel count becomes ``make_divisible(c·α, 8)``; V2's last 1×1
    conv stays 1280 for α ≤ 1 and grows to 1280·α above. Past ``output_stride`` strides become 1 and later
    layers dilate (DeepLab's atrous trick): the block that loses its stride keeps the old rate.
    """
    _check(width, output_stride)
    if project_act not in ("linear", "relu6"):
        raise ConfigError(f"project_act must be 'linear' or 'relu6', got {project_act!r}")
    if shortcut not in ("bottleneck", "expansion", "none"):
        raise ConfigError(f"shortcut must be 'bottleneck', 'expansion' or 'none', got {shortcut!r}")
    rows, stem = _rows(arch, minimal)
    v3 = arch.startswith("v3")

    stem_channels = make_divisible(stem * width)
    stride, dilation = 2, 1  # after the stride-2 stem
    blocks: list[BlockSpec] = []
    strides: list[int] = []
    table_channels: list[int] = []  # each block's unscaled output width, which names its stage
    in_ch = stem_channels
    table_in = stem  # the previous row's unscaled width: V3's expansion ratio is exp / table_in
    for kernel, exp, out, se, act, s, exp_is_factor in rows:
        out_ch = make_divisible(out * width)
        if arch == "v1":
            mid = in_ch
        elif exp_is_factor:
            mid = in_ch * exp  # V2: t × (already rounded) input width
        else:
            # V3 tables list the expansion size itself; TF-Slim (mobilenet_v3.py: expand_input_by_factor) builds it
            # as ratio × the *rounded* input width, and so do the published α ≠ 1 checkpoints (timm's
            # tf_mobilenetv3_*_075) and the V3 paper's Table 3 (Large 0.75: 155M MAdds, 4.0M params).
            # Rounding exp·α instead (torchvision's rule) agrees at α = 1 only.
            mid = make_divisible(in_ch * exp / table_in)
        table_in = out
        block_dilation = dilation
        if s > 1:
            if stride * s > output_stride:
                dilation *= s
                s = 1
            else:
                stride *= s
        blocks.append(
            BlockSpec(
                kind="separable" if arch == "v1" else "inverted",
                in_channels=in_ch,
                mid_channels=mid,
                out_channels=out_ch,
                kernel=kernel,
                stride=s,
                dilation=block_dilation,
                act=act,
                se_channels=make_divisible(mid / 4) if se else 0,
                project_act=project_act,
                shortcut=shortcut,  # type: ignore[arg-type]
            )
        )
        strides.append(stride)
        table_channels.append(out)
        in_ch = out_ch

    # A stage is a run of blocks with the same output width in the paper's table (V2: one row of Table 2), as
    # TF-Slim and timm group them. Grouping by the *scaled* width would merge rows at small α (V2 0.35 rounds
    # both 16 and 24 to 8), so stage indices would change with the width.
    stages: list[list[int]] = []
    for i, channels in enumerate(table_channels):
        if not stages or table_channels[stages[-1][-1]] != channels:
            stages.append([])
        stages[-1].append(i)

    head_act = "relu" if minimal else ("hswish" if v3 else "relu6")
    if arch == "v1":
        head, pre_logits = 0, 0
    elif arch == "v2":
        head, pre_logits = (V2_HEAD if width <= 1.0 else make_divisible(V2_HEAD * width)), 0
    else:
        last_conv, hidden = V3_LARGE_HEAD if arch == "v3_large" else V3_SMALL_HEAD
        # The 1×1 conv before the pool scales with α; the one after it (1280 / 1024) does not: the published
        # TF checkpoints at α = 0.75 (timm's tf_mobilenetv3_*_075 ports) keep it, and with it the V3 paper's
        # Table 3 parameter counts come out (Large 0.75: 4.0M; scaling it too would give 3.4M).
        head, pre_logits = make_divisible(last_conv * width), hidden
    return NetSpec(
        arch=arch,
        stem_channels=stem_channels,
        stem_act=head_act if v3 else "relu6",
        blocks=tuple(blocks),
        stages=tuple(tuple(s) for s in stages),
        head_channels=head,
        head_act=head_act,
        pre_logits_channels=pre_logits,
        pre_logits_act=head_act,
        block_strides=tuple(strides),
    )

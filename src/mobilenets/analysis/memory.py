"""The paper's Table 3 (V2 §5.1), computed from a model: what must be materialised at each spatial resolution.

V2 §5.1 treats a bottleneck block as one operation whose inner tensors are disposable (the split executor in
``mobilenets.deploy.split`` makes that real). What must then exist in memory are the tensors *between*
operations: the stem output, every block output, the head output, the pooled vector and the logits. For each
spatial resolution this table gives the widest such tensor and its size with 16-bit activations, in Kb of 1000
bytes (the paper's unit: V2's 16 × 112² × 2 B = 401,408 B is its "400K").

Two fusions from the same argument are applied, as the paper does ("for the first layer of MobileNetV2 … we can
employ the trick described in Section 5"): the stem convolution is the expansion of a first block that has none
(V2's t = 1 block, V3's first block), so its output is never materialised; and the last 1×1 convolution followed
by the average pool is again linear-then-per-channel, so its 7×7 output is never materialised either (the paper
lists 1280 at 1×1, not 7×7).

Where the paper's own table differs: for V2 it lists at each resolution the output width of the blocks whose
*input* is at that resolution (56²: 32, 28²: 64, 14²: 160), where the tensors that exist at 56² are 24 wide; and
V1's 7² entry (199K) is twice 1024 × 7² × 2 B. The maxima, which are what the table argues from — V2 400K,
V1 1600K — agree.

Table 3 is a classifier's table. For a detection or segmentation model (a MobileNet ``backbone`` whose
``backbone_taps`` its head reads) there are no rows: its measured figures are the whole model's eager peak and the
fused engine's scratch for the backbone as far as those taps (the heads run in PyTorch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mobilenets.analysis.memtrace import peak_activation_bytes
from mobilenets.errors import ConfigError
from mobilenets.models.mobilenet import MobileNet

BYTES_PER_ACTIVATION = 2  # the paper assumes 16-bit floats
KB = 1000


@dataclass(frozen=True)
class MemoryRow:
    resolution: int  # side of the feature map
    max_channels: int
    kb: float  # max_channels × resolution² × 2 bytes / 1000


@dataclass(frozen=True)
class MemoryTable:
    model: str
    input_resolution: int
    rows: list[MemoryRow]  # empty for a detection or segmentation model (Table 3 is a classifier's)
    measured: dict[str, float]  # live-activation peaks of the executors (fp32 bytes) and optional peak RSS
    taps: tuple[str, ...] = ()  # a dense model's backbone taps, as far as the engine's activation_bytes runs

    @property
    def max_kb(self) -> float | None:
        return max(row.kb for row in self.rows) if self.rows else None

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "input_resolution": self.input_resolution,
            "bytes_per_activation": BYTES_PER_ACTIVATION,
            "kb_bytes": KB,
            "rows": [asdict(r) for r in self.rows],
            "max_kb": self.max_kb,
            "taps": list(self.taps),
            "measured": self.measured,
        }


def materialised_tensors(model: MobileNet, resolution: int) -> list[tuple[int, int]]:
    """(side, channels) of every tensor that exists between operations, blocks treated as one op (see above)."""
    spec = model.spec
    side = lambda stride: math.ceil(resolution / stride)  # noqa: E731
    tensors: list[tuple[int, int]] = []
    first = spec.blocks[0]
    if not (first.kind == "inverted" and not first.has_expand):
        tensors.append((side(2), spec.stem_channels))  # no fusion possible: V1's stem feeds a separable layer
    for block, stride in zip(spec.blocks, spec.block_strides, strict=True):
        tensors.append((side(stride), block.out_channels))
    if spec.head_channels:
        tensors.append((1, spec.head_channels))  # head conv fused with the pool: only the pooled vector exists
    else:
        tensors.append((1, spec.blocks[-1].out_channels))
    if spec.pre_logits_channels:
        tensors.append((1, spec.pre_logits_channels))
    if model.config.num_classes:
        tensors.append((1, model.config.num_classes))
    return tensors


def memory_rows(model: MobileNet, resolution: int = 224) -> list[MemoryRow]:
    """Table 3's rows for ``model`` at ``resolution``: widest materialised tensor per spatial size, largest first."""
    widest: dict[int, int] = {}
    for side, channels in materialised_tensors(model, resolution):
        widest[side] = max(widest.get(side, 0), channels)
    return [
        MemoryRow(side, channels, channels * side * side * BYTES_PER_ACTIVATION / KB)
        for side, channels in sorted(widest.items(), reverse=True)
    ]


def measured_peaks(
    model: nn.Module, name: str, resolution: int, groups: tuple[int, ...] = (4,), batch: int = 1, rss: bool = False
) -> dict[str, float]:
    """Peak live activation bytes (fp32) of the standard forward and the split executor at each t; with ``rss``,
    also the whole-process peak RSS of a fresh process around one forward of each (registered ``name``)."""
    from mobilenets.analysis.memtrace import peak_rss_bytes
    from mobilenets.deploy.split import split_model

    model = model.eval()
    x = torch.randn(batch, getattr(model.config, "in_chans", 3), resolution, resolution)
    out = {"batch": float(batch), "standard_bytes": float(peak_activation_bytes(model, x))}
    for t in groups:
        out[f"split_t{t}_bytes"] = float(peak_activation_bytes(split_model(model, t), x))
    out.update(engine_activation_bytes(model, resolution))
    if rss:
        for t in (1, *groups):
            peak = peak_rss_bytes(name, t, batch, resolution)
            label = "standard" if t == 1 else f"split_t{t}"
            out[f"{label}_rss_before_bytes"] = float(peak.before_forward)
            out[f"{label}_rss_peak_bytes"] = float(peak.after_forward)
    return out


def engine_activation_bytes(model: nn.Module, resolution: int, taps: tuple[str, ...] | None = None) -> dict[str, float]:
    """``activation_bytes``: the fused engine's scratch for one image at one thread, which holds every activation
    it keeps (wide blocks stream their expansion through a row ring, V2 §5.1): of the classifier ``model``, or
    with ``taps`` of the backbone ``model`` as far as those feature maps (which it includes). Empty where the
    engine cannot run the model or this machine."""
    from mobilenets.deploy import fused
    from mobilenets.deploy.fused_backbone import FusedBackbone
    from mobilenets.errors import MobilenetsError

    try:
        engine = fused.FusedEngine(model, threads=1) if taps is None else FusedBackbone(model, list(taps), threads=1)
    except MobilenetsError:  # a model the engine does not run, or no compiler / AVX2 here
        return {}
    return {"activation_bytes": float(engine.activation_bytes(resolution, resolution))}


def dense_backbone(model: nn.Module) -> tuple[MobileNet, tuple[str, ...]] | None:
    """A detection or segmentation model's MobileNet backbone and the taps its head reads; None for anything else."""
    backbone, taps = getattr(model, "backbone", None), getattr(model, "backbone_taps", None)
    if isinstance(backbone, MobileNet) and taps:
        return backbone, tuple(taps)
    return None


def dense_peaks(
    model: nn.Module, backbone: MobileNet, taps: tuple[str, ...], resolution: int, batch: int
) -> dict[str, float]:
    """A dense model's measured figures: the whole eager forward's peak live activations (fp32 bytes) and the
    engine's scratch for its backbone as far as ``taps``."""
    x = torch.randn(batch, backbone.config.in_chans, resolution, resolution)
    out = {"batch": float(batch), "standard_bytes": float(peak_activation_bytes(model.eval(), x))}
    out.update(engine_activation_bytes(backbone.eval(), resolution, taps))
    return out


def memory_table(
    model: nn.Module,
    name: str,
    resolution: int = 224,
    measure: bool = True,
    groups: tuple[int, ...] = (4,),
    batch: int = 1,
    rss: bool = False,
) -> MemoryTable:
    """Table 3 for a MobileNet classifier, with the executors' measured peaks beside it when ``measure``; for a
    detection or segmentation model no rows, and its eager peak and the engine's backbone scratch (``measure``).
    The split executor's groups and ``rss`` apply to classifiers."""
    dense = dense_backbone(model)
    if not isinstance(model, MobileNet) and dense is None:
        raise ConfigError(
            f"{name!r} is not a MobileNet classifier, detector or segmenter; the memory table needs its block specs"
        )
    if resolution < 32 or resolution % 32:
        raise ConfigError(f"resolution must be a multiple of 32 and at least 32, got {resolution}")
    if dense is not None:
        backbone, taps = dense
        measured = dense_peaks(model, backbone, taps, resolution, batch) if measure else {}
        return MemoryTable(name, resolution, [], measured, taps)
    assert isinstance(model, MobileNet)
    measured = measured_peaks(model, name, resolution, groups, batch, rss) if measure else {}
    return MemoryTable(name, resolution, memory_rows(model, resolution), measured)

"""The fused engine as a detection or segmentation backbone: a MobileNet run to its feature taps (SSDLite's
layer-15 expansion and last 1×1 conv, V2 §6.2; DeepLab's last block, V2 §6.3; LR-ASPP's stride-8 block and last
1×1 conv, V3 §6.3), the heads staying in PyTorch.

``FusedBackbone(backbone, taps)`` runs the classifier program of ``fused.FusedEngine`` cut after its last tap, with
a TAP layer (``MN_TAP`` in ``csrc/abi.h``) wherever a tapped map is complete: the engine copies the map (NHWC) into
the caller's output, and ``engine(x)`` returns the same dict of NCHW maps as ``backbone.forward_taps(x, taps)``
(``tests/test_fused_backbone.py``: ≤ 1e-4 in fp32). A block's expansion tap splits that block into its expansion
(a 1×1 layer), the tap, and the block without expansion, so the expanded map is written out whole once — the
price of reading it, which the streaming blocks otherwise avoid (V2 §5.1). A block with a residual keeps its
shortcut only whole, so its expansion cannot be tapped (no SSDLite tap is on one: each is the stride-2 block's).

``engine_model(model, ...)`` is a detection or segmentation model whose backbone is such an engine: what
``mobilenets eval|predict --engine fused|fused-int8`` run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from mobilenets.deploy import fused
from mobilenets.deploy.fused import FusedEngine, _Conv, _Layer
from mobilenets.errors import ConfigError
from mobilenets.models.mobilenet import INPUT_MULTIPLE, MobileNet, check_image_batch

_TAP = 5  # MN_TAP in csrc/abi.h


def _positions(backbone: MobileNet, taps: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """Each tap's place in the classifier program (0 the stem, 1 + i block i, then the head) and whether it is the
    expansion inside that layer rather than its output."""
    backbone.tap_info(taps)  # unknown names: ConfigError
    n_blocks = len(backbone.spec.blocks)
    places: dict[str, tuple[int, bool]] = {}
    for name in taps:
        parts = name.split(".")
        if name == "stem":
            places[name] = (0, False)
        elif name == "head":
            places[name] = (1 + n_blocks, False)
        elif name.startswith("stage"):
            places[name] = (1 + backbone.spec.stages[int(name[len("stage") :])][-1], False)
        else:  # blocks.i or blocks.i.expansion
            places[name] = (1 + int(parts[1]), len(parts) == 3)
    return places


def tap_program(layers: list[_Layer], backbone: MobileNet, taps: Sequence[str]) -> tuple[list[_Layer], list[list[str]]]:
    """The classifier program ``layers`` (stem, blocks, [head], pool + classifier) cut after its last tap, with a
    TAP layer after each tapped map; returns it and the names each TAP layer serves, in program order."""
    places = _positions(backbone, taps)
    program: list[_Layer] = []
    served: list[list[str]] = []

    def tap(names: list[str], channels: int) -> None:
        if names:
            program.append(_Layer(kind=_TAP, cin=channels, cout=channels))
            served.append(names)

    last = max(i for i, _ in places.values())
    for i, layer in enumerate(layers[: last + 1]):
        inside = [n for n, (j, expansion) in places.items() if j == i and expansion]
        if inside:
            name = inside[0]
            if layer.residual:
                raise ConfigError(
                    f"the fused engine cannot tap {name}: its block adds a residual shortcut, which the engine "
                    "keeps only for a whole block"
                )
            if layer.has_expand:
                program.append(_Layer(kind=fused._POINTWISE, cin=layer.cin, cout=layer.cmid, act_out=layer.act_mid,
                                      out=layer.expand))  # fmt: skip
                layer = _Layer.from_buffer_copy(layer)  # a copy: the original keeps its expansion
                layer.has_expand, layer.cin, layer.expand = 0, layer.cmid, _Conv()
            tap(inside, layer.cin)
        program.append(layer)
        tap([n for n, (j, expansion) in places.items() if j == i and not expansion], layer.cout)
    return program, served


def tapped_blocks(backbone: MobileNet, taps: Sequence[str]) -> set[int]:
    """The blocks whose inner channels the taps ``taps`` read in their order: each ``blocks.i.expansion``'s, and
    block 0 for the stem's (a first block without expansion has the stem's channels inside)."""
    places = _positions(backbone, taps).values()
    return {place - 1 for place, expansion in places if expansion} | ({0} if (0, False) in places else set())


class FusedBackbone(FusedEngine):
    """A MobileNet backbone run by the fused engine as far as the feature taps ``taps`` (names of
    ``backbone.feature_info()``); ``engine(x, input_multiple)`` returns ``backbone.forward_taps(x, taps,
    input_multiple)``'s dict of NCHW maps (views of one buffer per call, channels-last in memory). ``threads``,
    ``calibration``, ``precision`` and ``isa`` as for ``FusedEngine``; int8 is calibrated through the whole
    backbone (``forward_features``), so calibration images may have any side."""

    def __init__(
        self,
        backbone: nn.Module,
        taps: Sequence[str],
        threads: int | None = None,
        calibration: list[torch.Tensor] | None = None,
        precision: str | None = None,
        isa: str | None = None,
        half_depthwise: bool | None = None,
    ) -> None:
        if not taps:
            raise ConfigError("name at least one feature tap for the fused backbone")
        self.taps = tuple(dict.fromkeys(taps))
        self.backbone = backbone
        super().__init__(backbone, threads, calibration, precision, isa, half_depthwise)

    def _program(self, folded: MobileNet, calibration: list[torch.Tensor] | None) -> tuple[list[_Layer], list]:
        folded.classifier, folded.pre_logits = nn.Identity(), None  # the taps end before the pool
        builder = self._builder(folded, calibration, folded.forward_features)
        program, self._served = tap_program(builder.program(folded)[:-1], folded, self.taps)
        return program, builder.keep

    def fixed_blocks(self) -> set[int]:
        """The blocks whose expanded channels a tap hands out (block 0's are the stem's): ``tapped_blocks``."""
        return tapped_blocks(self.backbone, self.taps)

    def _tap_shapes(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(h, w, channels) of each TAP layer's map for an h × w input, in program order."""
        shapes = []
        for layer in self._array:
            if layer.kind in (fused._STEM, fused._BLOCK):
                h, w = (h - 1) // layer.stride + 1, (w - 1) // layer.stride + 1
            elif layer.kind == _TAP:
                shapes.append((h, w, layer.cin))
        return shapes

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, input_multiple: int = INPUT_MULTIPLE) -> dict[str, torch.Tensor]:  # type: ignore[override]
        check_image_batch(x, self.in_chans, input_multiple)
        n, _, h, w = x.shape
        shapes = self._tap_shapes(h, w)
        out = self._run(x, sum(th * tw * tc for th, tw, tc in shapes))
        maps: dict[str, torch.Tensor] = {}
        offset = 0
        for (th, tw, tc), names in zip(shapes, self._served, strict=True):
            size = th * tw * tc
            for name in names:
                maps[name] = out[:, offset : offset + size].view(n, th, tw, tc).permute(0, 3, 1, 2)
            offset += size
        return {name: maps[name] for name in self.taps}

    def forward_taps(
        self, x: torch.Tensor, names: Sequence[str], input_multiple: int = INPUT_MULTIPLE
    ) -> dict[str, torch.Tensor]:
        """``MobileNet.forward_taps`` for the taps this engine was built for (in any order)."""
        names = list(names)
        if set(names) != set(self.taps):
            raise ConfigError(f"this fused backbone was built for the taps {list(self.taps)}, not {names}")
        maps = self(x, input_multiple)
        return {name: maps[name] for name in names}


class EngineTaps(nn.Module):
    """Stands in for a detection or segmentation model's backbone: ``forward_taps`` runs the fused engine, built
    on first use for each set of taps asked (a model reads one). The backbone stays as a submodule (its config and
    ``feature_info`` for whoever reads them); its own forward is never run."""

    def __init__(
        self,
        backbone: MobileNet,
        threads: int | None,
        calibration: list[torch.Tensor] | None,
        isa: str | None,
        precision: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, MobileNet):
            raise ConfigError(f"the fused engine runs MobileNet backbones, not {type(backbone).__name__}")
        fused._check_supported(backbone)  # the engine's one-line refusal now, not at the first batch
        if precision == "bf16":
            fused.require_bf16(fused.resolve_isa(isa))
        self.backbone = backbone
        self.threads, self.calibration, self.isa, self.precision = threads, calibration, isa, precision
        self.engines: dict[frozenset[str], FusedBackbone] = {}

    def engine(self, names: Sequence[str]) -> FusedBackbone:
        key = frozenset(names)
        if key not in self.engines:
            self.engines[key] = FusedBackbone(
                self.backbone, list(names), self.threads, self.calibration, precision=self.precision, isa=self.isa
            )
        return self.engines[key]

    def forward_taps(
        self, x: torch.Tensor, names: Sequence[str], input_multiple: int = INPUT_MULTIPLE
    ) -> dict[str, torch.Tensor]:
        return self.engine(names).forward_taps(x, names, input_multiple)

    def describe(self) -> str | None:
        """``FusedEngine.describe`` of the engines built so far (None before the first batch)."""
        return "; ".join(dict.fromkeys(engine.describe() for engine in self.engines.values())) or None


def engine_model(
    model: nn.Module,
    threads: int | None = None,
    calibration: list[torch.Tensor] | None = None,
    isa: str | None = None,
    precision: str | None = None,
) -> nn.Module:
    """A copy of a detection or segmentation ``model`` (anything whose ``backbone`` is a MobileNet read through
    ``forward_taps``) whose backbone runs in the fused engine — int8 when ``calibration`` images are given, bf16
    when ``precision`` says so — and whose heads stay PyTorch's; ``model`` itself is unchanged (the copy shares
    its backbone's weights)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ConfigError(f"{type(model).__name__} has no backbone for the fused engine to run")
    stand_in = EngineTaps(backbone, threads, calibration, isa, precision)
    # deepcopy's memo maps the backbone to its stand-in: the heads are copied, the backbone is not.
    return copy.deepcopy(model, {id(backbone): stand_in}).eval()

"""V2 §5.1 split executor: equal to the standard forward, same multiply-adds, less live memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilenets import ConfigError, create_model
from mobilenets.analysis.memtrace import peak_activation_bytes
from mobilenets.analysis.profile import profile
from mobilenets.deploy.split import ConvSlice, SplitInvertedResidual, group_bounds, split_model
from mobilenets.models.layers import PointwiseConv2d
from model_util import randomise_bn

ALL_CHANNELS = 10**9  # t ≥ n: one inner channel per group


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    ("mobilenet_v2", {"width": 0.5}),
    ("mobilenet_v2", {"width": 0.35, "shortcut": "expansion", "project_act": "relu6"}),
    ("mobilenet_v3_large", {"width": 0.35}),
    ("mobilenet_v3_small", {"padding": "same"}),
    ("mobilenet_v3_small_minimal", {}),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
@pytest.mark.parametrize("t", [1, 2, 4, ALL_CHANNELS])
def test_split_equals_standard(name: str, overrides: dict[str, object], t: int) -> None:
    if t == ALL_CHANNELS and name != "mobilenet_v3_small" and overrides.get("shortcut") != "expansion":
        pytest.skip("one channel per group is thousands of tiny convs: two models cover it (SE and ablation)")
    torch.manual_seed(0)
    model = randomise_bn(create_model(name, num_classes=10, **overrides))
    split = split_model(model, t)
    side = 32 if t == ALL_CHANNELS else 64  # one channel per group is many small convs: keep it quick
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        ref_features, ref_logits = model.forward_features(x), model(x)
        features, logits = split.forward_features(x), split(x)
    assert (features - ref_features).abs().max() <= 1e-5
    assert (logits - ref_logits).abs().max() <= 1e-5
    blocks = [m for m in split.modules() if isinstance(m, SplitInvertedResidual)]
    assert blocks and all(b.num_groups == min(t, b.spec.mid_channels) for b in blocks)


def test_split_runs_the_groups() -> None:
    # Guards against a split model silently taking the standard path.
    split = split_model(create_model("mobilenet_v2", width=0.35).eval(), 3)
    calls = []
    for m in split.modules():
        if isinstance(m, ConvSlice):
            m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        split(torch.randn(1, 3, 32, 32))
    assert len(calls) == 3 * 3 * 17 - 3  # expand + depthwise + project per group; block 1 has no expansion


def test_group_slices_follow_the_parents_gemm_switch() -> None:
    # A 1×1 group slice runs as a matrix product exactly when its parent PointwiseConv2d would.
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = randomise_bn(create_model("mobilenet_v2", width=0.35)).eval()
    split = split_model(model, 2)
    x = torch.randn(1, 3, 32, 32)
    ops, logits = {}, {}
    for gemm in (True, False):
        for m in split.modules():  # split_model copies: the parents are the split model's own
            if isinstance(m, PointwiseConv2d):
                m.gemm = gemm
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            logits[gemm] = split(x)
        ops[gemm] = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert "aten.mm" in ops[True] and "aten.mm" not in ops[False]  # (the classifier is an addmm either way)
    assert (logits[True] - logits[False]).abs().max() <= 1e-5


@pytest.mark.parametrize("t", [2, 4, 40])
def test_madds_do_not_depend_on_t(t: int) -> None:
    model = create_model("mobilenet_v2", width=0.35).eval()
    assert profile(split_model(model, t), 96).madds == profile(model, 96).madds


def test_se_blocks_pay_a_second_pass() -> None:
    # The SE gate needs every channel's mean before any group can be projected: expansion and depthwise of SE
    # blocks run twice. Exactly that much is added.
    model = create_model("mobilenet_v3_small").eval()
    base, split = profile(model, 96), profile(split_model(model, 2), 96)
    extra = sum(
        layer.madds for layer in base.layers if ".expand." in layer.name or ".depthwise." in layer.name
        if _block_has_se(model, layer.name)
    )  # fmt: skip
    assert split.madds == base.madds + extra


def _block_has_se(model: nn.Module, layer_name: str) -> bool:
    block_name = layer_name.rsplit(".", 2)[0]
    return model.get_submodule(block_name).se is not None


def test_state_dict_and_params_unchanged() -> None:
    model = create_model("mobilenet_v3_large", width=0.5)
    split = split_model(model, 4)
    assert split.state_dict().keys() == model.state_dict().keys()
    assert profile(split, 64).params == profile(model, 64).params


def test_per_block_groups_and_errors() -> None:
    model = create_model("mobilenet_v2", width=0.35).eval()
    ts = list(range(1, 18))
    split = split_model(model, ts)
    assert [m.num_groups for m in split.modules() if isinstance(m, SplitInvertedResidual)] == ts
    with pytest.raises(ConfigError, match="17 inverted residual"):
        split_model(model, [2, 2])
    with pytest.raises(ConfigError, match="t must be >= 1"):
        split_model(model, 0)
    assert group_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_taps_for_detection_and_segmentation_backbones() -> None:
    # Detection/segmentation hold a MobileNet and call forward_taps; the SSDLite tap on an expansion output is
    # served by the standard path of that one block.
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = create_model("mobilenet_v2", width=0.35, num_classes=0)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.backbone.forward_taps(x, ["blocks.13.expansion", "blocks.16", "head"])

    torch.manual_seed(0)
    model = randomise_bn(Detector())
    split = split_model(model, 4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), split(x)
    assert ref.keys() == out.keys()
    for k in ref:
        assert (ref[k] - out[k]).abs().max() <= 1e-5


def test_training_mode_uses_the_standard_path() -> None:
    split = split_model(create_model("mobilenet_v2", width=0.35), 4).train()
    split(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in split.parameters())


def test_split_halves_peak_activation_memory() -> None:
    # V2 §5.1, batch 1 at 224 px: t = 4 needs at most half the standard path's live activations.
    model = create_model("mobilenet_v2").eval()
    x = torch.randn(1, 3, 224, 224)
    standard = peak_activation_bytes(model, x)
    split = peak_activation_bytes(split_model(model, 4), x)
    assert standard > 112 * 112 * 96 * 4  # at least the widest expansion (block 2) is materialised
    assert split <= 0.5 * standard


@pytest.mark.parametrize("name", ["ssdlite_mobilenet_v2", "lraspp_mobilenet_v3_small", "deeplabv3_mobilenet_v2"])
def test_split_detection_and_segmentation_models(name: str) -> None:
    from mobilenets import list_models

    if name not in list_models():
        pytest.skip(f"{name} is not registered in this checkout")
    torch.manual_seed(0)
    model = randomise_bn(create_model(name))
    split = split_model(model, 4)
    x = torch.randn(1, 3, 128, 128)
    forward = "forward_raw" if hasattr(model, "forward_raw") else "forward"
    with torch.no_grad():
        ref, out = getattr(model, forward)(x), getattr(split, forward)(x)
    ref_leaves, out_leaves = _leaves(ref), _leaves(out)
    assert len(ref_leaves) == len(out_leaves) > 0
    for a, b in zip(ref_leaves, out_leaves, strict=True):
        # 1e-5 relative to the output's scale: DeepLab's logits reach ~20 with random BN statistics.
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


def _leaves(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _leaves(v)]
    return []

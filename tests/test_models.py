"""Shapes, gradients, features and errors of every registered classification model."""

from __future__ import annotations

import pytest
import torch

import mobilenets
from mobilenets import ConfigError, InputError, create_model
from mobilenets.models.specs import V2_ROWS, build_spec
from model_util import assert_round_trip

CLASSIFIERS = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "mobilenet_v3_large_minimal",
    "mobilenet_v3_small_minimal",
]


def test_registry_lists_every_classifier() -> None:
    assert set(CLASSIFIERS) <= set(mobilenets.list_models())


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize(("width", "resolution"), [(0.35, 96), (1.0, 128), (1.4, 160)])
def test_output_shape(name: str, width: float, resolution: int) -> None:
    model = create_model(name, width=width, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, resolution, resolution))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = create_model(name, width=0.5, num_classes=5, dropout=0.0)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_v2_table_rows_are_the_papers() -> None:
    # Table 2 of arXiv 1801.04381 as printed, its t c n s columns per bottleneck row, typed here independently
    # of specs.py.
    table2 = """
        1  16 1 1
        6  24 2 2
        6  32 3 2
        6  64 4 2
        6  96 3 1
        6 160 3 2
        6 320 1 1
    """
    assert [tuple(int(v) for v in line.split()) for line in table2.strip().splitlines()] == V2_ROWS
    spec = build_spec("v2")
    assert len(spec.blocks) == 17
    assert [b.out_channels for b in spec.blocks][:4] == [16, 24, 24, 32]
    assert spec.block_strides[-1] == 32 and spec.head_channels == 1280


@pytest.mark.parametrize(
    ("width", "stem", "head"), [(0.35, 16, 1280), (0.5, 16, 1280), (1.0, 32, 1280), (1.4, 48, 1792)]
)
def test_v2_width_rules(width: float, stem: int, head: int) -> None:
    spec = build_spec("v2", width)
    assert spec.stem_channels == stem
    assert spec.head_channels == head  # 1280 kept for α ≤ 1, grown for α > 1 (V2 §6.1, TF-Slim)
    assert all(b.out_channels % 8 == 0 and b.out_channels >= 8 for b in spec.blocks)


def test_known_parameter_counts() -> None:
    # torchvision's published counts (BatchNorm included, 1000 classes).
    counts = {"mobilenet_v2": 3_504_872, "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856}
    for name, expected in counts.items():
        assert sum(p.numel() for p in create_model(name).parameters()) == expected


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_turns_into_dilation(output_stride: int) -> None:
    model = create_model("mobilenet_v2", output_stride=output_stride, num_classes=0).eval()
    info = {f.name: f for f in model.feature_info()}
    assert max(f.stride for f in info.values()) == output_stride
    with torch.no_grad():
        feats = model.forward_taps(torch.randn(1, 3, 64, 64), ["blocks.16", "head"])
    assert feats["blocks.16"].shape[-1] == 64 // output_stride
    assert feats["head"].shape[1] == 1280


def test_ssdlite_tap_is_layer_15_expansion() -> None:
    # TF-Slim's layer_15 = the stem (layer_1) + the 14th bottleneck: its expansion has 576 channels at stride 16.
    model = create_model("mobilenet_v2").eval()
    (tap,) = model.tap_info(["blocks.13.expansion"])
    assert (tap.channels, tap.stride) == (576, 16)
    with torch.no_grad():
        out = model.forward_taps(torch.randn(1, 3, 320, 320), ["blocks.13.expansion", "head"])
    assert out["blocks.13.expansion"].shape == (1, 576, 20, 20)
    assert out["head"].shape == (1, 1280, 10, 10)


def test_feature_info_matches_real_shapes() -> None:
    model = create_model("mobilenet_v3_large", output_stride=16).eval()
    infos = model.feature_info()
    with torch.no_grad():
        out = model.forward_taps(torch.randn(1, 3, 128, 128), [f.name for f in infos])
    for f in infos:
        assert out[f.name].shape[1:] == (f.channels, 128 // f.stride, 128 // f.stride), f.name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 0.0}, "width"),
        ({"width": -1.0}, "width"),
        ({"output_stride": 4}, "output stride"),
        ({"shortcut": "sideways"}, "shortcut"),
        ({"project_act": "gelu"}, "project_act"),
        ({"not_an_option": 1}, "not_an_option"),
    ],
)
def test_invalid_config_names_the_value(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model("mobilenet_v2", **overrides)


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        create_model("resnet50")


@pytest.mark.parametrize("shape", [(1, 3, 100, 100), (1, 3, 16, 16), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shape(shape: tuple[int, ...]) -> None:
    model = create_model("mobilenet_v2", width=0.35).eval()
    with pytest.raises(InputError):
        model(torch.randn(*shape))


@pytest.mark.parametrize("shortcut", ["bottleneck", "expansion", "none"])
@pytest.mark.parametrize("project_act", ["linear", "relu6"])
def test_ablation_switches(shortcut: str, project_act: str) -> None:
    model = create_model("mobilenet_v2", width=0.35, shortcut=shortcut, project_act=project_act).eval()
    block = model.blocks[2]  # 24 → 24, stride 1: a block that has a residual
    assert block.bottleneck_shortcut == (shortcut == "bottleneck")
    assert block.expansion_shortcut == (shortcut == "expansion")
    assert isinstance(block.project.act, torch.nn.Identity) == (project_act == "linear")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_state_dict_keys_explain_themselves() -> None:
    keys = create_model("mobilenet_v3_large").state_dict().keys()
    assert "stages.2.0.expand.conv.weight" in keys
    assert "stages.2.0.se.squeeze.weight" in keys
    assert "stages.2.0.project.bn.running_mean" in keys
    assert "head.conv.weight" in keys and "classifier.weight" in keys


def test_weights_round_trip(tmp_path) -> None:
    model = create_model("mobilenet_v3_small", width=0.75, num_classes=10).eval()
    path = tmp_path / "w.safetensors"
    assert_round_trip(model, path, torch.randn(1, 3, 96, 96))
    # Fine-tuning: a new class count keeps everything but the classifier.
    tuned = create_model("mobilenet_v3_small", weights=path, num_classes=3)
    assert tuned.classifier.out_features == 3
    assert torch.equal(tuned.stem.conv.weight, model.stem.conv.weight)


def test_pointwise_convolutions_run_as_matrix_products() -> None:
    """PointwiseConv2d in CPU inference equals PyTorch's convolution on the same weights within float rounding, on
    every input it takes the matrix-product path for (one NCHW image) and on those it does not (batches,
    channels_last, strided views); other layers stay plain convolutions."""
    from mobilenets.models.layers import PointwiseConv2d, make_conv

    assert type(make_conv(8, 16, 1)) is PointwiseConv2d
    assert (
        type(make_conv(8, 16, 1, stride=2)) is torch.nn.Conv2d and type(make_conv(8, 8, 3, groups=8)) is torch.nn.Conv2d
    )
    torch.manual_seed(0)
    for bias in (False, True):
        conv = make_conv(24, 40, 1, bias=bias).eval()
        for x in (torch.randn(1, 24, 7, 9), torch.randn(3, 24, 5, 5)):
            reference = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
            for view in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, 1:]):  # the last: strided
                out = conv(view)
                expected = reference if view.shape == x.shape else reference[:, :, :, 1:]
                assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5)


def test_pointwise_gemm_keeps_graphs_and_training_on_the_convolution() -> None:
    from mobilenets.models.layers import PointwiseConv2d

    conv = PointwiseConv2d(8, 4, 1).eval()
    x = torch.randn(1, 8, 6, 6)
    traced = torch.jit.trace(conv, x)
    assert "aten::_convolution" in str(traced.graph) and "aten::mm" not in str(traced.graph)
    assert torch.allclose(traced(x), conv(x), atol=1e-6)
    model = create_model("mobilenet_v2", width=0.35).eval()
    y = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        gemm = model(y)
        for m in model.modules():
            if isinstance(m, PointwiseConv2d):
                m.gemm = False
        conv_path = model(y)
    assert torch.allclose(gemm, conv_path, atol=1e-5)
    # training keeps the convolution (and its backward); inference runs matrix products
    from torch.utils.flop_counter import FlopCounterMode

    for m in model.modules():
        if isinstance(m, PointwiseConv2d):
            m.gemm = True
    ops = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(y)
        ops[mode] = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert "aten.mm" not in ops["train"] and "aten.convolution" in ops["train"]
    assert "aten.bmm" in ops["eval"] or "aten.mm" in ops["eval"]

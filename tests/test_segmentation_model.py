"""Mobile DeepLabv3 / LR-ASPP: shapes at any input size, Table 7's parameter and multiply-add figures, options."""

from __future__ import annotations

import pytest
import torch

import mobilenets
from mobilenets import ConfigError, InputError, create_model, profile
from mobilenets.analysis.dense import tf_atrous_madds
from model_util import assert_round_trip

# DeepLabv3 (V2 §6.3) on V1 and V2, LR-ASPP (V3 §6.3) on V2 and both V3s.
SEGMENTERS = [f"deeplabv3_mobilenet_{v}" for v in ("v1", "v2")] + [
    f"lraspp_mobilenet_{v}" for v in ("v2", "v3_large", "v3_small")
]


def test_registered() -> None:
    assert set(SEGMENTERS) <= set(mobilenets.list_models())


@pytest.mark.parametrize("name", SEGMENTERS)
def test_logits_at_input_size_for_any_size(name: str) -> None:
    model = create_model(name, width=0.35, num_classes=4).eval()
    with torch.no_grad():
        for size in [(65, 97), (64, 64)]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 4, *size)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v2", "lraspp_mobilenet_v2", "lraspp_mobilenet_v3_small"])
def test_gradients_reach_every_parameter(name: str) -> None:
    model = create_model(name, width=0.35, num_classes=3, dropout=0.0)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v2", "lraspp_mobilenet_v2", "lraspp_mobilenet_v3_small"])
def test_a_fresh_head_starts_near_uniform(name: str) -> None:
    # Small classifier weights: the first loss is about ln(K), not several times it.
    torch.manual_seed(0)
    model = create_model(name, width=0.5, num_classes=11).train()
    logits = model(torch.randn(4, 3, 64, 64))
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 11, (4, 64, 64)))
    assert abs(float(loss) - float(torch.log(torch.tensor(11.0)))) < 0.2


def test_lraspp_on_v2_taps_last_conv_and_stride_8_stage() -> None:
    model = create_model("lraspp_mobilenet_v2", width=0.5, num_classes=11)
    assert (model.high_tap.name, model.high_tap.channels, model.high_tap.stride) == ("head", 1280, 16)
    assert (model.low_tap.name, model.low_tap.channels, model.low_tap.stride) == ("blocks.5", 16, 8)
    with pytest.raises(ConfigError, match="LR-ASPP needs"):
        mobilenets.segmentation.model.build_segmentation_model("lraspp", "v1")


def test_deeplab_uses_second_to_last_map_and_drops_1280_conv() -> None:
    model = create_model("deeplabv3_mobilenet_v2")
    assert (model.tap.name, model.tap.channels, model.tap.stride) == ("blocks.16", 320, 16)
    assert model.backbone.head is None
    assert not any(k.startswith("backbone.head.") for k in model.state_dict())


@pytest.mark.parametrize(("output_stride", "rates"), [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_output_stride(output_stride: int, rates: tuple[int, ...]) -> None:
    model = create_model("deeplabv3_mobilenet_v2", output_stride=output_stride, width=0.35)
    assert tuple(conv.conv.dilation[0] for conv in model.head.atrous) == rates
    with torch.no_grad():
        raw = model.eval().forward_raw(torch.randn(1, 3, 65, 65))
    assert raw.shape[-1] == 64 // output_stride + 1


def test_reduced_head_has_no_atrous_branches() -> None:
    model = create_model("deeplabv3_mobilenet_v2", aspp=False)
    assert len(model.head.atrous) == 0
    assert model.head.fuse.conv.in_channels == 512  # 1×1 branch + image pooling


# Paper Table 7 (V2 §6.3). Params with BatchNorm; MAdds at DeepLab's 513×513 evaluation crop. "exact" counts
# true output positions (the profile command); "tf" adds TensorFlow's space-to-batch padding of atrous convs.
@pytest.mark.parametrize(
    ("name", "aspp", "params", "exact", "tf"),
    [
        ("deeplabv3_mobilenet_v2", True, 4.52e6, 5.36e9, 5.8e9),
        ("deeplabv3_mobilenet_v2", False, 2.11e6, 2.74e9, 2.75e9),
        ("deeplabv3_mobilenet_v1", True, 11.15e6, 12.76e9, 14.25e9),
    ],
)
def test_table7_params_and_madds(name: str, aspp: bool, params: float, exact: float, tf: float) -> None:
    model = create_model(name, aspp=aspp, num_classes=21, output_stride=16)
    prof = profile(model, 513)
    assert prof.params == pytest.approx(params, abs=0.005e6)
    assert prof.madds == pytest.approx(exact, abs=0.005e9)
    assert tf_atrous_madds(model, 513) == pytest.approx(tf, rel=0.005)


@pytest.mark.slow  # ~45 s: six scales of an OS 8 network up to 897×897
def test_table7_os8_mf_madds() -> None:
    from mobilenets.analysis.dense import inference_madds
    from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES

    model = create_model("deeplabv3_mobilenet_v2", aspp=False, num_classes=21, output_stride=8)
    madds = inference_madds(model, 513, DEEPLAB_EVAL_SCALES, flip=True, tf_atrous=True)
    assert madds == pytest.approx(152.6e9, rel=0.005)


def test_lraspp_matches_torchvision_parameter_count() -> None:
    # torchvision's lraspp_mobilenet_v3_large (21 classes) has 3,221,538 parameters.
    model = create_model("lraspp_mobilenet_v3_large", num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == 3_221_538
    assert (model.low_tap.channels, model.low_tap.stride) == (40, 8)
    assert (model.high_tap.channels, model.high_tap.stride) == (960, 16)


def test_lraspp_context_block() -> None:
    # context=k: a k×k depthwise + 1×1 block (with BN) on the 128 gated channels, and nothing else changes.
    plain = create_model("lraspp_mobilenet_v2", width=0.5, num_classes=11)
    ctx = create_model("lraspp_mobilenet_v2", width=0.5, num_classes=11, context=5)
    extra = sum(p.numel() for p in ctx.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 128 * 25 + 2 * 128 + 128 * 128 + 2 * 128
    assert isinstance(plain.context, torch.nn.Identity)
    # Each position now reads a 5×5 neighbourhood of the 1/16 map: a change at one corner reaches 2 cells away.
    ctx.eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        high = ctx.backbone.forward_taps(x, [ctx.high_tap.name], input_multiple=1)[ctx.high_tap.name]
        gated = ctx.project(high) * ctx.gate(high)
        bumped = gated.clone()
        bumped[..., 0, 0] += 10
        moved = (ctx.context(bumped) - ctx.context(gated)).abs().sum(1)[0] > 0
    assert moved[:3, :3].all() and not moved[3:, :].any() and not moved[:, 3:].any()


def test_lraspp_naming_branch(tmp_path) -> None:
    # naming_pool=k: a linear classifier over the K-1 object classes reading the 1280-channel map averaged over
    # k×k windows; its log-softmax is added to the object logits only. Everything else is the plain model.
    from mobilenets.engine.checkpoints import init_from

    torch.manual_seed(0)
    plain = create_model("lraspp_mobilenet_v2", width=0.5, num_classes=11).eval()
    named = create_model("lraspp_mobilenet_v2", width=0.5, num_classes=11, naming_pool=3).eval()
    extra = sum(p.numel() for p in named.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 10 * 1280 + 10
    missing, unexpected = named.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("naming.") for k in missing)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        base, out = plain.forward_raw(x), named.forward_raw(x)
        high = named.backbone.forward_taps(x, [named.high_tap.name], input_multiple=1)[named.high_tap.name]
        window = torch.nn.functional.avg_pool2d(high, 3, 1, 1, count_include_pad=False)
        names = torch.nn.functional.log_softmax(named.naming[-1](window), dim=1)
    assert torch.equal(out[:, 0], base[:, 0])  # background against object: untouched
    expected = base[:, 1:] + torch.nn.functional.interpolate(names, size=base.shape[-2:], mode="bilinear")
    torch.testing.assert_close(out[:, 1:], expected, atol=1e-5, rtol=1e-5)
    # --init from a classifier of the object classes starts the branch as that classifier's linear layer.
    classifier = create_model("mobilenet_v2", width=0.5, num_classes=10)
    mobilenets.save_weights(classifier, tmp_path / "cls.safetensors")
    init_from(named, tmp_path / "cls.safetensors")
    assert torch.equal(named.naming[-1].weight[:, :, 0, 0], classifier.classifier.weight)
    assert torch.equal(named.naming[-1].bias, classifier.classifier.bias)
    # ... and only then: a classifier of another class count leaves the branch as it was.
    other = create_model("mobilenet_v2", width=0.5, num_classes=7)
    mobilenets.save_weights(other, tmp_path / "other.safetensors")
    before = named.naming[-1].weight.clone()
    init_from(named, tmp_path / "other.safetensors")
    assert torch.equal(named.naming[-1].weight, before)


def test_weights_round_trip_and_fine_tune(tmp_path) -> None:
    model = create_model("deeplabv3_mobilenet_v2", width=0.35, num_classes=5, aspp=False).eval()
    path = tmp_path / "seg.safetensors"
    assert_round_trip(model, path, torch.randn(1, 3, 64, 64))
    tuned = create_model("deeplabv3_mobilenet_v2", weights=path, num_classes=2)
    assert tuned.classifier.out_channels == 2
    with pytest.raises(ConfigError, match="lraspp"):
        create_model("lraspp_mobilenet_v3_small", weights=path)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("deeplabv3_mobilenet_v2", {"output_stride": 4}, "output stride"),
        ("deeplabv3_mobilenet_v2", {"num_classes": 0}, "num_classes"),
        ("deeplabv3_mobilenet_v2", {"colour": 1}, "colour"),
        ("lraspp_mobilenet_v3_large", {"aspp": False}, "aspp"),
        ("lraspp_mobilenet_v2", {"context": 4}, "odd kernel"),
        ("lraspp_mobilenet_v2", {"context": -3}, "odd kernel"),
        ("deeplabv3_mobilenet_v2", {"context": 3}, "LR-ASPP only"),
        ("lraspp_mobilenet_v2", {"naming_pool": 2}, "odd window"),
        ("deeplabv3_mobilenet_v2", {"naming_pool": 3}, "LR-ASPP only"),
        ("lraspp_mobilenet_v2", {"naming_pool": 3, "num_classes": 2}, "two object classes"),
    ],
)
def test_invalid_options(name: str, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model(name, **overrides)


def test_bad_input() -> None:
    model = create_model("deeplabv3_mobilenet_v2", width=0.35).eval()
    with pytest.raises(InputError):
        model(torch.randn(1, 1, 64, 64))


def test_profile_cli_gives_table7_reduced_head(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mobilenets.cli import main

    argv = ["profile", "deeplabv3_mobilenet_v2", "--resolution", "513", "--num-classes", "21", "--no-aspp"]
    assert main([*argv, "--output-stride", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["params"] / 1e6, 2) == 2.11 and round(out["madds"] / 1e9, 2) == 2.74  # paper: 2.11M, 2.75B

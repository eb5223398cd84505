"""Converters: timm's and torchvision's weights give the same outputs in our models, and bad files fail cleanly.

timm is the oracle for the architecture (it follows TF-Slim; its ``tf_*`` models are ports of the published
TensorFlow checkpoints). torchvision cannot be imported here, so its layout is rebuilt below from the module
structure of ``torchvision/models/mobilenetv2.py`` and ``mobilenetv3.py``: a small independent implementation
whose ``state_dict()`` has torchvision's public keys by construction.

The reference models get random weights and random BatchNorm statistics (measured on a random batch, then
perturbed: see ``timm_util.randomize``), so activations stay of order one and float32 outputs must agree to 1e-5.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mobilenets import CheckpointError, create_model
from mobilenets.checkpoint import read_info, save_weights
from mobilenets.convert import convert_file, convert_state_dict, read_state_dict, to_torchvision
from mobilenets.registry import read_weights
from timm_util import import_timm, randomize

try:
    timm = import_timm()
except ImportError:  # pragma: no cover - timm is a test dependency
    timm = None

TOL = 1e-5
SIZE = 64  # even sides, so TF "SAME" stride-2 convolutions pad asymmetrically


def _max_diff(a: nn.Module, b: nn.Module, size: int = SIZE) -> float:
    """Largest output difference on a random batch (the outputs are of order one: see ``randomize``)."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_a, out_b = a.eval()(x), b.eval()(x)
    assert 0.01 < out_a.abs().max() < 100  # a meaningful scale for an absolute tolerance
    return (out_a - out_b).abs().max().item()


# -- timm --------------------------------------------------------------------------------------------------------
TIMM_MODELS = {
    # timm name: (our name, width, bn_eps, padding)
    "mobilenetv1_100": ("mobilenet_v1", 1.0, 1e-5, "symmetric"),
    "mobilenetv2_100": ("mobilenet_v2", 1.0, 1e-5, "symmetric"),
    "mobilenetv2_140": ("mobilenet_v2", 1.4, 1e-5, "symmetric"),
    "mobilenetv3_large_100": ("mobilenet_v3_large", 1.0, 1e-5, "symmetric"),
    "mobilenetv3_small_100": ("mobilenet_v3_small", 1.0, 1e-5, "symmetric"),
    "tf_mobilenetv3_large_100": ("mobilenet_v3_large", 1.0, 1e-3, "same"),
    "tf_mobilenetv3_small_minimal_100": ("mobilenet_v3_small_minimal", 1.0, 1e-3, "same"),
    "tf_mobilenetv3_large_minimal_100": ("mobilenet_v3_large_minimal", 1.0, 1e-3, "same"),
    # α ≠ 1: the published TF checkpoints at 0.75 fix the V3 width rule (see models/specs.py).
    "tf_mobilenetv3_large_075": ("mobilenet_v3_large", 0.75, 1e-3, "same"),
    "tf_mobilenetv3_small_075": ("mobilenet_v3_small", 0.75, 1e-3, "same"),
}
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed")


@cache
def _timm_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize(timm.create_model(name, pretrained=False))


@needs_timm
@pytest.mark.parametrize("timm_name", list(TIMM_MODELS))
def test_equal_to_timm(timm_name: str) -> None:
    reference = _timm_model(timm_name)
    ours = convert_state_dict(reference.state_dict(), "timm", tf=timm_name.startswith("tf_"))
    name, width, eps, padding = TIMM_MODELS[timm_name]
    assert (ours.registry_name, ours.config.width) == (name, width)
    assert (ours.config.resolved_bn_eps, ours.config.padding) == (eps, padding)
    assert _max_diff(reference, ours) <= TOL


@needs_timm
def test_timm_tf_model_needs_tf_options() -> None:
    # The same weights with PyTorch padding and eps 1e-5 are a different function: the options matter.
    reference = _timm_model("tf_mobilenetv3_large_100")
    wrong = convert_state_dict(reference.state_dict(), "timm", tf=False)
    assert _max_diff(reference, wrong) > 1e-3


@needs_timm
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_timm_file_to_checkpoint(tmp_path: Path, suffix: str) -> None:
    reference = _timm_model("tf_mobilenetv3_small_minimal_100")
    src = tmp_path / f"tf_mobilenetv3_small_minimal_100{suffix}"  # the tf_ prefix selects TF padding and eps
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(src))
    else:
        torch.save({"state_dict": state}, src)  # training checkpoints wrap the weights
    convert_file(src, tmp_path / "out.safetensors", "timm")
    loaded = create_model("mobilenet_v3_small_minimal", weights=tmp_path / "out.safetensors")
    assert _max_diff(reference, loaded) <= TOL


@needs_timm
def test_timm_width_without_a_match_names_the_tensor() -> None:
    # timm's own mobilenetv3_small_050 keeps a 16-channel stem below α = 0.75; TF-Slim (and we) scale it.
    reference = timm.create_model("mobilenetv3_small_050", pretrained=False)
    with pytest.raises(CheckpointError, match=r"conv_stem\.weight"):
        convert_state_dict(reference.state_dict(), "timm")


# -- torchvision's layout, rebuilt from its module structure -------------------------------------------------------
def _divisible(v: float, divisor: int = 8) -> int:  # torchvision's _make_divisible
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormAct(nn.Sequential):  # torchvision.ops.misc.Conv2dNormActivation: .0 conv, .1 BN, .2 activation
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act=nn.ReLU6, eps=1e-5):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, eps)]
        super().__init__(*layers, act())


class V2Block(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = inp * t
        layers: list[nn.Module] = [ConvNormAct(inp, hidden, 1)] if t != 1 else []
        layers += [ConvNormAct(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, oup, 1, bias=False)]
        self.conv = nn.Sequential(*layers, nn.BatchNorm2d(oup))
        self.residual = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class TorchvisionV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvNormAct(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                           [6, 320, 1, 1]]:  # fmt: skip
            for i in range(n):
                features.append(V2Block(inp, c, s if i == 0 else 1, t))
                inp = c
        self.features = nn.Sequential(*features, ConvNormAct(320, 1280, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class SqueezeExcitation(nn.Module):  # torchvision.ops.misc.SqueezeExcitation
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class V3Block(nn.Module):
    def __init__(self, inp: int, k: int, exp: int, out: int, se: bool, nl: str, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if nl == "HS" else nn.ReLU
        layers: list[nn.Module] = [ConvNormAct(inp, exp, 1, act=act, eps=1e-3)] if exp != inp else []
        layers.append(ConvNormAct(exp, exp, k, stride, exp, act=act, eps=1e-3))
        if se:
            layers.append(SqueezeExcitation(exp, _divisible(exp // 4)))
        layers.append(ConvNormAct(exp, out, 1, act=nn.Identity, eps=1e-3))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# torchvision's _mobilenet_v3_conf: input, kernel, expanded, out, use_se, activation, stride.
V3_LARGE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]
V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]  # fmt: skip


class TorchvisionV3(nn.Module):
    def __init__(self, setting: list, last_channel: int, num_classes: int = 1000) -> None:
        super().__init__()
        last = setting[-1][3]
        self.features = nn.Sequential(
            ConvNormAct(3, 16, 3, 2, act=nn.Hardswish, eps=1e-3),
            *(V3Block(*row) for row in setting),
            ConvNormAct(last, 6 * last, 1, act=nn.Hardswish, eps=1e-3),
        )
        self.classifier = nn.Sequential(
            nn.Linear(6 * last, last_channel), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(last_channel, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


TORCHVISION = {
    "mobilenet_v2": (lambda: TorchvisionV2(), 3_504_872),
    "mobilenet_v3_large": (lambda: TorchvisionV3(V3_LARGE, 1280), 5_483_032),
    "mobilenet_v3_small": (lambda: TorchvisionV3(V3_SMALL, 1024), 2_542_856),
}


@cache
def _torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize(TORCHVISION[name][0]())


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_layout_loads(tmp_path: Path, name: str) -> None:
    reference = _torchvision_model(name)
    # The rebuilt network is torchvision's: same published parameter count, same key layout.
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION[name][1]
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    ours = convert_file(tmp_path / "tv.pth", tmp_path / "ours.safetensors", "torchvision")
    assert ours.registry_name == name
    assert ours.config.resolved_bn_eps == (1e-5 if name == "mobilenet_v2" else 1e-3)
    loaded = create_model(name, weights=tmp_path / "ours.safetensors")
    assert _max_diff(reference, loaded) <= TOL
    # Tensors land where they should: the third block's projection BN (its statistics are random).
    project_bn = "features.3.conv.3" if name == "mobilenet_v2" else "features.3.block.2.1"
    ours_var = loaded.state_dict()["stages.1.1.project.bn.running_var"]
    assert torch.equal(ours_var, reference.state_dict()[f"{project_bn}.running_var"])


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_round_trip(name: str) -> None:
    ours = randomize(create_model(name), seed=3)
    exported = to_torchvision(ours)
    replica = TORCHVISION[name][0]()
    replica.load_state_dict(exported, strict=True)  # every torchvision key, nothing else
    assert _max_diff(replica, ours) <= TOL
    again = convert_state_dict(to_torchvision(ours), "torchvision")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


def test_torchvision_has_no_v1() -> None:
    with pytest.raises(CheckpointError, match="V1"):
        to_torchvision(create_model("mobilenet_v1", width=0.25))


# -- errors ------------------------------------------------------------------------------------------------------
def _tv_state() -> dict[str, torch.Tensor]:
    return dict(_torchvision_model("mobilenet_v3_small").state_dict())


def test_missing_key_is_named() -> None:
    state = _tv_state()
    del state["features.4.block.0.1.running_mean"]
    with pytest.raises(CheckpointError, match=r"features\.4\.block\.0\.1\.running_mean"):
        convert_state_dict(state, "torchvision")


def test_unexpected_key_is_named() -> None:
    state = _tv_state() | {"features.4.block.9.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"features\.4\.block\.9\.weight"):
        convert_state_dict(state, "torchvision")


def test_wrong_shape_is_named() -> None:
    state = _tv_state()
    state["classifier.0.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"classifier\.0\.bias.*\(7,\)"):
        convert_state_dict(state, "torchvision")


def test_wrong_width_is_named() -> None:
    with pytest.raises(CheckpointError, match=r"features\.0\.0\.weight"):
        convert_state_dict(_tv_state(), "torchvision", width=0.5)


def test_wrong_model_is_rejected() -> None:
    with pytest.raises(CheckpointError):
        convert_state_dict(_tv_state(), "torchvision", model="mobilenet_v3_large")


def test_not_a_mobilenet() -> None:
    with pytest.raises(CheckpointError, match=r"features\.0\.0\.weight"):
        convert_state_dict({"fc.weight": torch.zeros(2, 2)}, "torchvision")
    with pytest.raises(CheckpointError, match="conv_stem"):
        convert_state_dict({"fc.weight": torch.zeros(2, 2)}, "timm")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("junk.pth", b"not a pickle at all", "cannot read"),
        ("junk.safetensors", b"\x00\x01garbage", "cannot read"),
        ("list.pth", None, "not hold a state dict"),
    ],
)
def test_unreadable_file(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        convert_file(tmp_path / "nope.pth", tmp_path / "out.safetensors", "timm")


def test_weight_files_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", width=0.35, num_classes=3)
    save_weights(model, tmp_path / "ok.safetensors")
    name, config, state = read_weights(tmp_path / "ok.safetensors")
    assert (name, config["num_classes"]) == ("mobilenet_v2", 3)
    assert read_info(tmp_path / "ok.safetensors") == (name, config)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))  # a safetensors file that is not ours
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    for stem, meta in (("broken", '{"model": 1'), ("no_config", '{"model": "mobilenet_v2"}')):
        save_file({"w": torch.zeros(2)}, str(tmp_path / f"{stem}.safetensors"), metadata={"mobilenets": meta})
    for reader in (read_info, read_weights):
        with pytest.raises(CheckpointError, match=r"^[^ ]*plain\.safetensors has no mobilenets metadata"):
            reader(tmp_path / "plain.safetensors")
        with pytest.raises(CheckpointError, match=r"cannot read .*junk\.safetensors as safetensors"):
            reader(tmp_path / "junk.safetensors")
        with pytest.raises(CheckpointError, match="not found"):
            reader(tmp_path / "nope.safetensors")
        for stem in ("broken", "no_config"):
            with pytest.raises(CheckpointError, match=rf"{stem}\.safetensors: malformed mobilenets metadata"):
                reader(tmp_path / f"{stem}.safetensors")

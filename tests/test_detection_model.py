"""SSDLite: the paper's counts, shapes, anchors agreeing with the head, post-processing, weights."""

from __future__ import annotations

import json

import pytest
import torch

from mobilenets.analysis.profile import profile
from mobilenets.checkpoint import save_weights
from mobilenets.cli import main
from mobilenets.detection.model import SSDLite, SSDLiteConfig
from mobilenets.errors import CheckpointError, ConfigError
from mobilenets.registry import create_model, list_models

NAMES = ["ssdlite_mobilenet_v2", "ssdlite_mobilenet_v1", "ssdlite_mobilenet_v3_large", "ssdlite_mobilenet_v3_small"]


def test_registered() -> None:
    assert set(NAMES) <= set(list_models())
    model = create_model("ssdlite_mobilenet_v2")
    assert model.registry_name == "ssdlite_mobilenet_v2"
    assert model.config.to_dict()["num_classes"] == 80


def test_table6_and_table5_counts() -> None:
    # V2 paper Table 6: MNetV2 + SSDLite 4.3M params, 0.8B MAdds; MNetV1 + SSDLite 5.1M, 1.3B (80 classes, 320²).
    # Table 5: SSDLite head 2.1M params (its MAdds: 0.18B here, 0.35B printed; see detection/model.py).
    prof = profile(create_model("ssdlite_mobilenet_v2", num_classes=80), 320)
    assert round(prof.params_no_bn / 1e6, 1) == 4.3
    assert round(prof.madds / 1e9, 1) == 0.8
    assert round(prof.modules["head"]["params_no_bn"] / 1e6, 1) == 2.1
    assert prof.modules["backbone"]["madds"] + prof.modules["head"]["madds"] == prof.madds
    ssd = profile(create_model("ssdlite_mobilenet_v2", num_classes=80, separable=False), 320)
    assert round(ssd.modules["head"]["params_no_bn"] / 1e6, 1) == 14.8  # Table 5: SSD head 14.8M, 1.25B
    assert round(ssd.modules["head"]["madds"] / 1e9, 2) == 1.26
    v1 = profile(create_model("ssdlite_mobilenet_v1", num_classes=80), 320)
    assert round(v1.params_no_bn / 1e6, 1) == 5.1
    assert round(v1.madds / 1e9, 1) == 1.3


def test_profile_cli_json(capsys) -> None:
    args = ["profile", "ssdlite_mobilenet_v2", "--resolution", "320", "--num-classes", "80", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_classes"] == 80 and round(out["madds"] / 1e9, 1) == 0.8
    assert set(out["modules"]) == {"backbone", "head"}


@pytest.mark.parametrize("name", NAMES)
def test_raw_outputs_match_anchors(name: str) -> None:
    model = create_model(name, num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 96))
    n_anchors = out["anchors"].shape[0]
    assert out["cls_logits"].shape == (2, n_anchors, 6)  # 5 classes + background
    assert out["box_codes"].shape == (2, n_anchors, 4)
    grids = [(4, 6), (2, 3), (1, 2), (1, 1), (1, 1), (1, 1)]
    assert n_anchors == 3 * 24 + 6 * sum(h * w for h, w in grids[1:])
    (out["cls_logits"].sum() + out["box_codes"].sum()).backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_full_lowest_layer_has_six_anchors_there_and_round_trips(tmp_path) -> None:
    model = create_model("ssdlite_mobilenet_v2", num_classes=3, width=0.35, reduce_lowest_layer=False).eval()
    out = model.forward_raw(torch.randn(1, 3, 64, 96))
    grids = [(4, 6), (2, 3), (1, 2), (1, 1), (1, 1), (1, 1)]
    assert out["anchors"].shape[0] == out["cls_logits"].shape[1] == 6 * sum(h * w for h, w in grids)
    first = out["anchors"][: 6 * 24].view(24, 6, 4)  # the first location's six anchors, then the next ...
    sides = (first[0, :, 2:] - first[0, :, :2]) * torch.tensor([96 / 64, 1.0])  # as fractions of the 64-px side
    assert torch.allclose((sides[:, 0] * sides[:, 1]).sqrt()[:5], torch.full((5,), 0.2), atol=1e-5)
    path = tmp_path / "det.safetensors"
    save_weights(model, path)
    again = create_model("ssdlite_mobilenet_v2", weights=path).eval()
    assert again.config.reduce_lowest_layer is False
    assert torch.equal(again.forward_raw(torch.zeros(1, 3, 64, 96))["cls_logits"],
                       model.forward_raw(torch.zeros(1, 3, 64, 96))["cls_logits"])  # fmt: skip


def test_first_map_is_layer15_expansion() -> None:
    model = create_model("ssdlite_mobilenet_v2")
    assert model.taps == ("blocks.13.expansion", "head")
    assert model.head.classification[0].depthwise.conv.in_channels == 576
    assert model.head.classification[1].depthwise.conv.in_channels == 1280
    assert [e.expand.conv.out_channels for e in model.head.extras] == [512, 256, 256, 128]
    assert [e.reduce.conv.out_channels for e in model.head.extras] == [256, 128, 128, 64]
    assert all(e.depthwise.conv.groups == e.depthwise.conv.in_channels for e in model.head.extras)
    assert all(e.depthwise.conv.stride == (2, 2) for e in model.head.extras)


def test_predict_decodes_a_planted_detection() -> None:
    model = create_model("ssdlite_mobilenet_v2", num_classes=3).eval()
    raw = model.forward_raw(torch.zeros(1, 3, 128, 128))
    logits = torch.full_like(raw["cls_logits"], -10.0)
    logits[..., 0] = 10.0  # everything background ...
    logits[0, 7, 2] = 10.0  # ... except anchor 7, class 2
    codes = torch.zeros_like(raw["box_codes"])
    dets = model.postprocess({**raw, "cls_logits": logits, "box_codes": codes}, (128, 128))
    assert dets[0]["labels"].tolist() == [2]
    expected = raw["anchors"][7].clamp(0, 1) * 128
    assert torch.allclose(dets[0]["boxes"][0], expected)
    assert dets[0]["scores"][0] > 0.4


def test_eval_forward_returns_at_most_max_detections() -> None:
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=4, max_detections=7).eval()
    dets = model(torch.rand(2, 3, 96, 96))
    assert len(dets) == 2 and all(len(d["boxes"]) <= 7 for d in dets)
    for d in dets:
        assert (d["labels"] >= 1).all() and (d["labels"] <= 4).all()


def test_weights_round_trip_and_class_mismatch(tmp_path) -> None:
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=4).eval()
    path = tmp_path / "det.safetensors"
    save_weights(model, path)
    again = create_model("ssdlite_mobilenet_v3_small", weights=path).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.forward_raw(x)["cls_logits"], again.forward_raw(x)["cls_logits"])
    with pytest.raises(CheckpointError, match="shape"):
        create_model("ssdlite_mobilenet_v3_small", weights=path, num_classes=7)


def test_backbone_from_classification_checkpoint(tmp_path) -> None:
    classifier = create_model("mobilenet_v3_small", num_classes=10)
    path = tmp_path / "cls.safetensors"
    save_weights(classifier, path)
    det = create_model("ssdlite_mobilenet_v3_small", num_classes=3)
    det.load_backbone(str(path))
    assert torch.equal(det.backbone.stem.conv.weight, classifier.stem.conv.weight)
    wrong = create_model("ssdlite_mobilenet_v2", num_classes=3)
    with pytest.raises(CheckpointError):
        wrong.load_backbone(str(path))


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        SSDLite(SSDLiteConfig(num_classes=0))
    with pytest.raises(ConfigError, match="backbone"):
        create_model("ssdlite_mobilenet_v2", arch="v1")


def test_bench_detect_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "latency.json"
    args = ["bench", "detect", "ssdlite_mobilenet_v3_small", "--resolution", "64", "--num-classes", "3"]
    assert main([*args, "--warmup", "1", "--runs", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["batch"] == 1 and result["resolution"] == 64
    assert result["with_postprocessing"]["median_ms"] > 0 and result["network_only"]["median_ms"] > 0
    assert json.loads(capsys.readouterr().out) == result

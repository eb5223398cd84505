"""V2 Table 3 computed from the models, and the `mobilenets memory` command."""

from __future__ import annotations

import json

import pytest
from torch import nn

from mobilenets import ConfigError, create_model
from mobilenets.analysis.memory import memory_rows, memory_table
from mobilenets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _table(name: str, resolution: int = 224) -> dict[int, tuple[int, float]]:
    return {r.resolution: (r.max_channels, r.kb) for r in memory_rows(create_model(name), resolution)}


def test_v2_rows() -> None:
    # Stem fused into the t = 1 block (the paper's first-layer trick), head conv fused into the pool.
    assert {side: c for side, (c, _) in _table("mobilenet_v2").items()} == {
        112: 16, 56: 24, 28: 32, 14: 96, 7: 320, 1: 1280,
    }  # fmt: skip


@pytest.mark.parametrize(("name", "paper_max_kb"), [("mobilenet_v2", 400), ("mobilenet_v1", 1600)])
def test_maximum_matches_table_3(name: str, paper_max_kb: float) -> None:
    rows = memory_rows(create_model(name), 224)
    top = max(rows, key=lambda r: r.kb)
    assert top.resolution == 112
    assert top.kb == pytest.approx(paper_max_kb, rel=0.01)  # the paper rounds 401.4 / 1605.6 down
    assert top.kb == top.max_channels * 112 * 112 * 2 / 1000


def test_v1_rows_match_table_3_channels() -> None:
    # V1's column of Table 3: 64, 128, 256, 512, 1024, 1024.
    assert [c for c, _ in _table("mobilenet_v1").values()] == [64, 128, 256, 512, 1024, 1024]


def test_resolution_scales_memory() -> None:
    assert max(kb for _, kb in _table("mobilenet_v2", 112).values()) == pytest.approx(401.408 / 4)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        memory_table(create_model("mobilenet_v2"), "mobilenet_v2", 100, measure=False)
    with pytest.raises(ConfigError, match="not a MobileNet"):
        memory_table(nn.Conv2d(3, 3, 1), "conv", 224, measure=False)


def test_memory_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "mobilenet_v2", "--width", "0.35", "--resolution", "96", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"resolution", "max_channels", "kb"} <= set(out["rows"][0])
    assert out["max_kb"] == max(r["kb"] for r in out["rows"])
    assert 0 < out["measured"]["split_t4_bytes"] < out["measured"]["standard_bytes"]


def test_memory_command_rejects_bad_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "mobilenet_v2", "--resolution", "50", "--no-measure"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "taps"), [
    ("ssdlite_mobilenet_v2", ["blocks.13.expansion", "head"]),
    ("deeplabv3_mobilenet_v2", ["blocks.16"]),
    ("lraspp_mobilenet_v3_small", ["blocks.2", "head"]),
])  # fmt: skip
def test_memory_command_dense_models(name: str, taps: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # A detector or segmenter has no Table 3 rows; its backbone runs in the engine as far as the taps its head
    # reads, and that scratch is the backbone's alone (the whole model's eager peak holds the heads' maps too).
    assert main(["memory", name, "--resolution", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == [] and out["max_kb"] is None and out["taps"] == taps
    assert out["taps"] == list(create_model(name).backbone_taps)
    measured = out["measured"]
    assert measured["standard_bytes"] > 0
    if "activation_bytes" in measured:  # the engine runs on this machine
        from mobilenets.deploy.fused_backbone import FusedBackbone

        engine = FusedBackbone(create_model(name).backbone, taps, threads=1)
        assert measured["activation_bytes"] == engine.activation_bytes(128, 128)
        assert 0 < measured["activation_bytes"] < measured["standard_bytes"]
    assert main(["memory", name, "--resolution", "128"]) == 0
    assert ", ".join(taps) in capsys.readouterr().out

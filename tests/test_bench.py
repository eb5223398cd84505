"""The bench package: rows labelled by the precision they run, goals computed from rows within a precision class,
CPU flag parsing, the sub-mode CLI. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mobilenets.bench.goals import accuracy_gate, goal_ratios, verdict_lines
from mobilenets.bench.host import ISA_FLAGS, cpu_info, parse_cpuinfo, source_revision
from mobilenets.bench.models import parse_model_spec
from mobilenets.bench.timing import BenchResult
from mobilenets.cli import main
from mobilenets.errors import ConfigError

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another
flags\t\t: fpu
"""


def row(
    name: str,
    ms: float,
    precision: str = "fp32",
    ours: bool | None = None,
    diff: float | None = 0.0,
    rel: float | None = 0.0,
    runtime: str = "",
    confident: int | None = None,
    agreement: float | None = None,
) -> BenchResult:
    return BenchResult(
        name, name.startswith("ours") if ours is None else ours, precision, ms, ms, 1.0, diff, None,
        runtime=runtime, rel_error=rel, confident=confident, confident_agreement=agreement,
    )  # fmt: skip


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    info = parse_cpuinfo(CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert set(info["flags"]) == set(ISA_FLAGS)
    on = {name for name, present in info["flags"].items() if present}
    assert on == {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
    assert parse_cpuinfo("flags : avx2\n")["flags"]["avx512f"] is False


def test_cpu_info_without_proc_says_unknown(tmp_path: Path) -> None:
    info = cpu_info(tmp_path / "missing")
    assert info["model"] and set(info["flags"].values()) == {None}


def test_source_revision_names_the_commit_and_whether_it_was_changed(tmp_path: Path) -> None:
    assert source_revision(tmp_path) is None  # not a checkout: an installed wheel
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert source_revision(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == head + "+dirty"


def test_goals_are_computed_within_precision_classes() -> None:
    rows = [
        row("ours eager", 20.0, runtime="pytorch eager"),
        row("ours fast but wrong", 1.0, diff=1e-2),  # fp32 outside 1e-4 of eager: not in the class
        row("ours fused engine", 4.5),
        row("onnxruntime fp32", 5.0),
        row("openvino fp32", 6.0),
        row("openvino bf16", 3.0, "bf16", rel=0.1),  # a runtime's bf16 competes with reduced precision, not fp32
        row("onnxruntime int8", 3.2, "int8", rel=0.3),
        row("ours fused engine int8", 2.4, "int8", rel=0.3),
        row("ours broken int8", 0.5, "int8", rel=1.2),  # outside the bound: left out
        row("timm mobilenetv2_100 eager", 25.0, diff=None, rel=None, ours=False, runtime="pytorch eager"),
    ]
    goals = goal_ratios(rows, {"amx_tile": False})
    fp32, reduced = goals["fp32"], goals["reduced"]
    assert (fp32["ours"], fp32["peer"]) == ("ours fused engine", "onnxruntime fp32")
    assert fp32["ratio"] == pytest.approx(0.9) and fp32["met"]
    assert (reduced["ours"], reduced["peer"]) == ("ours fused engine int8", "openvino bf16")
    assert reduced["ratio"] == pytest.approx(0.8) and reduced["met"]
    assert goals["eager"]["ratio"] == pytest.approx(0.8) and goals["eager"]["met"]
    assert set(goals["excluded"]) == {"ours fast but wrong", "ours broken int8"}
    assert not goals["moonshot"]["applies"] and not goals["moonshot"]["met"]
    assert "rounds" not in fp32  # rows without per-round medians
    lines = verdict_lines(goals)
    assert any(line.startswith("goal reduced") and "0.80" in line and "met" in line for line in lines)


def test_reduced_goal_fails_where_the_peer_is_faster_and_is_none_without_ours() -> None:
    slow = goal_ratios([row("ours fused engine int8", 4.0, "int8", rel=0.1), row("openvino int8", 2.0, "int8")])
    assert slow["reduced"]["ratio"] == pytest.approx(2.0) and not slow["reduced"]["met"]
    missing = goal_ratios([row("ours eager", 5.0), row("openvino bf16", 2.0, "bf16", rel=0.1)])
    assert missing["reduced"]["ratio"] is None and not missing["reduced"]["met"]
    assert missing["reduced"]["peer"] == "openvino bf16"


def test_confident_predictions_decide_the_reduced_bound() -> None:
    # With enough confident predictions (trained weights) top-1 agreement on them decides, not the relative error.
    good = row("ours int8", 1.0, "int8", rel=0.9, confident=20, agreement=1.0)
    bad = row("ours int8", 1.0, "int8", rel=0.01, confident=20, agreement=0.95)
    few = row("ours int8", 1.0, "int8", rel=0.01, confident=2, agreement=0.0)  # too few: the relative error decides
    assert accuracy_gate(good) is None and accuracy_gate(few) is None
    assert "agreement" in (accuracy_gate(bad) or "")
    assert "not compared" in (accuracy_gate(row("ours int8", 1.0, "int8", rel=None)) or "")


def test_fp32_tolerance_scales_with_the_outputs() -> None:
    # 1e-4 of eager for logits; a backbone's feature maps (hundreds) get 1e-4 of their largest magnitude
    features = row("ours frozen TorchScript", 1.0, diff=3e-4)
    features.reference_max_abs = 50.0
    logits = row("ours frozen TorchScript", 1.0, diff=3e-4)
    logits.reference_max_abs = 0.5
    assert accuracy_gate(features) is None
    assert "exceeds 0.0001" in (accuracy_gate(logits) or "")


def test_moonshot_is_judged_only_on_an_amx_host() -> None:
    rows = [row("ours fused engine", 0.8), row("onnxruntime fp32", 2.0)]
    assert goal_ratios(rows, {"amx_tile": True})["moonshot"]["met"]
    off = goal_ratios(rows, {"amx_tile": False})["moonshot"]
    assert not off["applies"] and not off["met"] and "AMX" in off["reason"]
    assert not goal_ratios([row("ours fused engine", 1.5)], {"amx_tile": True})["moonshot"]["met"]


def test_goal_ratios_per_round() -> None:
    # The same two paths' ratio within each interleaved round, beside the ratio of the run's medians.
    ours = row("ours fused engine", 4.6)
    ours.batch1_ms_round_medians = [4.0, 5.0, 4.6, 4.5]
    peer = row("onnxruntime fp32", 5.0)
    peer.batch1_ms_round_medians = [5.0, 5.0, 5.0, 4.5]
    rounds = goal_ratios([ours, peer])["fp32"]["rounds"]
    assert rounds["of"] == 4 and rounds["met"] == 1  # 0.8, 1.0, 0.92, 1.0: one round at or below 0.9
    assert rounds["median"] == pytest.approx(0.96)
    assert rounds["p10"] == pytest.approx(0.836) and rounds["p90"] == pytest.approx(1.0)


def test_model_specs() -> None:
    assert parse_model_spec("mobilenet_v2").resolution == 224
    ssd = parse_model_spec("ssdlite_mobilenet_v2")
    assert ssd.resolution == 320 and ssd.backbone_only and ssd.label == "ssdlite_mobilenet_v2 backbone"
    assert parse_model_spec("mobilenet_v3_large@160", 96).resolution == 160
    assert parse_model_spec("mobilenet_v3_large", 96).resolution == 96
    for bad in ("mobilenet_v2@big", "mobilenet_v2@8"):
        with pytest.raises(ConfigError, match="mobilenet_v2@"):
            parse_model_spec(bad)


@pytest.mark.isolated  # OpenVINO in-process corrupts the heap for later torch tests (conftest.py)
def test_openvino_fp32_row_really_runs_f32(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    from mobilenets.bench.host import cpu_info
    from mobilenets.bench.peers import export_onnx, openvino_candidates
    from mobilenets.registry import create_model

    model = create_model("mobilenet_v3_small", width=0.35, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(model, tmp_path / "m.onnx", x)
    # The property the row is labelled by, read back from a model compiled as the bench compiles its fp32 row.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    notes: list[str] = []
    rows = {c.name: c for c in openvino_candidates(path, None, 1, {flag: False for flag in ISA_FLAGS}, notes)}
    assert set(rows) == {"openvino fp32"} and rows["openvino fp32"].precision == "fp32"
    assert "INFERENCE_PRECISION_HINT=f32" in rows["openvino fp32"].detail
    assert any("bf16 row skipped" in n for n in notes)  # a CPU without bf16: no bf16 row
    with torch.no_grad():
        assert (rows["openvino fp32"].predict(x)[0] - model(x)).abs().max() <= 1e-4
    isa = cpu_info()["flags"]
    if isa.get("avx512_bf16") or isa.get("amx_bf16"):
        here = {c.name: c for c in openvino_candidates(path, None, 1, isa, [])}
        assert here["openvino bf16"].precision == "bf16" and "=bf16" in here["openvino bf16"].detail


def test_bench_infer_holds_several_models_with_skip_reasons(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b.json"
    code = main(["bench", "infer", "mobilenet_v3_small@64", "ssdlite_mobilenet_v3_small@64", "--threads", "1",
                 "--runs", "2", "--rounds", "1", "--batch32-runs", "1", "--no-peers", "--json", str(out)])  # fmt: skip
    assert code == 0
    sections = json.loads(out.read_text())["models"]
    assert [s["model"] for s in sections] == ["mobilenet_v3_small", "ssdlite_mobilenet_v3_small backbone"]
    backbone = sections[1]
    names = {r["name"] for r in backbone["results"]}
    assert {"ours eager", "onnxruntime fp32"} <= names
    assert all(r["max_abs_diff"] <= 1e-4 for r in backbone["results"] if r["precision"] == "fp32")
    if "ours fused engine" not in names:  # the engine names why it cannot run a model
        assert any(n.startswith("fused engine fp32 row skipped") for n in backbone["notes"])


def test_bench_sub_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.json"
    assert main(["bench", "train", "mobilenet_v3_small", "--resolution", "32", "--batch-size", "2", "--rounds", "2",
                 "--steps", "1", "--threads", "1", "--no-peers", "--json", str(train)]) == 0  # fmt: skip
    report = json.loads(train.read_text())
    assert report["images_per_s"]["ours"] > 0 and "timm" not in report["images_per_s"] and report["host"]["isa"]
    detect = tmp_path / "detect.json"
    assert main(["bench", "detect", "ssdlite_mobilenet_v3_small", "--resolution", "64", "--num-classes", "3",
                 "--warmup", "1", "--runs", "2", "--json", str(detect)]) == 0  # fmt: skip
    result = json.loads(detect.read_text())
    assert result["batch"] == 1 and result["with_postprocessing"]["median_ms"] > 0
    capsys.readouterr()
    pytest.importorskip("onnxruntime")
    export = tmp_path / "export.json"
    assert main(["bench", "export", "mobilenet_v3_small", "--resolution", "64", "--int8", "--runs", "2",
                 "--threads", "1", "--json", str(export)]) == 0  # fmt: skip
    latency = json.loads(export.read_text())
    assert set(latency["batch1_ms_median"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert latency["speedup_over_onnx_fp32"]["onnx_int8"] > 0


def test_bench_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "infer", "mobilenet_v2@big", "--runs", "1"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: model 'mobilenet_v2@big': the resolution after '@' must be an integer"
    )
    assert main(["bench", "mobilenet_v2", "mobilenet_v3_large", "--checkpoint", "w.safetensors"]) == 2
    assert "one model" in capsys.readouterr().err
    assert main(["bench", "detect", "mobilenet_v2", "--runs", "1", "--warmup", "0"]) == 2
    assert "not a detector" in capsys.readouterr().err


def test_litert_rows_are_skipped_with_a_reason_without_the_runtime(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    from mobilenets.bench import peers

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "litert" in name else real_find_spec(name, *a)
    )
    notes: list[str] = []
    assert peers.litert_candidates(torch.nn.Identity(), 64, [], 1, tmp_path, notes) == []
    assert len(notes) == 1 and notes[0].startswith("LiteRT rows skipped:")

"""`mobilenets bench` (infer, tradeoff) produces its JSON and figures; the timing primitives interleave as they say
(no timing assertions)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mobilenets.bench import timing
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import Candidate, accuracy, measure_interleaved, p90, round_order, time_calls
from mobilenets.cli import main
from mobilenets.registry import create_model

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_real_images_and_bn_recalibration() -> None:
    images = real_images(64, 8)
    assert images.shape == (8, 3, 64, 64) and images.std() > 0.3
    model = recalibrate_batchnorm(create_model("mobilenet_v2", width=0.35), images)
    assert not model.training
    assert model.stem.bn.running_var.min() > 0 and model.stem.bn.running_mean.abs().max() > 0


def test_p90_is_order_free_and_within_the_data() -> None:
    times = [float(v) for v in range(1, 51)]  # 1 … 50
    assert p90(times) == 46.0 and p90(times[::-1]) == 46.0  # index ⌊0.9·50⌋ = 45 of the sorted list
    assert p90([7.0]) == 7.0 and p90([3.0, 1.0]) == 3.0


def test_rounds_alternate_which_path_goes_first() -> None:
    assert [round_order(["ours", "timm"], r)[0] for r in range(4)] == ["ours", "timm", "ours", "timm"]


def test_accuracy_of_logits_and_of_feature_lists() -> None:
    ref = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0]])  # the first row is confident (p > 0.5), the second not
    y = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0]])  # the second row's top-1 flips
    check = accuracy(y, ref)
    assert check["max_abs_diff"] == pytest.approx(0.2) and check["rel_error"] == pytest.approx(0.2 / 16.01**0.5)
    assert check["top1_agreement"] == 0.5 and check["confident"] == 1 and check["confident_agreement"] == 1.0
    assert check["reference_max_abs"] == 4.0
    taps = accuracy([torch.ones(2, 4), torch.zeros(2, 3)], (torch.ones(2, 4), torch.ones(2, 3)))
    assert taps["max_abs_diff"] == 1.0 and "top1_agreement" not in taps


def test_warm_up_lasts_its_calls_and_its_time() -> None:
    calls: list[float] = []
    times = time_calls(lambda: calls.append(0.0), 3, warmup=2, warmup_s=0.0)
    assert len(times) == 3 and len(calls) == 5 and min(times) >= 0
    stamps: list[float] = []
    start = time.perf_counter()
    time_calls(lambda: (stamps.append(time.perf_counter()), time.sleep(0.002)), 1, warmup=1, warmup_s=0.03)
    # untimed calls until 30 ms have passed, then the timed one
    assert len(stamps) > 3 and stamps[-2] - start < 0.03 <= stamps[-1] - start


def test_paths_are_timed_in_interleaved_rounds(monkeypatch) -> None:
    monkeypatch.setattr(timing, "WARMUP_CALLS", 2)
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    calls: list[tuple[str, int]] = []

    def path(name: str, scale: float):  # type: ignore[no-untyped-def]
        def predict(x: torch.Tensor) -> torch.Tensor:
            calls.append((name, len(x)))
            return x * scale

        return predict

    x1, x32 = torch.ones(1, 2), torch.ones(32, 2)
    a, b = Candidate("a", True, "fp32", path("a", 1.0)), Candidate("b", False, "fp32", path("b", 2.0), compare=False)
    results = measure_interleaved([a, b], x1, x32, x32, runs=10, batch32_runs=2, rounds=5, log=lambda _: None)
    assert [r.name for r in results] == ["a", "b"]
    assert results[0].max_abs_diff == 0.0 and results[0].rel_error == 0.0 and results[1].max_abs_diff is None
    batch1 = [name for name, n in calls if n == 1]
    # after the warm-up, five rounds of (2 untimed + 2 timed) calls per path, every other round in reverse order
    timed = batch1[-40:]
    assert timed == (["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4) * 2 + ["a"] * 4 + ["b"] * 4
    assert [name for name, n in calls if n == 32][-4:] == ["a", "b", "b", "a"]
    # one batch-1 median per round
    assert all(len(r.batch1_ms_round_medians) == 5 and min(r.batch1_ms_round_medians) > 0 for r in results)


def test_bench_model_alone_is_infer(tmp_path: Path) -> None:
    # `mobilenets bench MODEL` (the form from before the sub-modes) runs `bench infer MODEL`
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "mobilenet_v3_small", "--resolution", "64", "--threads", "1", "--runs", "2", "--rounds", "1",
                 "--batch32-runs", "1", "--no-peers", "--json", str(out), "--plot", str(png)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and "torch" in report["versions"]
    assert set(report["host"]["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "amx_tile"} and report["host"]["cpu_model"]
    (section,) = report["models"]
    assert section["model"] == "mobilenet_v3_small" and section["resolution"] == 64
    names = {r["name"] for r in section["results"]}
    assert {"ours eager", "ours frozen TorchScript", "onnxruntime fp32", "onnxruntime int8"} <= names
    assert {"fp32", "reduced", "eager", "moonshot", "excluded"} == set(section["goals"])
    for r in section["results"]:
        assert {"name", "ours", "precision", "runtime", "detail", "batch1_ms_median", "batch32_img_s"} <= set(r)
        if r["ours"] and r["precision"] == "fp32":
            assert r["max_abs_diff"] <= 1e-4
    assert png.stat().st_size > 0


def test_bench_has_the_fused_engine_for_v2(tmp_path: Path) -> None:
    from mobilenets.deploy.fused import EngineUnavailable, load_library

    try:
        load_library()
    except EngineUnavailable as e:  # pragma: no cover - no compiler / AVX2 here
        pytest.skip(str(e))
    out = tmp_path / "bench.json"
    code = main(["bench", "infer", "mobilenet_v2@64", "--threads", "2", "--runs", "2", "--rounds", "2",
                 "--batch32-runs", "1", "--no-peers", "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["models"][0]["results"]}
    fp32 = rows["ours fused engine"]
    assert fp32["precision"] == "fp32" and fp32["max_abs_diff"] <= 1e-4 and fp32["peak_activation_bytes"] > 0
    assert fp32["runtime"] == "fused engine" and fp32["detail"]
    reduced = [r for r in rows.values() if r["runtime"] == "fused engine" and r["precision"] != "fp32"]
    assert reduced and all(r["ours"] and r["batch1_ms_median"] > 0 and r["rel_error"] is not None for r in reduced)
    assert report["rounds"] == 2


def test_tradeoff_command(tmp_path: Path) -> None:
    png, js = tmp_path / "f.png", tmp_path / "f.json"
    code = main(["bench", "tradeoff", "--out", str(png), "--json", str(js), "--runs", "1", "--widths", "0.35", "0.5",
                 "--resolutions", "64", "96"])  # fmt: skip
    assert code == 0
    points = json.loads(js.read_text())["points"]
    assert len(points) == 4 and png.stat().st_size > 0
    assert {p["path"] for p in points} <= {"fused engine", "frozen TorchScript"}
    assert all(p["latency_ms"] > 0 for p in points)
    by = {(p["width"], p["resolution"]): p for p in points}
    assert by[(0.5, 96)]["madds"] > by[(0.5, 64)]["madds"] and by[(0.5, 96)]["params"] == by[(0.5, 64)]["params"]

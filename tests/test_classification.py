"""Classification end to end through the CLI (train → eval → predict) and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.classification.metrics import Counts, FlipAverage, accumulate, per_class_accuracy, summarise
from mobilenets.cli import main
from mobilenets.data import embedded


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on an image folder with --val-split (RGB PNGs, one CMYK JPEG, one broken file)."""
    root = tmp_path_factory.mktemp("cls")
    data = root / "data"
    x, y = embedded.load("test")
    names = {0: "tshirt", 1: "trouser", 8: "bag"}
    for c, name in names.items():
        (data / name).mkdir(parents=True)
        for i in np.flatnonzero(y == c)[:10]:
            Image.fromarray(x[i]).convert("RGB").save(data / name / f"{i}.png")
    Image.fromarray(x[np.flatnonzero(y == 8)[20]]).convert("CMYK").save(data / "bag" / "cmyk.jpg")
    (data / "bag" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = root / "run"
    argv = [
        "train", "--data", str(data), "--val-split", "0.25", "--out", str(out), "--model", "mobilenet_v2",
        "--width", "0.35", "--resolution", "32", "--batch-size", "8", "--epochs", "1", "--workers", "1",
        "--threads", "1", "--no-progress", "--preset", "paper", "--lr", "0.01",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_train_writes_run_folder(run: Path):
    for name in ("best.safetensors", "last.json", "metrics.csv", "curves.png"):
        assert (run / name).is_file(), name
    header, row = (run / "metrics.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    # 25 % held out per class: round(2.5) + round(2.5) + round(3.0) = 7 of the 32 files
    assert float(values["val_n"]) + float(values["val_skipped"]) == 7
    assert 0.0 <= float(values["val_top1"]) <= 1.0


def _val_row(run: Path) -> dict[str, str]:
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    return dict(zip(header.split(","), row.split(","), strict=True))


def test_eval_defaults_to_the_runs_held_out_split(run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    # the run trained with --val-split 0.25: eval scores those 7 held-out files, as training's evaluation did
    assert main(["eval", "--checkpoint", str(run), "--workers", "0", "--json", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    row = _val_row(run)
    assert result["n"] + result["skipped"] == 7 and "held-out 0.25" in result["data"]
    assert result["n"] == float(row["val_n"]) and result["top1"] == pytest.approx(float(row["val_top1"]), abs=1e-6)
    # --data names other data: the whole folder (31 readable files, the broken one skipped)
    data = run.parent / "data"
    argv = ["eval", "--checkpoint", str(run), "--data", str(data), "--workers", "0", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["per_class"]) == {"bag", "trouser", "tshirt"}
    assert result["n"] == 31 and result["skipped"] == 1
    assert result["top5"] == 1.0  # 3 classes: top-5 always hits
    conf = torch.tensor(result["confusion"])
    assert conf.sum() == 31 and result["top1"] == pytest.approx(float(conf.diag().sum()) / 31)
    assert Path(result["confusion_png"]).stat().st_size > 1000


def test_eval_never_replaces_a_figure_in_the_run_folder(run: Path, capsys: pytest.CaptureFixture[str]):
    # without --out the figure goes beside the checkpoint; a confusion.png already there (an earlier evaluation's,
    # on other data) stays as it was and each evaluation draws the next free name
    (run / "confusion.png").write_bytes(b"an earlier evaluation's figure")
    drawn = []
    for _ in range(2):
        assert main(["eval", "--checkpoint", str(run), "--workers", "0", "--json"]) == 0
        drawn.append(Path(json.loads(capsys.readouterr().out)["confusion_png"]))
    assert drawn == [run / "confusion-2.png", run / "confusion-3.png"]
    assert all(png.stat().st_size > 1000 for png in drawn)
    assert (run / "confusion.png").read_bytes() == b"an earlier evaluation's figure"
    for png in (run / "confusion.png", *drawn):
        png.unlink()  # the module's run folder as the other tests expect it


def test_eval_flip_averages_image_and_mirror(run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    argv = ["eval", "--checkpoint", str(run), "--workers", "0", "--json", "--out", str(tmp_path), "--flip"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["flip"] is True and result["n"] == float(_val_row(run)["val_n"])


def test_flip_average_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))  # not mirror-symmetric
    x = torch.randn(3, 1, 3, 4)
    out = FlipAverage(model)(x)
    expected = ((model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2).log()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(FlipAverage(model)(x.flip(3)), out)  # a mirror image gets the same answer
    assert not torch.allclose(model(x).log_softmax(1), out)
    with torch.no_grad():  # logits far apart: probabilities underflow to 0, the log-probabilities stay finite
        model[1].weight.mul_(1e4)
    assert torch.isfinite(FlipAverage(model)(x)).all()


def test_predict_names_classes_and_reports_bad_files(run: Path, capsys, tmp_path: Path):
    import matplotlib.cbook

    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), str(hopper), "--top-k", "2", "--json"]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert [t["class"] in {"bag", "trouser", "tshirt"} for t in res["top"]] == [True, True]
    assert res["top"][0]["prob"] >= res["top"][1]["prob"]
    assert main(["predict", "--checkpoint", str(run), str(hopper), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "grace_hopper.jpg:" in captured.out and "bad.jpg" in captured.err


def test_cli_errors_are_one_line(run: Path, capsys, tmp_path: Path):
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    argv = ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    assert "data path not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_metrics_by_hand():
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    # 3 classes; logits chosen so predictions are 0, 2, 2, 1; labels 0, 1, 2, 1
    logits = torch.tensor([[3.0, 1, 0], [0, 1, 2], [0, 0, 5], [0, 4, 1]])
    labels = torch.tensor([0, 1, 2, 1])
    counts = accumulate(Fixed(), [{"images": logits, "labels": labels, "skipped": torch.tensor(2)}], 3)
    assert counts.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    s = summarise(counts)
    assert s["top1"] == 0.75 and s["top5"] == 1.0 and s["skipped"] == 2 and s["n"] == 4
    assert s["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    assert per_class_accuracy(counts.confusion) == [1.0, 0.5, 1.0]
    again = Counts.from_tensor(counts.as_tensor(), 3)
    assert torch.equal(again.confusion, counts.confusion) and again.top5 == counts.top5


def test_ablation_runs_every_variant_and_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import statistics

    from mobilenets.classification import ablate
    from mobilenets.config import OptimConfig, TrainConfig

    done: dict[str, float] = {}

    def fake_train(build_task, config):  # type: ignore[no-untyped-def]
        done[config.run.out] = {"linear": 0.9, "relu6": 0.8}[config.options.project_act] + 0.01 * config.run.seed
        return {}

    def rows(folder: Path, epochs: int):  # type: ignore[no-untyped-def]
        return [{"val_top1": done[str(folder)]}] if str(folder) in done else None

    monkeypatch.setattr(ablate, "_finished_rows", rows)
    base = TrainConfig(optim=OptimConfig(epochs=2))
    summary = ablate.run_ablation(fake_train, None, base, ["design", "relu6_projection"], [0, 1, 2], tmp_path)
    assert summary["top1"]["design"] == pytest.approx([0.9, 0.91, 0.92])
    assert summary["mean"]["relu6_projection"] == pytest.approx(0.81)
    assert summary["std"]["design"] == pytest.approx(statistics.stdev([0.9, 0.91, 0.92]))
    assert "| relu6_projection | relu6 | bottleneck | 0.8100 ± 0.0100 |" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_eval_and_predict_through_the_fused_engine(run: Path, capsys, tmp_path: Path):
    from mobilenets.deploy.fused import EngineUnavailable, load_library

    try:
        load_library()
    except EngineUnavailable as e:  # pragma: no cover - no compiler / AVX2 here
        pytest.skip(str(e))
    common = ["eval", "--checkpoint", str(run), "--workers", "0", "--json", "--out", str(tmp_path), "--device", "cpu"]
    results = {}
    for engine in ("pytorch", "fused", "fused-int8"):
        extra = ["--calibration", "embedded", "--calibration-count", "16"] if engine == "fused-int8" else []
        assert main([*common, "--engine", engine, *extra]) == 0
        results[engine] = json.loads(capsys.readouterr().out)
    assert results["fused"]["engine"] == "fused"
    # What ran, in the result and in the text: the level this CPU loads (or MOBILENETS_ENGINE_ISA forces).
    from mobilenets.deploy.fused import resolve_isa

    level = resolve_isa(None)
    assert results["fused"]["engine_runs"] == f"{level} level, fp32" and "engine_runs" not in results["pytorch"]
    assert results["fused-int8"]["engine_runs"].startswith(f"{level} level, int8")
    assert main([arg for arg in common if arg != "--json"] + ["--engine", "fused"]) == 0  # the text output
    assert f"engine: fused ({level} level, fp32)" in capsys.readouterr().out
    assert results["fused"]["confusion"] == results["pytorch"]["confusion"]  # fp32: the same answers
    assert results["fused"]["loss"] == pytest.approx(results["pytorch"]["loss"], abs=1e-4)
    assert results["fused-int8"]["n"] == results["pytorch"]["n"]
    assert abs(results["fused-int8"]["loss"] - results["pytorch"]["loss"]) < 0.1
    assert main(["eval", "--checkpoint", str(run), "--engine", "fused-int8", "--device", "cpu"]) == 2
    assert "--calibration" in capsys.readouterr().err
    # bf16 where a level of this CPU runs it (AVX512-BF16 or AMX), else one line saying why.
    from mobilenets.deploy import fused

    code = main([*common, "--engine", "fused-bf16"])
    if fused.bf16_isas():
        assert code == 0
        bf16 = json.loads(capsys.readouterr().out)
        assert bf16["engine"] == "fused-bf16" and bf16["n"] == results["pytorch"]["n"]
        assert abs(bf16["loss"] - results["pytorch"]["loss"]) < 0.02
    else:
        assert code == 2 and "bf16 engine needs" in capsys.readouterr().err

    import matplotlib.cbook

    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    tops = []
    for engine in ("pytorch", "fused"):
        assert main(["predict", "--checkpoint", str(run), str(hopper), "--engine", engine, "--json"]) == 0
        tops.append(json.loads(capsys.readouterr().out)[0]["top"])
    assert [t["class"] for t in tops[0]] == [t["class"] for t in tops[1]]
    assert [t["prob"] for t in tops[0]] == pytest.approx([t["prob"] for t in tops[1]], abs=1e-4)
    assert main(["predict", "--checkpoint", str(run), str(hopper), "--engine", "fused"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"engine: fused ({level} level, fp32)"

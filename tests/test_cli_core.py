"""The CLI contract of `mobilenets models | profile | published | convert`: output, JSON keys, and errors as one
stderr line with exit status 2 — the same through the console script's `main` and `python -m mobilenets`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilenets import create_model
from mobilenets.analysis.published import count_model
from mobilenets.cli import main
from mobilenets.convert import to_torchvision

PROFILE_KEYS = {"model", "width", "resolution", "num_classes", "params", "params_no_bn", "madds"}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["models"], capsys)
    assert code == 0
    names = out.split()
    assert {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small_minimal"} <= set(names)
    assert names == sorted(names)


def test_profile_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", "mobilenet_v2", "--width", "0.35", "--resolution", "96", "--num-classes", "1001", "--json"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary.keys() >= PROFILE_KEYS
    assert (summary["model"], summary["width"], summary["resolution"], summary["num_classes"]) == (
        "mobilenet_v2",
        0.35,
        96,
        1001,
    )
    expected = count_model("mobilenet_v2", 0.35, 96, 1001)
    assert (summary["madds"], summary["params_no_bn"], summary["params"]) == (
        expected.madds,
        expected.params_no_bn,
        expected.params,
    )


def test_profile_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["profile", "mobilenet_v3_small", "--resolution", "96"], capsys)
    assert code == 0 and "multiply-adds" in out and "params_no_bn" in out


def test_published(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["published", "--source", "v2_tfslim", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 22 and all(r["madds_agree"] and r["params_agree"] for r in rows)
    code, out, _ = run(["published"], capsys)
    assert code == 0 and "TF-Slim" in out and "published figures agree" in out


def test_convert_torchvision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = create_model("mobilenet_v3_small", num_classes=10).eval()
    torch.save(to_torchvision(source), tmp_path / "tv.pth")
    out_path = tmp_path / "ours.safetensors"
    code, out, err = run(
        ["convert", "--from", "torchvision", str(tmp_path / "tv.pth"), str(out_path), "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["model"], summary["num_classes"], summary["bn_eps"]) == ("mobilenet_v3_small", 10, 1e-3)
    loaded = create_model("mobilenet_v3_small", weights=out_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))

    # An existing output is kept unless --overwrite; the input is never the output.
    before = out_path.read_bytes()
    code, _, err = run(["convert", "--from", "torchvision", str(tmp_path / "tv.pth"), str(out_path)], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err and out_path.read_bytes() == before
    code, _, err = run(
        ["convert", "--from", "torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "tv.pth"), "--overwrite"], capsys
    )
    assert code == 2 and "is the input file" in err
    argv = ["convert", "--from", "torchvision", str(tmp_path / "tv.pth"), str(out_path), "--overwrite"]
    code, _, err = run(argv, capsys)
    assert code == 0, err


def _bad_state(tmp_path: Path) -> str:
    state = to_torchvision(create_model("mobilenet_v2", width=0.35))
    del state["features.5.conv.1.0.weight"]
    torch.save(state, tmp_path / "bad.pth")
    return str(tmp_path / "bad.pth")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["profile", "resnet50"], "resnet50"),
        (["profile", "mobilenet_v2", "--width", "-1"], "width"),
        (["profile", "mobilenet_v2", "--output-stride", "4"], "output stride"),
        (["profile", "mobilenet_v2", "--resolution", "0"], "resolution"),
        (["convert", "--from", "timm", "{tmp}/missing.pth", "{tmp}/out.safetensors"], "not found"),
        (["convert", "--from", "timm", "{tmp}/junk.pth", "{tmp}/out.safetensors"], "cannot read"),
        (["convert", "--from", "torchvision", "{bad}", "{tmp}/out.safetensors"], "features.5.conv.1.0.weight"),
        (["convert", "--from", "caffe", "{tmp}/junk.pth", "{tmp}/out.safetensors"], "caffe"),
        (["convert", "{tmp}/junk.pth", "{tmp}/out.safetensors"], "--from"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    bad = _bad_state(tmp_path) if "{bad}" in argv else ""
    code, out, err = run([a.format(tmp=tmp_path, bad=bad) for a in argv], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "out.safetensors").exists()


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=300)


def test_python_m_behaves_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", "mobilenet_v3_small", "--width", "0.5", "--resolution", "64", "--json"]
    done = _python_m(*argv)
    assert done.returncode == 0, done.stderr
    _, out, _ = run(argv, capsys)
    assert json.loads(done.stdout) == json.loads(out)
    failed = _python_m("profile", "resnet50")
    assert failed.returncode == 2
    assert failed.stdout == "" and len(failed.stderr.strip().splitlines()) == 1
    assert "Traceback" not in failed.stderr and "resnet50" in failed.stderr

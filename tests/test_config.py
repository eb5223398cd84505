"""Configs as data: every task's config round-trips through a checkpoint; eval, predict and --resume read the stored
values (the --val-split held-out set included); recipes and --set; bounds give one line naming the value."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenets.cli import main
from mobilenets.config import (
    TASK_OPTIONS,
    ClassifyOptions,
    DataConfig,
    DetectOptions,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    RunConfig,
    SegmentOptions,
    TrainConfig,
    legacy_args,
    load_recipe,
    parse_set,
)
from mobilenets.data import embedded
from mobilenets.engine.checkpoints import load_trained, save_model
from mobilenets.errors import ConfigError
from mobilenets.registry import create_model

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--workers", "0", "--threads", "1", "--no-progress"]

NON_DEFAULT = {
    "classify": ClassifyOptions(crop_scale=(0.5, 1.0), crop_pct=0.9, hflip=False, project_act="relu6"),
    "detect": DetectOptions(zoom_out=3.0, photometric=False, full_lowest_layer=True),
    "segment": SegmentOptions(aspp=False, scale_range=(0.75, 1.5), scenes=(6, 3), scene_size=96, top_k_pixels=0.5),
}
MODELS = {"classify": "mobilenet_v2", "detect": "ssdlite_mobilenet_v2", "segment": "deeplabv3_mobilenet_v2"}


@pytest.mark.parametrize("task", list(TASK_OPTIONS))
def test_every_tasks_config_round_trips_through_a_checkpoint(task: str, tmp_path: Path) -> None:
    config = TrainConfig(
        task=task,
        model=ModelConfig(name=MODELS[task], width=0.35, resolution=96, dropout=None if task == "detect" else 0.1),
        data=DataConfig(data="somewhere", val_split=0.2 if task == "classify" else None),
        optim=OptimConfig(preset="paper", lr=0.01, epochs=3, batch_size=16),
        run=RunConfig(seed=7, out=str(tmp_path)),
        options=NON_DEFAULT[task],
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = create_model(MODELS[task], width=0.35, num_classes=4)
    save_model(model, tmp_path / "m.safetensors", {"task": task, "config": config.to_dict()})
    trained = load_trained(tmp_path / "m.safetensors")
    assert trained.task == task and trained.config == config
    # a pre-config checkpoint stored the flat argparse namespace: read through the same fields
    save_model(model, tmp_path / "old.safetensors", {"task": task, "args": legacy_args(config)})
    assert load_trained(tmp_path / "old.safetensors").config == config


def test_plain_weight_file_gets_the_tasks_defaults(tmp_path: Path) -> None:
    from mobilenets.checkpoint import save_weights

    save_weights(create_model("ssdlite_mobilenet_v3_small", num_classes=3), tmp_path / "w.safetensors")
    trained = load_trained(tmp_path / "w.safetensors")
    assert trained.config == TrainConfig(task="detect", model=ModelConfig(name="ssdlite_mobilenet_v3_small"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 12 images in one folder (no val/): the run must hold part out with --val-split."""
    root = tmp_path_factory.mktemp("cfg_imgs")
    x, y = embedded.load("train")
    for c in (0, 1, 7):
        (root / f"c{c}").mkdir()
        for i in np.flatnonzero(y == c)[:12]:
            Image.fromarray(x[i]).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cfg_run") / "run"
    argv = ["train", "--data", str(folder), "--val-split", "0.25", "--out", str(out), "--width", "0.35",
            "--resolution", "64", "--batch-size", "9", "--epochs", "1", "--preset", "paper", "--lr", "0.02",
            "--seed", "5", *COMMON]  # fmt: skip
    assert main(argv) == 0
    return out


def test_eval_and_predict_use_the_stored_config(
    run: Path, folder: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trained = load_trained(run)
    assert trained.config.model.resolution == 64 and trained.config.data.val_split == 0.25
    assert trained.config.optim.lr == 0.02 and trained.config.run.seed == 5
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(run), "--json", "--workers", "0", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    logged = dict(zip(header.split(","), row.split(","), strict=True))
    # the 9 held-out images (25 % of 12 per class), the very set training evaluated, with the same top-1
    assert result["n"] == 9 == float(logged["val_n"])
    assert result["top1"] == pytest.approx(float(logged["val_top1"]), abs=1e-6)
    # predict preprocesses with the stored transform: its probabilities are the model's on that transform's input
    import torch

    from mobilenets.classification.task import eval_transform_of
    from mobilenets.data.images import load_rgb
    from mobilenets.data.transforms import eval_transform

    image = sorted((folder / "c0").glob("*.png"))[0]
    assert main(["predict", "--checkpoint", str(run), str(image), "--json", "--top-k", "1"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    transform = eval_transform_of(trained)
    assert transform.resolution == 64
    with torch.no_grad():
        probs = trained.model(eval_transform(transform, load_rgb(image))[None]).softmax(1)[0]
    assert len(pred["top"]) == 1 and pred["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_resume_keeps_the_stored_options_and_refuses_changes(run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert main(["train", "--resume", str(copy), "--lr", "0.1", *COMMON]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr 0.1 (stored 0.02)" in err[0] and "--init" in err[0]
    assert main(["train", "--resume", str(copy), "--resolution", "32", *COMMON]) == 2
    assert "model.resolution" in capsys.readouterr().err
    # runtime options and --epochs may change; everything else is the stored run's
    assert main(["train", "--resume", str(copy), "--epochs", "2", *COMMON]) == 0
    resumed = load_trained(copy / "checkpoints" / json.loads((copy / "last.json").read_text())["weights"])
    stored = load_trained(run / "checkpoints" / json.loads((run / "last.json").read_text())["weights"])
    assert resumed.config.optim == dataclasses.replace(stored.config.optim, epochs=2)
    assert resumed.config.run.out == str(copy) and stored.config.run.out == str(run)  # the copy continued
    assert (resumed.config.model, resumed.config.data, resumed.config.options) == (
        stored.config.model, stored.config.data, stored.config.options,
    )  # fmt: skip
    assert len((copy / "metrics.csv").read_text().strip().splitlines()) == 3


def test_dense_tasks_eval_their_stored_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # segmentation: the stored scene count and size decide what "the run's validation data" is
    config = TrainConfig(task="segment", model=ModelConfig(name="lraspp_mobilenet_v3_small", resolution=32),
                         options=SegmentOptions(scenes=(4, 3), scene_size=32))  # fmt: skip
    model = create_model("lraspp_mobilenet_v3_small", width=0.35, num_classes=11)
    save_model(model, tmp_path / "seg.safetensors", {"task": "segment", "config": config.to_dict()})
    assert main(["eval", "--checkpoint", str(tmp_path / "seg.safetensors"), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and result["image_size"] == 32


def test_main_job_recipe_is_the_main_jobs_command_line() -> None:
    from mobilenets.commands.train import parse

    old = (
        "--model mobilenet_v2 --width 0.5 --data embedded --resolution 64 --epochs 4 --batch-size 128 --optimizer "
        "adamw --lr 3e-3 --warmup-epochs 0.15 --crop-scale 1 1 --channels-last --out X --workers 0 --threads 2"
    )
    new = f"--recipe {REPO / 'recipes' / 'fmnist_v2.toml'} --out X --workers 0 --threads 2"
    assert parse(old.split())[1] == parse(new.split())[1]


# Each recipe beside the command line docs/ gives for the same run.
RECIPE_COMMANDS = {
    "fmnist_full_os16": "--model mobilenet_v2 --width 0.5 --output-stride 16 --data /usr/share/datasets/fashion-mnist "
    "--resolution 64 --epochs 15 --batch-size 128 --optimizer adamw --lr 3e-3 --warmup-epochs 0.1 --crop-scale 0.75 1 "
    "--channels-last",
    "fmnist_full_ft": "--model mobilenet_v2 --width 0.5 --output-stride 16 --data /usr/share/datasets/fashion-mnist "
    "--resolution 64 --epochs 8 --batch-size 128 --optimizer adamw --lr 1e-3 --warmup-epochs 0.3 --crop-scale 0.85 1 "
    "--channels-last --init runs/fmnist_os16/best.safetensors",
    "det256_clutter": "--task detect --model ssdlite_mobilenet_v2 --width 0.5 --data embedded --resolution 256 "
    "--batch-size 32 --epochs 20 --eval-every 10 --optimizer adamw --lr 3e-3 --warmup-epochs 0.5 --ema-decay 0.99 "
    "--backbone-init runs/clutter/best.safetensors --full-lowest-layer --channels-last",
    "seg_name3": "--task segment --model lraspp_mobilenet_v2 --width 0.5 --data embedded --scenes 2000 200 "
    "--scene-size 256 --resolution 128 --scale-range 0.75 1.25 --epochs 48 --eval-every 12 --batch-size 16 "
    "--optimizer adamw --lr 1e-3 --warmup-epochs 0.3 --ema-decay 0.99 --naming-pool 3 "
    "--init runs/clutter/best.safetensors --channels-last",
}


@pytest.mark.parametrize("name", sorted(RECIPE_COMMANDS))
def test_recipes_are_the_documented_runs(name: str) -> None:
    from mobilenets.commands.train import parse

    run = ["--out", "X", "--workers", "0", "--threads", "2"]
    assert (
        parse([*RECIPE_COMMANDS[name].split(), *run])[1]
        == parse(["--recipe", str(REPO / "recipes" / f"{name}.toml"), *run])[1]
    )


def test_recipe_file_flags_and_set(tmp_path: Path) -> None:
    from mobilenets.commands.train import parse

    recipe = REPO / "recipes" / "fmnist_v2.toml"
    _, config = parse(["--recipe", str(recipe), "--out", str(tmp_path)])
    assert config.model.name == "mobilenet_v2" and config.model.width == 0.5 and config.model.resolution == 64
    assert config.optim.optimizer == "adamw" and config.optim.lr == 3e-3 and config.options.crop_scale == (1.0, 1.0)
    _, config = parse(["--recipe", str(recipe), "--lr", "2e-3", "--set", "optim.lr=1e-3", "--set",
                       "classify.hflip=false", "--out", str(tmp_path)])  # fmt: skip
    assert config.optim.lr == 1e-3 and config.options.hflip is False and config.optim.epochs == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "classify"\n[optim]\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match=r"SECTION\.FIELD=VALUE"):
        parse_set(["lr=1"], "classify")
    with pytest.raises(ConfigError, match="detect"):
        parse_set(["detect.zoom_out=2"], "classify")


def test_detect_help_shows_only_detection_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--task", "detect", "--help"])
    text = capsys.readouterr().out
    assert "--zoom-out" in text and "--crop-scale" not in text and "--scene-size" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "classify" in text and "detect" in text and "segment" in text and "--task TASK --help" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--width", "inf"], "width"),
        (["train", "--width", "nan"], "width"),
        (["train", "--width", "1e9"], "width"),
        (["train", "--resolution", "100000"], "resolution"),
        (["train", "--resolution", "1e9"], "1e9"),
        (["train", "--resolution", "100"], "multiple of 32"),
        (["train", "--num-classes", "100000"], "num_classes"),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "--epochs", "100000"], "epochs"),
        (["train", "--threads", "0"], "threads"),
        (["train", "--lr", "nan"], "lr"),
        (["train", "--batch-size", "100000"], "batch_size"),
        (["train", "--val-split", "1.5"], "val_split"),
        (["train", "--set", "optim.lr=inf"], "lr"),
        (["eval", "--checkpoint", "x", "--threads", "0"], "threads"),
        (["predict", "--checkpoint", "x", "img.png", "--top-k", "0"], "top_k"),
        (["predict", "--checkpoint", "x", "img.png", "--top-k", "-3"], "top_k"),
        (["predict", "--checkpoint", "x", "img.png", "--top-k", "100000"], "top_k"),
    ],
)
def test_bounds_are_one_line_before_any_work(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    if argv[0] == "train":
        argv = ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "none"), *argv[1:]]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (an int flag given "1e9") exit through SystemExit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_config_checks_by_hand() -> None:
    for bad in (float("inf"), float("nan"), 1e9, 0.0, -1.0):
        with pytest.raises(ConfigError, match="width"):
            ModelConfig(width=bad)
    with pytest.raises(ConfigError, match="4096"):
        ModelConfig(resolution=8192)
    with pytest.raises(ConfigError, match="val-split or --val-data"):
        DataConfig(val_split=0.1, val_data="x")
    assert TrainConfig(task="segment", model=ModelConfig(resolution=513)).model.resolution == 513  # DeepLab crops
    with pytest.raises(ConfigError, match="odd"):
        SegmentOptions(context=4)
    with pytest.raises(ConfigError, match="val_split does not apply to task 'detect'"):
        TrainConfig(task="detect", data=DataConfig(val_split=0.2))
    with pytest.raises(ConfigError, match="top_k"):
        PredictConfig(top_k=0)
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size=0)


def test_single_class_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, _ = embedded.load("train")
    for split in ("train", "val"):
        (tmp_path / "d" / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(x[i]).save(tmp_path / "d" / split / "only" / f"{i}.png")
    argv = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--resolution", "32", *COMMON]
    assert main(argv) == 2
    assert "at least 2" in capsys.readouterr().err


def test_eval_flag_for_another_task_is_named(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--class-agnostic", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--class-agnostic" in err and "classify" in err


def test_detector_predict_keeps_every_detection_and_distinct_outputs(tmp_path: Path, capsys) -> None:
    # a random detector scores many boxes: with threshold 0 it keeps up to the model's own limit, not a top-k of 5
    config = TrainConfig(task="detect", model=ModelConfig(name="ssdlite_mobilenet_v3_small", resolution=64))
    model = create_model("ssdlite_mobilenet_v3_small", width=0.35, num_classes=3, score_threshold=0.0)
    ckpt = tmp_path / "det.safetensors"
    save_model(model, ckpt, {"task": "detect", "config": config.to_dict()})
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):  # two inputs with the same file stem
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / folder / "img.png")
    out = tmp_path / "pred"
    argv = ["predict", "--checkpoint", str(ckpt), str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png"),
            "--score-threshold", "0", "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert len({r["png"] for r in results}) == 2 and all(Path(r["png"]).is_file() for r in results)
    assert len(results[0]["detections"]) > 5
    assert len(results[0]["detections"]) <= model.config.max_detections
    assert main([*argv, "--max-detections", "3"]) == 0
    assert [len(r["detections"]) for r in json.loads(capsys.readouterr().out)] == [3, 3]
    assert main([*argv, "--top-k", "2"]) == 2  # a classifier's option, named
    assert "--top-k" in capsys.readouterr().err


def test_segment_model_may_name_the_backbone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mobilenets.segmentation.task import segmenter_name

    assert segmenter_name("mobilenet_v2") == "deeplabv3_mobilenet_v2"  # the default --model trains a segmenter
    assert segmenter_name("lraspp_mobilenet_v3_small") == "lraspp_mobilenet_v3_small"
    argv = ["train", "--task", "segment", "--model", "mobilenet_v3_small", "--out", str(tmp_path / "r"), *COMMON]
    assert main(argv) == 2  # a classifier's name with no DeepLab on it: one line, not a traceback in the loss
    assert "deeplabv3_* or lraspp_*" in capsys.readouterr().err


def test_export_eval_defaults_to_the_runs_held_out_split(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), str(out), "--json", "--eval"]) == 0
    summary = json.loads(capsys.readouterr().out)
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    logged = dict(zip(header.split(","), row.split(","), strict=True))
    # scored on the 9 held-out images training evaluated: PyTorch's top-1 is the logged one, ONNX's agrees
    assert summary["top1"]["pytorch"] == pytest.approx(float(logged["val_top1"]), abs=1e-6)
    assert summary["top1"]["onnx_fp32"] == pytest.approx(summary["top1"]["pytorch"], abs=1 / 9 + 1e-6)

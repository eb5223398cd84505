"""The training engine: exact resume (exception and kill -9), DDP equivalence, non-finite stops, recipe parts."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mobilenets.classification.task import ClassifyTask
from mobilenets.cli import main
from mobilenets.engine.checkpoints import read_state
from mobilenets.engine.data import EvalBatchSampler, SeededDataset, ShardedBatchSampler
from mobilenets.engine.optim import EMA, RMSpropTF, lr_at, param_groups, resolve_recipe
from mobilenets.engine.trainer import KILL_AT_STEP_ENV, NonFiniteLoss
from mobilenets.registry import create_model
from run_util import train_args, write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    info = json.loads((out / "last.json").read_text())
    return load_file(str(out / "checkpoints" / info["weights"]))


def state_of(out: Path) -> dict:
    info = json.loads((out / "last.json").read_text())
    return read_state(out / "checkpoints" / info["state"])


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ea, eb = state_of(a)["ema"]["weights"], state_of(b)["ema"]["weights"]
    for k in ea:
        assert torch.equal(ea[k], eb[k]), f"ema {k}"
    rows_a, rows_b = state_of(a)["rows"], state_of(b)["rows"]
    drop = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]


def test_resume_after_exception_continues_exactly(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # 36 images / batch 9 = 4 steps per epoch; checkpoints at steps 3 (mid-epoch 1), 4 (end of 1), 6 (mid-epoch 2)
    extra = ("--checkpoint-every", "3", "--dropout", "0.2")  # dropout: the model's own RNG must be restored too
    assert main(train_args(folder, tmp_path / "full", *extra)) == 0

    real_loss = ClassifyTask.loss
    calls = {"n": 0}

    def failing_loss(self, model, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 8:  # inside step 8, after the mid-epoch checkpoint at step 6
            raise RuntimeError("injected failure")
        return real_loss(self, model, batch)

    monkeypatch.setattr(ClassifyTask, "loss", failing_loss)
    with pytest.raises(RuntimeError, match="injected"):
        main(train_args(folder, tmp_path / "cut", *extra))
    assert state_of(tmp_path / "cut")["step"] == 6
    monkeypatch.setattr(ClassifyTask, "loss", real_loss)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--workers", "0", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    # the logs were rewritten from the checkpoint: one CSV row per epoch, no duplicates from the failed attempt
    lines = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("1,") and lines[2].startswith("2,")
    assert (tmp_path / "cut" / "curves.png").stat().st_size > 1000
    if importlib.util.find_spec("tensorboard") is not None:  # optional: TensorBoard logs only where it is installed
        assert any((tmp_path / "cut" / "tb").iterdir())
    else:
        assert not (tmp_path / "cut" / "tb").exists()
    # best.safetensors is a create_model-loadable file
    model = create_model("mobilenet_v2", weights=tmp_path / "cut" / "best.safetensors")
    assert model.config.num_classes == 3 and model.config.width == 0.35


@pytest.mark.slow
def test_kill_9_and_resume_matches_uninterrupted(folder: Path, tmp_path: Path):
    cmd = [sys.executable, "-m", "mobilenets", *train_args(folder, tmp_path / "run", "--workers", "1")]
    env = {**os.environ, KILL_AT_STEP_ENV: "5"}  # SIGKILL right after step 5 (epoch 2 in progress)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]
    assert state_of(tmp_path / "run")["step"] == 4  # the end-of-epoch-1 checkpoint survived intact
    resume = [sys.executable, "-m", "mobilenets", "train", "--resume", str(tmp_path / "run"), "--workers", "1",
              "--threads", "1", "--no-progress"]  # fmt: skip
    r = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # the reference runs in this process: same seed, same thread count, workers 0 (order does not depend on it)
    assert main(train_args(folder, tmp_path / "ref")) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_same_global_batch(folder: Path, tmp_path: Path):
    """2 ranks × batch 6 vs 1 process × 2 accumulated micro-batches of 6: the same 12 images per step, cut the same
    way, so even BatchNorm's per-micro-batch statistics agree. Tolerance: parameters within 1e-5 absolute + 1e-4
    relative (all-reduce sums in a different order than accumulation does); BN running statistics are not
    compared (DDP keeps rank 0's, accumulation sees both halves). Dropout off: its masks are per-rank RNG."""
    common = ["--batch-size", "6", "--dropout", "0", "--label-smoothing", "0.1"]
    torchrun = shutil.which("torchrun")
    assert torchrun
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={port}", "-m", "mobilenets",
           *train_args(folder, tmp_path / "ddp", *common)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(train_args(folder, tmp_path / "one", *common, "--accum-steps", "2")) == 0
    wa, wb = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "one")
    params = dict(create_model("mobilenet_v2", width=0.35, num_classes=3).named_parameters())
    for k in params:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)
    ra, rb = state_of(tmp_path / "ddp")["rows"], state_of(tmp_path / "one")["rows"]
    for a, b in zip(ra, rb, strict=True):  # train loss is reduced over both ranks
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert len(list((tmp_path / "ddp").glob("checkpoints/*.state.safetensors"))) >= 1  # rank 0 wrote; nothing collided


def test_non_finite_loss_stops_naming_last_checkpoint(folder: Path, tmp_path: Path, monkeypatch, capsys):
    real_loss = ClassifyTask.loss
    calls = {"n": 0}

    def nan_loss(self, model, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, scalars = real_loss(self, model, batch)
        return (loss * float("nan") if calls["n"] == 6 else loss), scalars

    monkeypatch.setattr(ClassifyTask, "loss", nan_loss)
    with pytest.raises(NonFiniteLoss, match=r"e0001-s000000004\.safetensors"):
        from mobilenets.commands.train import parse
        from mobilenets.engine.trainer import train

        _, config = parse(train_args(folder, tmp_path / "nan")[1:])
        train(ClassifyTask, config)
    # through the CLI it is one line and exit 2
    calls["n"] = 0
    assert main(train_args(folder, tmp_path / "nan2")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss") and "last good checkpoint" in err


def test_init_from_checkpoint_with_other_class_count(tmp_path: Path):
    from mobilenets.checkpoint import save_weights
    from mobilenets.engine.checkpoints import init_from

    src = create_model("mobilenet_v2", width=0.35, num_classes=10)
    save_weights(src, tmp_path / "src.safetensors")
    dst = create_model("mobilenet_v2", width=0.35, num_classes=3)
    fresh = dst.classifier.weight.clone()
    init_from(dst, tmp_path / "src.safetensors")
    for (k, a), b in zip(dst.state_dict().items(), src.state_dict().values(), strict=True):
        if not k.startswith("classifier."):
            assert torch.equal(a, b), k
    assert torch.equal(dst.classifier.weight, fresh)


@pytest.mark.parametrize(
    ("dense", "classifier"),
    [
        ("deeplabv3_mobilenet_v2", "mobilenet_v2"),
        ("lraspp_mobilenet_v2", "mobilenet_v2"),
        ("lraspp_mobilenet_v3_small", "mobilenet_v3_small"),
        ("ssdlite_mobilenet_v2", "mobilenet_v2"),
    ],
)
def test_init_dense_model_from_classification_checkpoint(tmp_path: Path, dense: str, classifier: str):
    from mobilenets.checkpoint import save_weights
    from mobilenets.engine.checkpoints import init_from
    from mobilenets.errors import CheckpointError

    src = create_model(classifier, width=0.5, num_classes=10)
    for m in src.modules():  # non-trivial BatchNorm statistics, so a skipped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    save_weights(src, tmp_path / "cls.safetensors")
    dst = create_model(dense, width=0.5, num_classes=4)
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith("backbone.")}
    init_from(dst, tmp_path / "cls.safetensors")
    theirs = src.state_dict()
    loaded = {k.removeprefix("backbone."): v for k, v in dst.state_dict().items() if k.startswith("backbone.")}
    assert loaded and all(torch.equal(v, theirs[k]) for k, v in loaded.items())
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in head_before.items())  # the dense head stays fresh
    with pytest.raises(CheckpointError, match="as backbone"):  # another width: shapes do not fit
        init_from(create_model(dense, width=1.0, num_classes=4), tmp_path / "cls.safetensors")


# --- pure parts of the recipe ------------------------------------------------------------------------------
def test_no_weight_decay_on_depthwise_bn_and_biases():
    model = create_model("mobilenet_v2", width=0.35, num_classes=5)
    decay, rest = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            dw = module.groups == module.in_channels and module.groups > 1
            assert (f"{name}.weight" in decayed) != dw, name
    assert "classifier.weight" in decayed and "classifier.bias" not in decayed
    assert not any(n.endswith(".bias") or ".bn." in n for n in decayed)
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_learning_rate_schedules():
    paper = resolve_recipe("paper")
    assert (paper.optimizer, paper.lr, paper.rmsprop_decay, paper.momentum, paper.eps) == (
        "rmsproptf",
        0.045,
        0.9,
        0.9,
        1.0,
    )
    for epoch in (0, 1, 5):  # V2 §6.1: 0.045 × 0.98 per epoch
        assert lr_at(paper, epoch * 10 + 3, 10, 200) == pytest.approx(0.045 * 0.98**epoch)
    modern = resolve_recipe("modern", lr=0.2)
    assert lr_at(modern, 0, 10, 50) == pytest.approx(0.2 / 10)  # warm-up: 1 epoch, linear
    assert lr_at(modern, 9, 10, 50) == pytest.approx(0.2)
    assert lr_at(modern, 10 + 20, 10, 50) == pytest.approx(0.1)  # half-way through the cosine
    assert lr_at(modern, 50, 10, 50) == pytest.approx(0.0, abs=1e-12)
    assert resolve_recipe("modern", optimizer="adamw").weight_decay == 0.05


def test_rmsprop_tf_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9)
    g = torch.tensor([0.5, 1.0])
    for _ in range(2):
        w.grad = g.clone()
        opt.step()
    ms1 = 0.9 * 1 + 0.1 * g**2  # mean square starts at 1 (TF1)
    m1 = 0.1 * g / torch.sqrt(ms1 + 1.0)  # epsilon inside the square root
    ms2 = 0.9 * ms1 + 0.1 * g**2
    m2 = 0.9 * m1 + 0.1 * g / torch.sqrt(ms2 + 1.0)
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0]) - m1 - m2)


def test_ema_warms_up_and_tracks():
    model = torch.nn.Linear(2, 1)
    for p in model.parameters():
        p.data.fill_(0.0)
    ema = EMA(model, decay=0.999)
    for p in model.parameters():
        p.data.fill_(1.0)
    ema.update(model)  # decay min(0.999, 2/11)
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - 2 / 11)


def test_sharded_batches_equal_accumulated_batches():
    one = ShardedBatchSampler(50, 4, world=1, rank=0, accum=2, seed=7)
    ranks = [ShardedBatchSampler(50, 4, world=2, rank=r, accum=1, seed=7) for r in (0, 1)]
    for s in (one, *ranks):
        s.set_epoch(3)
    a = list(one)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert one.steps_per_epoch == 6 and len(a) == 12
    assert a[0::2] == b0 and a[1::2] == b1  # step k: micro-batch r of the single process = rank r's batch
    flat = [i for batch in a for i in batch]
    assert len(set(flat)) == len(flat) == 48  # no repeats; the 2 left over are dropped
    one.set_epoch(3, start_step=4)
    assert list(one) == a[8:]
    one.set_epoch(4)
    assert list(one) != a  # a new permutation per epoch
    ev = [list(EvalBatchSampler(11, 4, 2, r)) for r in (0, 1)]
    assert sorted(i for batch in ev[0] + ev[1] for i in batch) == list(range(11))


def test_seeded_dataset_is_order_free_and_leaves_global_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> float:
            return float(torch.rand(1)) + float(np.random.rand())

    ds = SeededDataset(Noise(), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    forward = [ds[i] for i in range(5)]
    assert torch.equal(torch.get_rng_state(), before)
    assert [ds[i] for i in reversed(range(5))] == forward[::-1]
    ds.epoch = 1
    assert [ds[i] for i in range(5)] != forward
    assert not math.isnan(forward[0])


_FAULTS_SCRIPT = """
import resource, sys, torch
from mobilenets.engine.allocator import keep_freed_memory
torch.set_num_threads(1)
kept = keep_freed_memory() if sys.argv[1] == "1" else False
x = torch.ones(16 * 2**20, requires_grad=True)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
def step():  # a training step in miniature: 64 MiB activations allocated and freed, forward and backward
    ((x * 2).relu() + 1).sum().backward()
step(), step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 5, float(x.grad.sum()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_large_blocks() -> None:
    """Without ``keep_freed_memory`` every 64 MiB activation of a step is a fresh mmap, faulted in page by page
    (about 80,000 faults per step here); with it most are reused from the heap. Same gradients either way."""
    counts = {}
    for keep in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, keep], capture_output=True, text=True, check=True)
        kept, faults, grad = out.stdout.split()
        counts[keep] = (kept, int(faults), float(grad))
    (plain_kept, plain, plain_grad), (kept, faults, grad) = counts["0"], counts["1"]
    assert plain_kept == "False" and plain > 4 * 16_384  # four 64 MiB blocks per step, all faulted again
    assert kept == "True" and faults < plain / 2
    assert grad == plain_grad == 2.0 * 16 * 2**20 * 7  # 7 backward passes, d/dx = 2 everywhere


def test_malformed_training_metadata_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from mobilenets.checkpoint import META_KEY
    from mobilenets.engine.checkpoints import TRAIN_META_KEY, load_trained, task_of
    from mobilenets.errors import CheckpointError

    model = create_model("mobilenet_v2", width=0.35, num_classes=3)
    info = json.dumps({"model": "mobilenet_v2", "config": model.config.to_dict()})
    for stem, train in (("cut", '{"task": "classify"'), ("list", '["classify"]')):
        path = tmp_path / f"{stem}.safetensors"
        save_file(model.state_dict(), str(path), metadata={META_KEY: info, TRAIN_META_KEY: train})
        with pytest.raises(CheckpointError, match=rf"{stem}\.safetensors: malformed training metadata"):
            load_trained(path)
        assert task_of(path) is None  # unreadable: loading it says why

"""The one training loop every task uses: ``train(build_task, config)``.

Exactness is designed in rather than hoped for: the data order is a pure function of (seed, epoch, step)
(``engine.data``), the learning rate a pure function of the step (``engine.optim.lr_at``), and a checkpoint
holds every other piece of state — weights, optimiser slots, EMA, each rank's RNG states, the epoch's running
sums and the log rows. Resuming therefore replays the same arithmetic an uninterrupted run performs.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mobilenets.checkpoint import load_into
from mobilenets.config import TrainConfig
from mobilenets.engine import checkpoints, runs
from mobilenets.engine.allocator import keep_freed_memory
from mobilenets.engine.data import EvalBatchSampler, SeededDataset, ShardedBatchSampler, mix_seed, to_device
from mobilenets.engine.distributed import Dist, all_gather_object, all_reduce_sum, barrier, setup, teardown
from mobilenets.engine.logs import Progress, RunLog
from mobilenets.engine.optim import EMA, build_optimizer, lr_at
from mobilenets.engine.task import Task
from mobilenets.errors import ConfigError, MobilenetsError

# Test hook: SIGKILL this process right after optimiser step N (and any checkpoint due at N) — a real kill -9.
KILL_AT_STEP_ENV = "MOBILENETS_TEST_KILL_AT_STEP"


# Step scalars that are counts (images skipped as unreadable): the epoch's row holds their total, not a mean.
COUNTED = ("skipped",)


class NonFiniteLoss(MobilenetsError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    import random

    random.seed(seed)


def train(build_task: Callable[[TrainConfig], Task], config: TrainConfig) -> dict[str, Any]:
    """Train ``build_task(config)`` as ``config`` says; returns a summary (best metric, last row, run folder).
    With ``config.run.resume`` the run continues from its last checkpoint: ``config`` is then the run's stored
    config with this invocation's runtime fields (``mobilenets.config.RESUMABLE``)."""
    d = setup(config.run.device)
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
            return _train(build_task, config, d, held)
    finally:
        teardown(d)


def _train(
    build_task: Callable[[TrainConfig], Task], config: TrainConfig, d: Dist, held: contextlib.ExitStack
) -> dict[str, Any]:
    run, optim = config.run, config.optim
    resumed = checkpoints.load_resume(run.resume) if run.resume else None
    if run.out is None:
        raise ConfigError("--out is required (the folder for checkpoints and logs)")
    out = Path(run.out)
    if d.is_main:  # one writer per run folder; a new run never replaces an old one unasked (engine/runs.py)
        held.enter_context(runs.claim(out, resuming=resumed is not None, overwrite=run.overwrite))
        if resumed is not None and resumed.note:
            print(resumed.note, file=sys.stderr)
    recipe = config.optim.recipe_for(d.world)
    if run.threads:
        torch.set_num_threads(run.threads)
    if d.device.type == "cpu":
        keep_freed_memory()  # activations reused step to step instead of re-faulted (engine/allocator.py)
    _seed_everything(mix_seed(run.seed, d.rank))

    task = build_task(config)
    model = task.build_model()
    if config.model.init and resumed is None:
        checkpoints.init_from(model, config.model.init)
    model.to(d.device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None

    train_set, val_set = task.datasets()
    train_seeded, val_seeded = SeededDataset(train_set, run.seed), SeededDataset(val_set, run.seed)
    sampler = ShardedBatchSampler(len(train_set), optim.batch_size, d.world, d.rank, optim.accum_steps, run.seed)
    spe = sampler.steps_per_epoch
    total_steps = optim.epochs * spe if not run.max_steps else min(run.max_steps, optim.epochs * spe)

    loop: dict[str, Any] = {"epoch": 0, "epoch_step": 0, "step": 0, "best": -math.inf, "rows": [], "sums": {}}
    last_ckpt: str = "none (no checkpoint written yet)"
    if resumed is not None:
        load_into(model, resumed.weights, source=str(resumed.weights_path))
        state = resumed.state
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        rngs = state["rng"]
        if len(rngs) != d.world:
            raise ConfigError(f"checkpoint was written by {len(rngs)} processes; resume with the same number")
        checkpoints.set_rng_state(rngs[d.rank])
        loop = {k: state[k] for k in loop if k != "sums"}
        loop["sums"] = dict(state["sums"][d.rank])
        last_ckpt = str(resumed.weights_path)

    net: nn.Module = model
    if d.enabled:
        net = DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)
    log = RunLog(out, loop["rows"]) if d.is_main else None
    train_meta = {
        "task": task.name,
        "config": config.to_dict(),
        "metadata": task.metadata() if hasattr(task, "metadata") else {},
    }
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=run.bf16)
    images_per_step = optim.batch_size * optim.accum_steps * d.world
    run_start, run_start_step = time.perf_counter(), loop["step"]

    def save(tag: str) -> str:
        state = {
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": all_gather_object(checkpoints.rng_state()),  # every rank's, for dropout and friends
            "sums": all_gather_object(loop["sums"]),  # each rank's running sums of the epoch in progress
            **{k: loop[k] for k in ("epoch", "epoch_step", "step", "best", "rows")},
        }
        path = ""
        if d.is_main:
            meta = {**train_meta, "epoch": loop["epoch"], "step": loop["step"]}
            path = str(checkpoints.save_checkpoint(out, tag, model, meta, state))
        barrier(d)
        return path or last_ckpt

    lr = lr_at(recipe, loop["step"], spe, total_steps)
    stop = False
    while loop["epoch"] < optim.epochs and not stop:
        epoch = loop["epoch"]
        sampler.set_epoch(epoch, loop["epoch_step"])
        train_seeded.epoch = epoch
        loader = DataLoader(
            train_seeded, batch_sampler=sampler, collate_fn=task.collate, num_workers=run.workers,
            generator=torch.Generator().manual_seed(mix_seed(run.seed, epoch, d.rank)),
            pin_memory=d.device.type == "cuda",
        )  # fmt: skip
        net.train()
        sums: dict[str, float] = dict(loop["sums"]) or {"n": 0.0, "loss": 0.0}
        bar = Progress(  # a tqdm bar on a terminal; in a log file a few lines, never one per step
            total=spe, initial=loop["epoch_step"], desc=f"epoch {epoch + 1}/{optim.epochs}", unit="step",
            disable=not (run.progress and d.is_main), dynamic_ncols=True, leave=True,
        )  # fmt: skip
        epoch_start, epoch_start_step = time.perf_counter(), loop["epoch_step"]
        for i, batch in enumerate(loader):
            micro = i % optim.accum_steps
            if micro == 0:
                lr = lr_at(recipe, loop["step"], spe, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            batch = to_device(batch, d.device, run.channels_last)
            sync = micro == optim.accum_steps - 1
            ctx = net.no_sync() if d.enabled and not sync else contextlib.nullcontext()
            with ctx:
                with autocast:
                    loss, scalars = _loss(task, net, batch)
                finite = torch.isfinite(loss.detach()).float().reshape(1)
                if not bool(all_reduce_sum(finite, d).item() == d.world):
                    raise NonFiniteLoss(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {loop['step'] + 1}; "
                        f"last good checkpoint: {checkpoints.last_good(out)} (resume with --resume {out} and a "
                        "lower --lr)"
                    )
                (loss / optim.accum_steps).backward()
            sums["n"] += 1
            sums["loss"] += float(loss.detach())
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if not sync:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            loop["step"] += 1
            loop["epoch_step"] += 1
            loop["sums"] = sums
            elapsed = time.perf_counter() - epoch_start
            rate = (loop["epoch_step"] - epoch_start_step) * images_per_step / max(elapsed, 1e-9)
            run_rate = (loop["step"] - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
            bar.set_postfix(
                loss=f"{sums['loss'] / sums['n']:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}",
                run_eta=f"{(total_steps - loop['step']) / max(run_rate, 1e-9) / 60:.1f}min",
            )  # fmt: skip
            bar.update(1)
            if log is not None and run.log_every and loop["step"] % run.log_every == 0:
                log.scalar("step/loss", float(loss.detach()), loop["step"])
                log.scalar("step/lr", lr, loop["step"])
            last_step = run.max_steps and loop["step"] >= run.max_steps
            due = run.checkpoint_every and loop["step"] % run.checkpoint_every == 0
            if due and loop["epoch_step"] < spe and not last_step:
                last_ckpt = save(f"e{epoch:04d}-s{loop['step']:09d}")
            if kill_at and loop["step"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if last_step:
                stop = True
                break
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        keys = sorted(sums)
        totals = dict(
            zip(
                keys,
                all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), d).tolist(),
                strict=True,
            )
        )
        means = {k: v if k in COUNTED else v / totals["n"] for k, v in totals.items()}
        row: dict[str, Any] = {"epoch": epoch + 1, "step": loop["step"], "lr": lr}
        row.update({f"train_{k}": round(v, 6) for k, v in means.items() if k != "n"})
        row["images_per_s"] = round((loop["epoch_step"] - epoch_start_step) * images_per_step / epoch_time, 1)
        row["epoch_time_s"] = round(epoch_time, 2)
        loop["epoch"], loop["epoch_step"], loop["sums"] = epoch + 1, 0, {}
        if (epoch + 1) % run.eval_every == 0 or loop["epoch"] >= optim.epochs or stop:
            eval_model = ema.module if ema is not None else model
            metrics = evaluate(
                task, eval_model, val_seeded, optim.batch_size, run.workers, d, run.bf16, run.channels_last
            )
            row.update({f"val_{k}": round(float(v), 6) for k, v in metrics.items()})
            score = float(metrics[task.primary_metric])
            if score > loop["best"]:
                loop["best"] = score
                if d.is_main:
                    best_meta = {**train_meta, "epoch": loop["epoch"], "step": loop["step"], "metrics": metrics}
                    checkpoints.save_model(eval_model, out / "best.safetensors", best_meta)
        loop["rows"] = [*loop["rows"], row]
        if log is not None:
            log.add(row)
            tqdm.write(_format_row(row), file=None)
        last_ckpt = save(f"e{loop['epoch']:04d}-s{loop['step']:09d}")
    if log is not None:
        log.close()
    return {
        "rank": d.rank,
        "out": str(out),
        "best": loop["best"],
        "primary_metric": task.primary_metric,
        "last": loop["rows"][-1] if loop["rows"] else {},
        "checkpoint": last_ckpt,
    }


def _loss(task: Task, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    try:
        return task.loss(net, batch)
    except ValueError as e:  # BatchNorm on 1×1 maps (a detector's or segmenter's last layers) needs 2 images
        if "Expected more than 1 value per channel" not in str(e):
            raise
        skipped = int(batch.get("skipped", 0)) if isinstance(batch, dict) else 0
        why = f" ({skipped} unreadable image(s) of the batch were skipped)" if skipped else ""
        raise ConfigError(
            f"a training batch of one image{why} cannot be batch-normalised on the model's 1×1 feature maps; "
            "use --batch-size 2 or more (3 or more when images may be skipped)"
        ) from None


def _format_row(row: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def evaluate(
    task: Task,
    model: nn.Module,
    dataset: Any,
    batch_size: int,
    workers: int,
    d: Dist,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Run ``task.evaluate`` over this rank's shard of ``dataset``; the task reduces across ranks."""
    sampler = EvalBatchSampler(len(dataset), batch_size, d.world, d.rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=task.collate, num_workers=workers)
    was_training = model.training
    model.eval()
    device_loader = (to_device(b, d.device, channels_last) for b in loader)
    with torch.no_grad(), torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16):
        metrics = task.evaluate(model, _Reiterable(device_loader, len(sampler)), d.enabled)
    model.train(was_training)
    return metrics


class _Reiterable:
    """A one-shot generator of device batches that still reports ``len`` (tasks may size progress bars)."""

    def __init__(self, gen: Any, n: int) -> None:
        self.gen, self.n = gen, n

    def __iter__(self) -> Any:
        return iter(self.gen)

    def __len__(self) -> int:
        return self.n

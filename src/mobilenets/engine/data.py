"""Samplers and dataset wrappers that make a run's data order a pure function of (seed, epoch, step).

That is what lets ``--resume`` continue exactly, and lets W processes × A accumulation steps see exactly the
batches one process sees with batch W·A times larger: global batch ``k`` is ``perm[k·G : (k+1)·G]`` of the
epoch's permutation, cut into W·A contiguous micro-batches; rank ``r`` takes micro-batches ``r·A … r·A+A-1``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mobilenets.errors import ConfigError


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across processes and Python versions."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SeededDataset(Dataset):
    """Run each ``__getitem__`` with torch, numpy and random seeded from (seed, epoch, index), restoring the
    caller's generators afterwards, so augmentation does not depend on workers, ranks or interruptions."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = mix_seed(self.seed, self.epoch, index)
        # The CPU generator only: torch.manual_seed also reseeds every accelerator's generators (~0.1 ms, more
        # than decoding a small image); workers draw augmentation from the CPU generator alone.
        gen = torch.default_generator
        torch_state, np_state, py_state = gen.get_state(), np.random.get_state(), random.getstate()
        gen.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)
        try:
            return self.dataset[index]
        finally:
            gen.set_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)


class ShardedBatchSampler(Sampler[list[int]]):
    """Training batches for one rank: ``steps_per_epoch`` global batches, each ``accum`` micro-batches here.

    Incomplete global batches are dropped so every optimiser step sees the same number of images.
    """

    def __init__(
        self, n: int, micro_batch: int, world: int, rank: int, accum: int, seed: int, shuffle: bool = True
    ) -> None:
        self.n, self.micro, self.world, self.rank, self.accum = n, micro_batch, world, rank, accum
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_step = 0, 0
        self.global_batch = micro_batch * world * accum
        if self.global_batch > n:
            raise ConfigError(
                f"global batch {self.global_batch} (batch {micro_batch} × {world} processes × {accum} accumulation"
                f" steps) is larger than the training set ({n} items); pass a smaller --batch-size (the default"
                " learning rate scales with it)"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch
            for j in range(self.accum):
                start = base + (self.rank * self.accum + j) * self.micro
                yield order[start : start + self.micro]


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches for one rank: items ``rank, rank+world, …`` — every item exactly once overall."""

    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i : i + self.batch_size]


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a nested batch to ``device``; 4-D float tensors become channels_last on request."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, channels_last) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch

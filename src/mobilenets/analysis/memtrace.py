"""Measured memory of one forward pass: peak live activation bytes, and whole-process peak RSS.

``peak_activation_bytes`` runs the forward under a ``TorchDispatchMode`` that sees every ATen op. Each tensor an
op returns is traced to its storage; a storage is counted once (views and in-place ops share it) from the op that
creates it until Python frees it (a weak reference's callback). Storages that existed before the forward
(weights, buffers) are not activations and are ignored; the input batch is counted. The result is the high-water
mark of the sum — what an allocator with no fragmentation would need for activations, independent of malloc.

``peak_rss_bytes`` runs a fresh Python process that builds the model, records its peak RSS, runs one forward and
records it again: the difference is the forward's whole-process cost (allocator overheads included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveBytes(TorchDispatchMode):
    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = ignore
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.ignore or key in self.live or storage.nbytes() == 0:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        self.refs[key] = weakref.ref(storage, lambda _, key=key: self.release(key))

    def release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def peak_activation_bytes(model: nn.Module, x: torch.Tensor, forward: Callable[..., object] | None = None) -> int:
    """High-water mark of live activation bytes (input included) during ``forward(x)`` (default ``model(x)``)."""
    ignore = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    forward = forward or model
    with torch.no_grad():
        mode = _LiveBytes(ignore)
        mode.track(x)
        with mode:
            out = forward(x)
        peak = mode.peak
        del out
    return peak


@dataclass(frozen=True)
class RssPeak:
    before_forward: int  # peak RSS (VmHWM) after importing torch, building the model and the input (bytes)
    after_forward: int  # peak RSS after one forward

    @property
    def forward_bytes(self) -> int:
        return self.after_forward - self.before_forward


_RSS_SCRIPT = """
import json, sys, torch
from mobilenets import create_model
from mobilenets.deploy.split import split_model
name, groups, batch, res = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
model = create_model(name).eval()
if groups > 1:
    model = split_model(model, groups, inplace=True)
x = torch.randn(batch, 3, res, res)
def hwm():
    # VmHWM: this address space's peak RSS. (ru_maxrss would be wrong: Linux carries it over fork + exec.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
with torch.no_grad():
    model(x)
print(json.dumps([before, hwm()]))
"""


def peak_rss_bytes(name: str, groups: int, batch: int, resolution: int) -> RssPeak:
    """Peak RSS of a fresh process around one forward of registered model ``name`` (``groups`` = t; 1 = standard)."""
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, name, str(groups), str(batch), str(resolution)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    return RssPeak(before, after)

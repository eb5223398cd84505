"""What a benchmark ran on: the CPU's model and instruction-set flags, library versions, threads and load.

A latency only means something beside the host's ISA: OpenVINO, for one, runs bf16 by default where the CPU has
AVX512-BF16 or AMX, and the fused engine picks its kernels by the same flags.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# The flags that decide which kernels a runtime can use (Linux /proc/cpuinfo spelling).
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
PEER_PACKAGES = ("onnxruntime", "openvino", "ai-edge-litert", "litert-torch", "timm", "onnx")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first processor's ``model name`` and which of :data:`ISA_FLAGS` its ``flags`` line lists."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": {name: name in flags for name in ISA_FLAGS}}


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """:func:`parse_cpuinfo` of this machine; where there is no /proc/cpuinfo, the flags are unknown (None)."""
    try:
        info = parse_cpuinfo(Path(path).read_text())
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": dict.fromkeys(ISA_FLAGS)}
    info["model"] = info["model"] or platform.processor() or platform.machine()
    return info


def source_revision(root: Path | None = None) -> str | None:
    """The git commit this mobilenets runs from, ``+dirty`` when tracked files differ from it, so that a figure can
    be traced to its code; None outside a git checkout (an installed wheel) or without git."""
    root = root or Path(__file__).resolve().parents[3]  # src/mobilenets/bench/host.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True)
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=30,
            check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def versions() -> dict[str, str]:
    # Read from the installed distributions: importing litert-torch alone takes seconds (it loads TensorFlow).
    found = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        found["mobilenets"] = metadata.version("mobilenets")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
        found["mobilenets"] = "not installed"
    revision = source_revision()
    if revision:
        found["mobilenets_source"] = revision
    for package in PEER_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def host_record() -> dict[str, Any]:
    """The machine section of a benchmark report."""
    cpu = cpu_info()
    return {
        "cpu_model": cpu["model"],
        "isa": cpu["flags"],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # PASSIVE (good for training on a shared machine) made batch-1 PyTorch paths 2-3x slower here
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }

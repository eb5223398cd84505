"""A/B latency of the fused engine between two commits: each commit's ``src/`` in a temporary folder, and child
processes that alternate A, B, A, B …, each timing ``FusedEngine`` alone (batch 1, BatchNorm re-estimated on the
benchmark's photos, ``--calls`` calls after 20 warm-up calls; median and p10 in ms).

Separate processes, so each build has the machine and its caches to itself in turn; alternated, so that a change
of the host's load falls on both. Run it from a git checkout; a commit is anything ``git archive`` takes (a hash,
a branch, ``HEAD~1``); ``--b`` may also be ``worktree`` (this checkout's ``src/`` as it is, uncommitted changes
included).

    python experiments/engine/ab.py --a 65179f5 --b HEAD --model mobilenet_v3_large --precision int8 --pairs 3
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import os, sys, time, statistics, torch
from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.deploy import fused
name, res, precision, threads, calls = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
model = recalibrate_batchnorm(create_model(name).eval(), real_images(res, 16))
images = real_images(res, 24, seed=3)
kw = {"calibration": list(images[8:].split(8))} if precision == "int8" else {"precision": precision}
engine = fused.FusedEngine(model, threads=threads, **kw)
x = images[:1].contiguous()
for _ in range(20):
    engine(x)
times = []
for _ in range(calls):
    t = time.perf_counter()
    engine(x)
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(statistics.median(times), times[len(times) // 10])
"""


def source_tree(commit: str, root: Path) -> Path:
    """``src/`` of commit (or of this checkout for "worktree") under root; returns the folder for PYTHONPATH."""
    if commit == "worktree":
        return REPO / "src"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=False)
    if archive.returncode:
        sys.exit(f"git archive {commit!r} failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="the commit before")
    parser.add_argument("--b", default="worktree", help="the commit after, or 'worktree'")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    medians: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"A": source_tree(args.a, Path(tmp) / "a"), "B": source_tree(args.b, Path(tmp) / "b")}
        cache = Path(tmp) / "cache"  # each build compiled once, apart from the user's cache
        for _ in range(args.pairs):
            for side in ("A", "B"):
                env = dict(os.environ, PYTHONPATH=str(trees[side]), MOBILENETS_CACHE=str(cache))
                run = subprocess.run(
                    [sys.executable, "-c", CHILD, args.model, str(args.resolution), args.precision,
                     str(args.threads), str(args.calls)],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                if run.returncode:
                    sys.exit(f"{side} ({getattr(args, side.lower())}) failed:\n{run.stderr[-2000:]}")
                median, p10 = map(float, run.stdout.split()[-2:])
                medians[side].append(median)
                print(f"{side} {getattr(args, side.lower()):>10}  median {median:.3f} ms  p10 {p10:.3f}", flush=True)
    a, b = statistics.median(medians["A"]), statistics.median(medians["B"])
    setting = f"{args.model} @{args.resolution} {args.precision}, {args.threads} threads"
    print(f"{setting}: A {a:.3f} ms, B {b:.3f} ms, B/A {b / a:.3f} (medians of the processes' medians)")


if __name__ == "__main__":
    main()

"""In-process A/B of the engine's C++ sources: one Python process builds the same model's engine from this
checkout's ``csrc/`` (A) and from each other source tree given (B0, B1 …: a folder of sources, or a commit's
``src/mobilenets/deploy/csrc`` by ``git archive``), every library loaded side by side, and times them in interleaved
rounds (``bench.timing.interleaved_times``: a 50 ms pause before each block, so the idle library's workers, which
spin 20 ms after a job, are asleep; every other round reversed). Prints each engine's ``describe()`` and largest
output difference to A, the pooled median and p10, and the median of the per-round ratios to A with its p25–p75.

Only the sources differ: the builder (``fused.py``) is this checkout's, so a tree of another ABI is refused by the
library's ABI check. On a noisy shared host this resolves effects of a few per cent that ``ab.py``'s alternated
processes do not (session 31, V2 int8: an unchanged copy measured 1.009, p25–p75 0.959–1.028). Copy ``csrc/``,
change it, and compare:

    cp -r src/mobilenets/deploy/csrc /tmp/csrc_b && $EDITOR /tmp/csrc_b/threads.h
    python experiments/engine/sources_ab.py --b /tmp/csrc_b --model mobilenet_v2 --precision int8
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import interleaved_times
from mobilenets.deploy import fused

REPO = Path(__file__).resolve().parents[2]
CSRC = "src/mobilenets/deploy/csrc"


def sources(spec: str, root: Path) -> Path:
    """The folder of sources ``spec`` names: a folder as it is, or a commit's csrc extracted under root."""
    if Path(spec).is_dir():
        return Path(spec)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", spec, CSRC], capture_output=True, check=False)
    if archive.returncode:
        sys.exit(f"{spec!r} is neither a folder nor a commit: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root / spec, filter="data")
    return root / spec / CSRC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", nargs="+", required=True, help="source folders or commits to hold against this checkout")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1200, help="timed calls per engine, over 24 rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = real_images(args.resolution, 33)
    model = recalibrate_batchnorm(create_model(args.model).eval(), images[:32])
    kw = {"calibration": [images[:32]]} if args.precision == "int8" else {"precision": args.precision}
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"A": fused.SOURCE_DIR} | {f"B{i} {b}": sources(b, Path(tmp)) for i, b in enumerate(args.b)}
        for name, tree in trees.items():
            fused.SOURCE_DIR = Path(tree)
            fused.load_library.cache_clear()  # one library per source tree, each loaded once
            engines[name] = fused.FusedEngine(model, threads=args.threads, **kw)
    x = images[32:]
    with torch.no_grad():
        want = engines["A"](x)
        for name, engine in engines.items():
            print(f"{name}: {engine.describe()}; largest difference to A {float((engine(x) - want).abs().max()):.2e}")
    times = interleaved_times({n: (lambda e=e: e(x)) for n, e in engines.items()}, args.runs, 24, pause_s=0.05)
    print(f"{args.model} @{args.resolution} {args.precision}, {args.threads} threads, ms per call:")
    for name, rounds in times.items():
        pooled = sorted(t for r in rounds for t in r)
        ratios = sorted(statistics.median(b) / statistics.median(a) for a, b in zip(times["A"], rounds, strict=True))
        q = len(ratios) // 4
        print(
            f"  {name:28s} median {statistics.median(pooled):.3f}  p10 {pooled[len(pooled) // 10]:.3f}  per-round "
            f"ratio to A {statistics.median(ratios):.3f} ({ratios[q]:.3f}-{ratios[-1 - q]:.3f})"
        )


if __name__ == "__main__":
    main()

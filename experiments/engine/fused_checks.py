"""The fused engine's equality and back-to-back latency figures (docs/deployment.md).

1. fp32 equality: max abs difference of the engine's logits from eager PyTorch, for V1, V2 at several widths and
   the minimalistic V3 models (BatchNorm randomised so that folding matters; 2 images of 96 × 128).
2. int8 against its fake-quantised PyTorch twin (``fused.fake_quantized``): ‖engine − twin‖ / ‖twin − fp32‖ over
   V2 α 0.5 and 1.0 × 8 seeds (5 images of 96 × 64, calibrated on 16 random images), as ``tests/test_fused.py``,
   and how many images are within 1e-6 of the twin.
3. Back-to-back batch-1 latency of MobileNetV2 1.0 @ 224, fp32 and int8, one and two threads, interleaved in
   ``--rounds`` blocks of 20 calls (BatchNorm re-estimated on photos, int8 calibrated on 32 other photos), medians.

    python experiments/engine/fused_checks.py            # all three, about a minute
    python experiments/engine/fused_checks.py --only latency
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import time_calls
from mobilenets.deploy import fused

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from model_util import trained_like  # the tests' models with randomised BatchNorm, as they are tested


@torch.no_grad()
def equality() -> None:
    cases = [("mobilenet_v1", 1.0), ("mobilenet_v2", 0.35), ("mobilenet_v2", 1.0), ("mobilenet_v2", 1.4),
             ("mobilenet_v3_large_minimal", 1.0), ("mobilenet_v3_small_minimal", 1.0)]  # fmt: skip
    worst = 0.0
    for name, width in cases:
        model = trained_like(name, width=width, num_classes=10)
        x = torch.randn(2, 3, 96, 128)
        diff = float((fused.FusedEngine(model, threads=2)(x) - model(x)).abs().max())
        worst = max(worst, diff)
        print(f"fp32  {name:28s} α {width:<4}  max abs diff {diff:.1e}")
    print(f"fp32  worst {worst:.1e}")


@torch.no_grad()
def int8_twin() -> None:
    worst = 0.0
    for width in (0.5, 1.0):
        torch.manual_seed(0)
        model = trained_like("mobilenet_v2", width=width, num_classes=10)
        calibration = list(torch.randn(16, 3, 64, 64).split(8))
        engine = fused.FusedEngine(model, threads=2, calibration=calibration)
        twin = fused.fake_quantized(model, calibration, fused.int8_grid(engine.isa))
        exact, largest = 0, 0.0
        for seed in range(8):
            torch.manual_seed(seed)
            x = torch.randn(5, 3, 96, 64)
            want, fp32, got = twin(x), model(x), engine(x)
            ratio = float((got - want).norm() / (want - fp32).norm())
            worst = max(worst, ratio)
            per_image = (got - want).abs().amax(1)
            exact += int((per_image < 1e-6).sum())
            largest = max(largest, float(per_image.max()))
        print(
            f"int8  mobilenet_v2 α {width}: worst so far of ‖engine − twin‖ / ‖twin − fp32‖, 8 seeds: {worst:.3f}; "
            f"{exact} of 40 images within 1e-6 of the twin, largest difference {largest:.1e}"
        )


def latency(rounds: int) -> None:
    torch.set_flush_denormal(True)
    images = real_images(224, 64)
    torch.manual_seed(0)
    model = recalibrate_batchnorm(create_model("mobilenet_v2"), images[:32])
    x = images[:1].clone()
    calibration = list(images[32:].split(8))
    paths = {
        f"{precision} {threads} thread{'s' if threads > 1 else ''}": fused.FusedEngine(
            model, threads, calibration=calibration if precision == "int8" else None
        )
        for precision in ("fp32", "int8")
        for threads in (1, 2)
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, engine in paths.items():
            times[name] += time_calls(lambda e=engine: e(x), 20, warmup=2)
    for name, t in times.items():
        print(f"latency  V2 1.0 @ 224  {name:16s} median {statistics.median(t):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("equality", "int8", "latency"))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.only in (None, "equality"):
        equality()
    if args.only in (None, "int8"):
        int8_twin()
    if args.only in (None, "latency"):
        latency(args.rounds)


if __name__ == "__main__":
    main()

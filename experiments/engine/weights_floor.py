"""What the fused engine's int8 calls cost when there is little to compute: MobileNetV2 (1.0, 3.5 M weights;
with a 10-class head, 2.2 M; 0.5 wide with 10 classes, 0.7 M) at 32 px and at 224 px, one and two threads, medians
of back-to-back calls. At 32 px the multiply-adds are 2 % of 224 px's, so what remains is mostly the weights
every call streams from memory (and, at two threads, the barriers).

    python experiments/engine/weights_floor.py
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import time_calls
from mobilenets.deploy import fused


def median_us(engine: fused.FusedEngine, x: torch.Tensor, calls: int) -> float:
    return 1e3 * statistics.median(time_calls(lambda: engine(x), calls, warmup=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    images = real_images(224, 24, seed=3)
    for overrides in [{}, {"num_classes": 10}, {"width": 0.5, "num_classes": 10}]:
        torch.manual_seed(0)
        model = recalibrate_batchnorm(create_model("mobilenet_v2", **overrides).eval(), real_images(224, 16))
        weights = sum(p.numel() for p in model.parameters()) / 1e6
        for threads in (1, 2):
            engine = fused.FusedEngine(model, threads=threads, calibration=list(images[8:].split(8)))
            cells = []
            for size in (32, 224):
                x = torch.nn.functional.interpolate(images[:1], size=(size, size)).contiguous()
                cells.append(f"{size} px {median_us(engine, x, args.calls):7.1f} µs")
            print(f"{overrides!s:36} {weights:.2f} M weights, {threads} thread(s): " + ", ".join(cells))


if __name__ == "__main__":
    main()

"""In-process timing of the int8 engine's thin-expansion variants (one library, builder switches only; commit
with the bf16x3 thin expansion, reverted after): the thin expansion on the fp32 GEMM, on AMX bf16 x3, and all
int8 (thin_fp32=0), V2 1.0 @ 224, batch 1, 2 threads, interleaved rounds; per-round ratios against the first.

    python experiments/engine/thin_variants.py mobilenet_v2 1000
"""

import statistics
import sys

import torch

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import interleaved_times
from mobilenets.deploy import fused

torch.manual_seed(0)
name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
m = create_model(name).eval()
x = real_images(224, 33)
recalibrate_batchnorm(m, x[:32])
orig = fused._Builder.conv
variants = {}


def fp32_thin(self, module, w, b, bf16=False):
    if self.ranges is not None and module not in self.ranges:
        saved, self.tiles = self.tiles, False
        try:
            return orig(self, module, w, b, bf16)
        finally:
            self.tiles = saved
    return orig(self, module, w, b, bf16)


fused._Builder.conv = fp32_thin
variants["fp32 thin"] = fused.FusedEngine(m, threads=2, calibration=[x[:32]])
fused._Builder.conv = orig
variants["bf16x3 thin"] = fused.FusedEngine(m, threads=2, calibration=[x[:32]])
variants["all int8"] = fused.FusedEngine(m, threads=2, calibration=[x[:32]], thin_fp32=0)
for k, e in variants.items():
    print(k, e.describe())
one = x[32:33]
times = interleaved_times(
    {k: (lambda e=e: e(one)) for k, e in variants.items()},
    runs=int(sys.argv[2]) if len(sys.argv) > 2 else 600,
    rounds=20,
    pause_s=0.05,
)
base = None
for k, rounds in times.items():
    meds = [statistics.median(r) for r in rounds]
    allt = sorted(t for r in rounds for t in r)
    print(f"{k:14s} median {statistics.median(allt):.3f} ms  p10 {allt[len(allt) // 10]:.3f}")
names = list(times)
for k in names[1:]:
    ratios = sorted(statistics.median(b) / statistics.median(a) for a, b in zip(times[names[0]], times[k]))
    print(
        f"{k} / {names[0]}: per-round median ratio {statistics.median(ratios):.3f} (p25 {ratios[len(ratios) // 4]:.3f}, p75 {ratios[3 * len(ratios) // 4]:.3f})"
    )

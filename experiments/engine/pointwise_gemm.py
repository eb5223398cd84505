"""Eager inference with the 1×1 convolutions as matrix products (``PointwiseConv2d``) against PyTorch's convolution.

Three models with the same architecture, timed in interleaved rounds by the benchmark's ``interleaved_times``
(each block: a 0.1 s pause, 2 untimed calls, ``--calls`` timed ones; every other round in reverse order): ours as
it runs (1×1 layers as GEMMs), the same weights with ``gemm = False`` on every ``PointwiseConv2d`` (PyTorch's
convolution, as before), and timm's model (own random weights). BatchNorm statistics re-estimated on the
benchmark's photos (as ``mobilenets bench`` does), denormals flushed. Prints each median, the ratios of medians and
the geometric mean of per-round ratios, and the largest difference between our two variants' logits.

    python experiments/engine/pointwise_gemm.py --model mobilenet_v2 --threads 2 --rounds 40
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics

import torch

from mobilenets import create_model
from mobilenets.bench.peers import TIMM_NAMES, _import_timm
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.bench.timing import interleaved_times, pooled
from mobilenets.models.layers import PointwiseConv2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    images = real_images(args.resolution, 32)
    ours = recalibrate_batchnorm(create_model(args.model), images).eval()
    conv = copy.deepcopy(ours)
    for m in conv.modules():
        if isinstance(m, PointwiseConv2d):
            m.gemm = False
    torch.manual_seed(0)
    peer = recalibrate_batchnorm(_import_timm().create_model(TIMM_NAMES[args.model]), images).eval()
    paths = {"ours, 1x1 as GEMM": ours, "ours, 1x1 as conv2d": conv, f"timm {TIMM_NAMES[args.model]}": peer}
    x = images[:1].clone()
    calls = {name: (lambda model=model: model(x)) for name, model in paths.items()}
    with torch.inference_mode():
        diff = float((ours(x) - conv(x)).abs().max())
        rounds = interleaved_times(calls, args.rounds * args.calls, args.rounds, pause_s=0.1)
    peer_name = list(paths)[-1]
    peer_rounds = [statistics.median(block) for block in rounds[peer_name]]
    print(
        f"{args.model} @ {args.resolution}, batch 1, {args.threads} threads, {args.rounds} rounds x {args.calls} calls"
    )
    for name in paths:
        median = statistics.median(pooled(rounds[name]))
        ratio = median / statistics.median(pooled(rounds[peer_name]))
        per_round = [statistics.median(block) / p for block, p in zip(rounds[name], peer_rounds, strict=True)]
        paired = math.exp(statistics.mean(math.log(r) for r in per_round))
        print(f"  {name:28s} median {median:7.2f} ms   / {peer_name}: {ratio:.3f} (per round: {paired:.3f})")
    print(f"  max |GEMM - conv2d| over the logits: {diff:.1e}")


if __name__ == "__main__":
    main()

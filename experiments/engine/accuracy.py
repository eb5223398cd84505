"""The engine's reduced precisions against fp32 on real data (docs/engine.md).

1. Fashion-MNIST (the embedded subset): a MobileNetV2 α 0.5 trained here for ``--steps`` SGD steps at 32 × 32
   (28 × 28 padded, one channel), then its test accuracy (2,000 images) in eager PyTorch, through the engine in
   fp32 at every ISA level this CPU has, int8 at every level (calibrated on 256 training images) and bf16 (AMX).
2. Photo crops: MobileNetV2 1.0 @ 224 with BatchNorm statistics re-estimated on photos (``bench.photos``; no
   trained ImageNet weights are available offline), 256 other crops: top-1 agreement of int8 / bf16 with the
   engine's fp32, over all crops and over the confident ones (fp32 probability > 0.5), and the largest logit error.

    python experiments/engine/accuracy.py            # about fifteen minutes on 2 busy cores
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.data import embedded
from mobilenets.deploy import fused


def fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = embedded.load(split)
    images = torch.from_numpy(x).float().div(255).sub(0.2860).div(0.3530)[:, None]
    return nn.functional.pad(images, (2, 2, 2, 2)), torch.from_numpy(y)


def train(steps: int, batch: int = 64) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width=0.5, num_classes=10, in_chans=1)
    x, y = fashion("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def paths(model: nn.Module, calibration: list[torch.Tensor]) -> dict[str, fused.FusedEngine]:
    out = {}
    for isa in fused.supported_isas():
        out[f"fp32 [{isa}]"] = fused.FusedEngine(model, threads=2, isa=isa)
    for isa in fused.supported_isas():
        out[f"int8 [{isa}]"] = fused.FusedEngine(model, threads=2, calibration=calibration, isa=isa)
    if "amx" in fused.supported_isas():
        out["bf16 [amx]"] = fused.FusedEngine(model, threads=2, precision="bf16", isa="amx")
    return out


def fashion_mnist(steps: int) -> None:
    model = train(steps)
    with torch.no_grad():
        evaluate(model, steps)


def evaluate(model: nn.Module, steps: int) -> None:
    x, y = fashion("test")
    train_x, _ = fashion("train")
    calibration = list(train_x[np.random.default_rng(1).choice(len(train_x), 256, replace=False)].split(32))
    eager = float((model(x).argmax(1) == y).float().mean())
    print(f"Fashion-MNIST test ({len(x)} images), MobileNetV2 α 0.5 trained {steps} steps of 64 at 32 × 32")
    print(f"  eager fp32          {eager:7.2%}")
    for name, engine in paths(model, calibration).items():
        accuracy = float((torch.cat([engine(b) for b in x.split(100)]).argmax(1) == y).float().mean())
        print(f"  engine {name:12s} {accuracy:7.2%}   {100 * (accuracy - eager):+.2f} points")


@torch.no_grad()
def photos(count: int) -> None:
    torch.manual_seed(0)
    model = recalibrate_batchnorm(create_model("mobilenet_v2"), real_images(224, 64, seed=0)).eval()
    calibration = list(real_images(224, 32, seed=1).split(8))
    crops = real_images(224, count, seed=3)
    engines = paths(model, calibration)
    reference = torch.cat([engines[f"fp32 [{fused.supported_isas()[-1]}]"](b) for b in crops.split(16)])
    eager = model(crops)
    confident = reference.softmax(1).amax(1) > 0.5
    print(f"photo crops ({count}), MobileNetV2 1.0 @ 224, BatchNorm re-estimated on photos; "
          f"{int(confident.sum())} confident (fp32 p > 0.5)")  # fmt: skip
    for name, engine in engines.items():
        got = torch.cat([engine(b) for b in crops.split(16)])
        same = got.argmax(1) == reference.argmax(1)
        conf = f"{float(same[confident].float().mean()):6.1%}" if confident.any() else "   n/a"
        print(f"  {name:12s} top-1 = fp32 engine: all {float(same.float().mean()):6.1%}, confident {conf}; "
              f"max |Δlogit| vs eager {float((got - eager).abs().max()):.2e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150, help="SGD steps of 64 images (a few seconds each)")
    parser.add_argument("--crops", type=int, default=256, help="photo crops; 0 skips that part")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.crops:
        photos(args.crops)
    fashion_mnist(args.steps)


if __name__ == "__main__":
    main()

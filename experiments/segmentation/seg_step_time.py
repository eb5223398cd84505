"""What a segmentation training step costs on this machine, for choices the 30-minute budget has to weigh.

For each ``--configs`` entry ``OS:CROP`` (output stride, square crop side) one model is built and timed on random
data: forward, cross-entropy at the input size, backward and an AdamW step, in channels_last with the engine's
allocator setting (``keep_freed_memory``), as ``mobilenets train --channels-last`` runs it on a CPU. The median of
``--steps`` steps after two untimed ones is printed per configuration, with images per second.

    python experiments/segmentation/seg_step_time.py --model lraspp_mobilenet_v2 --width 0.5 \
        --configs 16:128 8:128 16:192
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mobilenets import create_model
from mobilenets.bench.train import step_time
from mobilenets.engine.allocator import keep_freed_memory


def step_ms(model_name: str, width: float, classes: int, stride: int, crop: int, batch: int, steps: int) -> float:
    model = create_model(model_name, width=width, num_classes=classes, output_stride=stride)
    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch, crop, crop))
    step_time(model, opt, x, y, 2)  # untimed
    return statistics.median(step_time(model, opt, x, y, 1) for _ in range(steps)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lraspp_mobilenet_v2")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--configs", nargs="+", default=["16:128", "8:128", "16:192"], help="OS:CROP pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    for entry in args.configs:
        stride, crop = (int(v) for v in entry.split(":"))
        ms = step_ms(args.model, args.width, args.num_classes, stride, crop, args.batch_size, args.steps)
        print(f"OS {stride:2d}  crop {crop:4d}  {ms:7.0f} ms/step  {args.batch_size / ms * 1e3:6.1f} images/s")


if __name__ == "__main__":
    main()

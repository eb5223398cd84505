"""How well the naming branch names scene pixels before any segmentation training (docs/segmentation.md).

Builds ``lraspp_mobilenet_v2`` with ``naming_pool=K``, starts its backbone and naming branch from a classification
checkpoint (``--init``), and reads the branch alone on the first ``--scenes`` validation scenes: the share of the
garment pixels (labelled 1..10, ignore excluded) whose argmax over the object classes is their class.

    python experiments/segmentation/naming_init.py --classifier runs/clutter/best.safetensors \
        --pool 3 5 --output-stride 16 32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mobilenets import create_model
from mobilenets.engine.checkpoints import init_from
from mobilenets.segmentation.data import SceneDataset


def named_right(classifier: str, pool: int, stride: int, scenes: int, width: float) -> float:
    model = create_model("lraspp_mobilenet_v2", width=width, num_classes=11, naming_pool=pool, output_stride=stride)
    init_from(model, classifier)
    model.eval()
    data = SceneDataset("val", scenes, 256)
    right = total = 0
    with torch.no_grad():
        for i in range(scenes):
            item = data[i]
            mask = item["mask"]
            high = model.backbone.forward_taps(item["image"][None], [model.high_tap.name], input_multiple=1)
            logits = model.naming(high[model.high_tap.name])
            names = F.interpolate(logits, size=mask.shape, mode="bilinear").argmax(1)[0] + 1
            garment = (mask > 0) & (mask < 255)
            right += int((names[garment] == mask[garment]).sum())
            total += int(garment.sum())
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True, help="classification checkpoint of the 10 garment classes")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--pool", type=int, nargs="+", default=[3])
    parser.add_argument("--output-stride", type=int, nargs="+", default=[16])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for stride in args.output_stride:
        for pool in args.pool:
            share = named_right(args.classifier, pool, stride, args.scenes, args.width)
            print(f"OS {stride:2d}  window {pool}×{pool}  garment pixels named right {share:.3f}")


if __name__ == "__main__":
    main()

"""What naming accuracy an mIoU needs on the embedded scenes: perfect outlines, each object named by a draw.

Every object of the validation scenes keeps its exact mask (background and outlines are never wrong) and gets one
class for all its pixels: the right one with its class's probability, otherwise a wrong one in the proportions a
real classifier confuses them (the off-diagonal of ``--confusion``, an ``mobilenets eval --json`` output). The
per-class accuracies are those of the confusion, scaled so that their mean is each ``--accuracy`` (shirt stays the
hardest). The mIoU over background + the ten garments is what a segmenter naming objects that well would score
if it drew every outline perfectly: an upper bound for that naming accuracy.

    mobilenets eval --checkpoint runs/main --json > main_eval.json
    python experiments/segmentation/naming_ceiling.py --confusion main_eval.json --accuracy 0.65 0.7 0.75 0.8 0.85 0.9
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mobilenets.data import scenes
from mobilenets.segmentation.metrics import IGNORE_INDEX, mean_iou


def naming_matrix(confusion: np.ndarray, accuracy: float) -> np.ndarray:
    """Row-stochastic naming probabilities: per-class accuracies of ``confusion`` scaled to mean ``accuracy``."""
    rows = confusion / confusion.sum(1, keepdims=True)
    errors = 1 - np.diag(rows)
    scale = (1 - accuracy) / errors.mean()
    right = np.clip(1 - errors * scale, 0, 1)
    off = rows - np.diag(np.diag(rows))
    off = off / np.maximum(off.sum(1, keepdims=True), 1e-12)
    return np.diag(right) + off * (1 - right)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confusion", required=True, help="an `mobilenets eval --json` output of a classifier")
    parser.add_argument("--accuracy", type=float, nargs="+", default=[0.65, 0.7, 0.75, 0.8, 0.85, 0.9])
    parser.add_argument("--val", type=int, default=200, help="validation scenes (the segmentation figures use 200)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--draws", type=int, default=20, help="naming draws averaged per accuracy")
    args = parser.parse_args()
    confusion = np.asarray(json.loads(Path(args.confusion).read_text())["confusion"], np.float64)
    objects = scenes.load_objects("val")
    config = scenes.SceneConfig(size=args.size)
    # Per object: its class (0..9) and its labelled pixel count; background pixels counted once.
    classes, areas, background = [], [], 0
    for i in range(args.val):
        scene = scenes.generate_scene(i, "val", objects, config)
        background += int((scene.semantic == 0).sum())
        for k, label in enumerate(scene.labels, start=1):
            classes.append(int(label) - 1)
            areas.append(int(((scene.instances == k) & (scene.semantic != IGNORE_INDEX)).sum()))
    cls, area = np.asarray(classes), np.asarray(areas, np.float64)
    rng = np.random.default_rng(0)
    rows = []
    for accuracy in args.accuracy:
        m = naming_matrix(confusion, accuracy)
        mious = []
        for _ in range(args.draws):
            named = np.array([rng.choice(10, p=m[c]) for c in cls])
            conf = np.zeros((11, 11))
            conf[0, 0] = background
            np.add.at(conf, (cls + 1, named + 1), area)
            mious.append(mean_iou(torch.from_numpy(conf)))
        pixels_right = float((area * (np.diag(m)[cls])).sum() / area.sum())
        rows.append({"objects_named_right": accuracy, "garment_pixels_right": round(pixels_right, 4),
                     "miou_mean": round(float(np.mean(mious)), 4), "miou_min": round(float(np.min(mious)), 4),
                     "miou_max": round(float(np.max(mious)), 4)})  # fmt: skip
    print(json.dumps({"scenes": args.val, "objects": len(cls), "draws": args.draws, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

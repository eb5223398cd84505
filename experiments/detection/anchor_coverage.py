"""How well SSDLite's anchors cover a COCO-format set's boxes at a given input size.

    python experiments/detection/anchor_coverage.py [ANNOTATIONS.json] [--resolution 160 192 ...]

Without a file: the embedded scenes' validation split (generated on first use). For every input size, with TF's
three anchors per location on the stride-16 map and with the full six (``--full-lowest-layer``): the median best
IoU of a box with any anchor, the fraction of boxes whose best anchor is under the 0.5 matching threshold (they
get only the forced match), and the mean number of anchors with IoU >= 0.5 per box (the positives it trains).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mobilenets.detection.boxes import box_iou
from mobilenets.detection.data import CocoDetection
from mobilenets.detection.loss import MATCH_THRESHOLD
from mobilenets.registry import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("annotations", nargs="?", help="COCO JSON (default: the embedded scenes' val split)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[160, 192, 224, 320])
    args = parser.parse_args()
    if args.annotations is None:
        from mobilenets.detection.task import EMBEDDED, resolve_data

        _, val = resolve_data(EMBEDDED, None)  # (train, val) annotation files and their image folders
        path, images = val.annotations, val.images
    else:
        path, images = Path(args.annotations), None
    data = CocoDetection(path, images)
    boxes = []
    for r in data.records:
        b = torch.as_tensor(r.boxes, dtype=torch.float32).clone()
        b[:, [0, 2]] /= r.width
        b[:, [1, 3]] /= r.height
        boxes.append(b)
    gt = torch.cat(boxes)
    print(f"{path}: {len(gt)} boxes")
    print(f"{'input':>6} {'lowest layer':>13} {'anchors':>8} {'median best':>12} {'best < 0.5':>11} {'IoU>=0.5':>9}")
    for res in args.resolution:
        for reduced in (True, False):
            model = create_model("ssdlite_mobilenet_v2", width=0.35, num_classes=1, reduce_lowest_layer=reduced)
            with torch.no_grad():  # the model's own anchors for this input: its grids, its anchor spec
                anchors = model.eval().forward_raw(torch.zeros(1, 3, res, res))["anchors"]
            iou = box_iou(gt, anchors)
            best = iou.max(1).values
            print(
                f"{res:>6} {'3 (TF)' if reduced else '6 (full)':>13} {len(anchors):>8} {float(best.median()):>12.2f} "
                f"{float((best < MATCH_THRESHOLD).float().mean()):>11.2f} "
                f"{float((iou >= MATCH_THRESHOLD).sum(1).float().mean()):>9.2f}"
            )


if __name__ == "__main__":
    main()

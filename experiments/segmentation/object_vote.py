"""How much a segmenter on the embedded scenes would gain by naming whole objects instead of single pixels.

    python experiments/segmentation/object_vote.py --segmenter runs/seg/best.safetensors [--mf]

Three readings of the same class probabilities (single scale, or MF with ``--mf``) on the validation scenes, each
scored as ``mobilenets eval`` scores (mIoU over background + the ten garments, ignore pixels not counted):

- ``pixels``: the arg-max of every pixel (what ``mobilenets eval`` reports);
- ``components``: the pixels the segmenter calls foreground, cut into 8-connected components, every component given
  the garment class with the most probability summed over it — a post-processing that needs no instances, but
  merges objects that touch;
- ``true objects``: the foreground pixels inside each object's true instance mask given that object's vote — the
  grouping made perfect (it reads the labels, so it is a bound, not a method).

Background / foreground decisions are the segmenter's own in all three; only the garment class changes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from mobilenets.data import scenes
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from mobilenets.engine.checkpoints import load_trained
from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES, SINGLE_SCALE, predict_probs
from mobilenets.segmentation.metrics import confusion_matrix, iou_per_class, mean_iou


def vote(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """``labels`` with every pixel of group g (1..count; 0 = no group) set to the garment class (1..K-1) whose
    probability summed over the group is largest."""
    out = labels.copy()
    for g in range(1, count + 1):
        member = groups == g
        if member.any():
            out[member] = 1 + int(probs[1:, member].sum(1).argmax())
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenter", required=True, help="segmentation checkpoint trained on the embedded scenes")
    parser.add_argument("--mf", action="store_true", help="scales 0.5:0.25:1.75 + flips instead of single scale")
    parser.add_argument("--val", type=int, default=200, help="validation scenes (the segmentation figures use 200)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_trained(args.segmenter, "cpu").model.eval()
    scales = DEEPLAB_EVAL_SCALES if args.mf else SINGLE_SCALE
    objects, config = scenes.load_objects("val"), scenes.SceneConfig(size=args.size)
    readings = ("pixels", "components", "true objects")
    classes = len(scenes.CATEGORIES) + 1
    confusion = {name: torch.zeros(classes, classes, dtype=torch.int64) for name in readings}
    for i in range(args.val):
        scene = scenes.generate_scene(i, "val", objects, config)
        probs = predict_probs(model, to_tensor(scene.image, IMAGENET_MEAN, IMAGENET_STD)[None], scales, args.mf)
        p = probs[0].numpy()
        pixels = p.argmax(0)
        foreground = pixels != 0
        components, count = ndimage.label(foreground, structure=np.ones((3, 3)))
        truth = np.where(foreground & (scene.instances > 0), scene.instances, 0)
        labels = {
            "pixels": pixels,
            "components": vote(p, pixels, components, count),
            "true objects": vote(p, pixels, truth, len(scene.labels)),
        }
        target = torch.from_numpy(scene.semantic.astype(np.int64))
        for name in readings:
            confusion[name] += confusion_matrix(torch.from_numpy(labels[name]), target, classes)
    names = ["background"] + [c["name"] for c in scenes.CATEGORIES]
    print(f"{args.segmenter}, {'MF' if args.mf else 'single scale'}, {args.val} validation scenes")
    print(f"  {'':14s} {'mIoU':>6s}  " + " ".join(f"{n[:7]:>7s}" for n in names))
    for name in readings:
        iou = iou_per_class(confusion[name]).tolist()
        print(f"  {name:14s} {mean_iou(confusion[name]):6.3f}  " + " ".join(f"{v:7.2f}" for v in iou))


if __name__ == "__main__":
    main()

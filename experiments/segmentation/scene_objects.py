"""How well the objects of the embedded validation scenes are *named*, object by object.

    python experiments/segmentation/scene_objects.py --classifier runs/views2/best.safetensors \
        [--segmenter runs/seg/best.safetensors]

The scenes' objects are Fashion-MNIST garments, partly covered by others; a segmenter or detector can only name
them as well as it can classify them. For every object of the first ``--scenes`` validation scenes (256×256):

- classifier: the object's box, squared and widened so that the object fills ``--fill`` of its side, cut from
  the scene (neighbours and occluders included) and classified through the checkpoint's own eval transform;
- segmenter (optional): its single-scale prediction on the whole scene, read on the object's own pixels — the
  fraction of them given the right class, the fraction called background, and whether the class with the most
  probability summed over them is right (a per-object vote).

Both are printed by object width (pixels in the 256×256 scene) and by clutter: the fraction of the object's box
taken by other objects' pixels.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from mobilenets.classification.task import eval_transform_of
from mobilenets.data import scenes
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_tensor
from mobilenets.engine.checkpoints import load_trained

WIDTH_BINS = ((0, 40), (40, 64), (64, 96), (96, 257))
CLUTTER_BINS = ((0.0, 0.1), (0.1, 0.3), (0.3, 1.01))  # after "none" (no other object's pixel in the box)


def crop_object(image: np.ndarray, box: np.ndarray, fill: float) -> Image.Image:
    """The square around ``box`` (x0, y0, x1, y1) whose side is the box's longer side / ``fill``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) / fill
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return Image.fromarray(image).crop(area)


def report(title: str, widths: np.ndarray, clutter: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    print(f"{title}: {len(widths)} objects")
    print(f"  {'':14s} {'objects':>8s} " + " ".join(f"{name:>14s}" for name in columns))
    rows = [(f"width {lo}-{hi - 1}", (widths >= lo) & (widths < hi)) for lo, hi in WIDTH_BINS]
    rows.append(("clutter none", clutter == 0))
    rows += [
        (f"clutter {lo:.1f}-{min(hi, 1):.1f}", ((clutter > 0) & (clutter >= lo)) & (clutter < hi))
        for lo, hi in CLUTTER_BINS
    ]
    rows.append(("all", np.ones_like(widths, bool)))
    for label, sel in rows:
        values = " ".join(f"{values[sel].mean():14.3f}" for values in columns.values())
        print(f"  {label:14s} {int(sel.sum()):8d} {values}")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", help="classification checkpoint (10 Fashion-MNIST classes)")
    parser.add_argument("--segmenter", help="segmentation checkpoint trained on the embedded scenes")
    parser.add_argument("--scenes", type=int, default=200, help="validation scenes to read (default 200)")
    parser.add_argument("--fill", type=float, default=0.7, help="object side / crop side for the classifier")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.classifier or args.segmenter):
        parser.error("give --classifier and/or --segmenter")
    torch.set_num_threads(args.threads)
    classifier = load_trained(args.classifier, "cpu") if args.classifier else None
    segmenter = load_trained(args.segmenter, "cpu") if args.segmenter else None
    if classifier is not None:
        transform = eval_transform_of(classifier)  # the checkpoint's own eval transform
    objects, config = scenes.load_objects("val"), scenes.SceneConfig(size=256)
    net = classifier.model.eval() if classifier is not None else None
    seg = segmenter.model.eval() if segmenter is not None else None
    widths, clutter, crop_right, pixel_right, background, vote_right = [], [], [], [], [], []
    for i in range(args.scenes):
        scene = scenes.generate_scene(i, "val", objects, config)
        probs = None
        if seg is not None:
            probs = seg(to_tensor(scene.image, IMAGENET_MEAN, IMAGENET_STD)[None]).softmax(1)[0]
        for k, (box, label) in enumerate(zip(scene.boxes, scene.labels, strict=True), start=1):
            widths.append(float(box[2] - box[0]))
            x0, y0, x1, y1 = (int(v) for v in box)
            window = scene.instances[y0:y1, x0:x1]
            clutter.append(float(((window > 0) & (window != k)).mean()))
            if net is not None:
                x = eval_transform(transform, crop_object(scene.image, box, args.fill))[None]
                # Classes 0..9 are the scenes' category ids 1..10.
                crop_right.append(int(net(x).argmax()) + 1 == label)
            if probs is not None:
                own = torch.from_numpy(scene.instances == k)
                predicted = probs[:, own].argmax(0)
                pixel_right.append(float((predicted == label).float().mean()))
                background.append(float((predicted == 0).float().mean()))
                vote_right.append(int(probs[1:, own].sum(1).argmax()) + 1 == label)
    w, c = np.asarray(widths), np.asarray(clutter)
    if classifier is not None:
        report(f"classifier {classifier.path} on box crops", w, c, {"right": np.asarray(crop_right, float)})
    if segmenter is not None:
        columns = {
            "pixels right": np.asarray(pixel_right),
            "background": np.asarray(background),
            "vote right": np.asarray(vote_right, float),
        }
        report(f"segmenter {segmenter.path}, single scale", w, c, columns)


if __name__ == "__main__":
    main()

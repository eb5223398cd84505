#!/usr/bin/env bash
# README command 1: install, then the main job — train MobileNetV2 on the embedded Fashion-MNIST subset
# (30,000 training images shipped in the package), evaluate on its 2,000 held-out test images, predict samples.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
# OpenMP's default wait policy and data loading in the training process are fastest on a quiet machine (268 vs
# 215-222 images/s with PASSIVE or one worker process). On a machine shared with other jobs, run this script with
# OMP_WAIT_POLICY=PASSIVE: threads spinning for a descheduled sibling measured 4 vs 66 images/s there.
python3 -m pip install -q torch==2.13.0 -e .
mobilenets models
mobilenets profile mobilenet_v2 --resolution 224

OUT=runs/main
rm -rf "$OUT"
# The run is the recipe recipes/fmnist_v2.toml (MobileNetV2 α 0.5, 64 px, AdamW, 4 epochs); EPOCHS=N overrides.
mobilenets train --recipe recipes/fmnist_v2.toml --out "$OUT" --workers 0 --threads 2 ${EPOCHS:+--epochs "$EPOCHS"}
# One evaluation (each draws its own confusion matrix: a second would add confusion-2.png), kept as JSON and
# shown as `mobilenets eval --per-class` prints it.
mobilenets eval --checkpoint "$OUT" --json > "$OUT/eval.json"
python3 -c 'import json, sys
from mobilenets.classification.task import eval_lines
from mobilenets.config import EvalConfig
print("\n".join(eval_lines(json.load(open(sys.argv[1])), EvalConfig(per_class=True))))' "$OUT/eval.json"

# A few samples: held-out embedded images (their true class in the file name) and real photos that belong to no
# class (matplotlib's grace_hopper.jpg, scikit-image's astronaut/coffee when it is installed).
python3 - "$OUT/samples" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from matplotlib import cbook

from mobilenets.data import embedded

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
x, y = embedded.load("test")
for c in (0, 1, 5, 8, 9):
    i = int(np.flatnonzero(y == c)[0])
    Image.fromarray(x[i]).save(out / f"test{i}_{embedded.CLASSES[c].replace('/', '-')}.png")
Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).save(out / "photo_grace_hopper.jpg")
try:
    from skimage import data

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(out / f"photo_{name}.png")
except ImportError:
    pass
PY
mobilenets predict --checkpoint "$OUT" "$OUT/samples" --top-k 3
echo "main job finished in ${SECONDS}s; run folder $OUT (metrics.csv, curves.png, confusion.png, eval.json)"

"""Which layers int8 costs: the photo model of ``real_weights.py`` with one layer at a time in int8 (its fake-quantised
PyTorch twin on VNNI's grid or, ``--grid avx2``, AVX2's (pairs of same-signed weights within 128; ``--grid 63``:
weights within ±63, the AVX2 grid before); every other layer fp32), counted as
in ``real_weights.py``: of the confident eager predictions (p > 0.5) on the held-out crops, how many keep their top-1.
Ten lowest first; ``--all-but-one``: every layer in int8 but one, the ten highest first; ``--thin-in-float 0 16 32``:
every layer in int8 but the expansions of at most K input channels (and the logits' relative error to eager's)
(docs/engine.md).

    python experiments/engine/int8_layers.py --out /tmp/real_weights   # the folder real_weights.py trained into
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.deploy import fused

sys.path.insert(0, str(Path(__file__).parent))
import real_weights as rw  # this folder's script: the photos, the crops, the model file


def grid_of(name: str) -> fused.Int8Grid:
    return {"vnni": fused.VNNI_GRID, "avx2": fused.AVX2_GRID, "63": fused.Int8Grid(255, 63)}[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="real_weights.py's --out folder")
    parser.add_argument("--most", type=int, default=10)
    parser.add_argument("--grid", choices=["vnni", "avx2", "63"], default="vnni")
    parser.add_argument(
        "--all-but-one", action="store_true", help="every layer in int8 but one (the most kept first)"
    )  # fmt: skip
    parser.add_argument(
        "--thin-in-float", type=int, nargs="+", metavar="K",
        help="instead: every layer in int8 but the expansions of at most K input channels, for each K given",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    photos = rw.load_photos()
    model = create_model("mobilenet_v2", weights=args.out / "photo_model.safetensors").eval()
    crops, _ = rw.photo_crops(photos, 1400, 128, seed=1, held_out=True)  # real_weights.py's crops and calibration
    calibration = list(rw.photo_crops(photos, 256, 128, seed=2, held_out=False)[0].split(32))
    eager = rw.logits(model, crops)
    confident = eager.softmax(1).amax(1) > 0.5
    folded = fused.fold_batchnorm(model)
    named = {module: name for name, module in folded.named_modules()}
    ranges_by_name = {named[m]: r for m, r in fused.calibrate(folded, calibration).items()}
    calibrate, codes_scale = fused.calibrate, fused._codes_scale
    rows = []
    try:
        # No depthwise-made codes unless the projection is the layer in int8 (its range is then there).
        fused._codes_scale = lambda b, r, g: codes_scale(b, r, g) if fused._projection(b).conv in r else None
        if args.thin_in_float:
            print(f"confident eager predictions: {int(confident.sum())}; kept, and the logits' relative error:")
        for k in args.thin_in_float or []:
            thin = {n for n in ranges_by_name if ".expand." in n and folded.get_submodule(n).weight.shape[1] <= k}
            kept_ranges = {n: r for n, r in ranges_by_name.items() if n not in thin}
            fused.calibrate = lambda m, batches, forward=None, o=kept_ranges: {
                dict(m.named_modules())[n]: r for n, r in o.items()
            }
            logits = rw.logits(fused.fake_quantized(model, calibration, grid_of(args.grid)).eval(), crops)
            kept = int((logits.argmax(1) == eager.argmax(1))[confident].sum())
            error = float((logits - eager).norm() / eager.norm())
            print(f"  expansions of <= {k:3d} input channels in float ({len(thin):2d} layers): {kept:5d}  {error:.4f}")
        if args.thin_in_float:
            return
        for target, channels in ranges_by_name.items():
            if args.all_but_one:
                others = {name: r for name, r in ranges_by_name.items() if name != target}
                fused.calibrate = lambda m, batches, forward=None, o=others: {
                    dict(m.named_modules())[n]: r for n, r in o.items()
                }
            else:
                fused.calibrate = lambda m, batches, forward=None, t=target, c=channels: {dict(m.named_modules())[t]: c}
            twin = fused.fake_quantized(model, calibration, grid_of(args.grid)).eval()
            kept = int((rw.logits(twin, crops).argmax(1) == eager.argmax(1))[confident].sum())
            rows.append((kept, target))
    finally:
        fused.calibrate, fused._codes_scale = calibrate, codes_scale
    what = "every layer in int8 but" if args.all_but_one else "one layer in int8"
    print(f"confident eager predictions: {int(confident.sum())}; kept with {what}:")
    for kept, target in sorted(rows, reverse=args.all_but_one)[: args.most]:
        print(f"  {kept:5d}  {target}")


if __name__ == "__main__":
    main()

"""Which layers int8 costs: the photo model of ``real_weights.py`` with one layer at a time in int8 (its fake-quantised
PyTorch twin, weights rounded for each layer's output as the engine's, on VNNI's grid or, ``--grid avx2``, AVX2's
(pairs of same-signed weights within 128; ``--grid 63``: weights within ±63, the AVX2 grid before); every other
layer fp32), counted as in ``real_weights.py``: of the confident eager predictions (p > 0.5) on the held-out crops,
how many keep their top-1. Ten lowest first; ``--all-but-one``: every layer in int8 but one, the ten highest first;
``--thin-in-float 0 16 32``: every layer in int8 but the expansions of at most K input channels (and the logits'
relative error to eager's) (docs/engine.md); ``--nearest``: weights rounded each to its nearest code instead. The
thin expansions count as layers here (the engine keeps them fp32).

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
    parser.add_argument(
        "--nearest", action="store_true", help="weights rounded each to its nearest code (the engine before GPTQ)"
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
    ranges_by_name = {named[m]: r for m, r in fused.calibrate(folded, calibration, thin_fp32=0).items()}
    grid = grid_of(args.grid)
    calibrate, codes_scale = fused.calibrate, fused._codes_scale

    def twin_logits(int8_layers: dict) -> torch.Tensor:
        """The twin's logits with just these layers (name: calibrated range) in int8, the rest fp32 (the int8 1×1
        layers' weights rounded for their outputs, as the engine's)."""

        def chosen(
            m: torch.nn.Module, batches: list, forward: object = None, thin_fp32: int = 0, grams: dict | None = None
        ) -> dict:
            calibrate(m, batches, forward, 0, None if args.nearest else grams)  # the Gram matrices
            return {dict(m.named_modules())[n]: r for n, r in int8_layers.items()}

        fused.calibrate = chosen
        return rw.logits(fused.fake_quantized(model, calibration, grid).eval(), crops)

    def kept(logits: torch.Tensor) -> int:
        return int((logits.argmax(1) == eager.argmax(1))[confident].sum())

    rows = []
    try:
        # No depthwise-made codes unless the projection is the layer in int8 (its range is then there).
        fused._codes_scale = lambda b, r, g: codes_scale(b, r, g) if fused._projection(b).conv in r else None
        if args.thin_in_float:
            print(f"confident eager predictions: {int(confident.sum())}; kept, and the logits' relative error:")
            for k in args.thin_in_float:
                thin = {n for n in ranges_by_name if ".expand." in n and folded.get_submodule(n).weight.shape[1] <= k}
                logits = twin_logits({n: r for n, r in ranges_by_name.items() if n not in thin})
                error = float((logits - eager).norm() / eager.norm())
                print(f"  expansions of <= {k:3d} input channels in float ({len(thin):2d} layers): "
                      f"{kept(logits):5d}  {error:.4f}")  # fmt: skip
            return
        for target in ranges_by_name:
            if args.all_but_one:
                chosen = {n: r for n, r in ranges_by_name.items() if n != target}
            else:
                chosen = {target: ranges_by_name[target]}
            rows.append((kept(twin_logits(chosen)), target))
    finally:
        fused.calibrate, fused._codes_scale = calibrate, codes_scale
    what = "every layer in int8 but" if args.all_but_one else "one layer in int8"
    print(f"confident eager predictions: {int(confident.sum())}; kept with {what}:")
    for n_kept, target in sorted(rows, reverse=args.all_but_one)[: args.most]:
        print(f"  {n_kept:5d}  {target}")


if __name__ == "__main__":
    main()

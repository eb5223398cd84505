"""`mobilenets segment-table7`: the V2 paper's Table 7 parameters and multiply-adds, computed from the models.

Training, evaluation and prediction of segmenters go through ``mobilenets train/eval/predict --task segment``.
"""

from __future__ import annotations

import argparse

from mobilenets.cli import print_json
from mobilenets.errors import ConfigError

# V2 paper Table 7 (PASCAL VOC 2012 val): (model, output stride, ASPP, MF, mIOU, params M, MAdds B).
TABLE7 = [
    ("deeplabv3_mobilenet_v1", 16, True, False, 75.29, 11.15, 14.25),
    ("deeplabv3_mobilenet_v1", 8, True, True, 78.56, 11.15, 941.9),
    ("deeplabv3_mobilenet_v2", 16, True, False, 75.70, 4.52, 5.8),
    ("deeplabv3_mobilenet_v2", 8, True, True, 78.42, 4.52, 387.0),
    ("deeplabv3_mobilenet_v2", 16, False, False, 75.32, 2.11, 2.75),
    ("deeplabv3_mobilenet_v2", 8, False, True, 77.33, 2.11, 152.6),
]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment-table7", help="V2 Table 7: DeepLabv3 params and MAdds, ours beside the paper's")
    p.add_argument("--resolution", type=int, default=513, help="input side (DeepLab evaluates 513×513)")
    p.add_argument("--single-scale-only", action="store_true", help="skip the (slow) OS 8 + MF rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_table7)


def table7_rows(resolution: int = 513, single_scale_only: bool = False) -> list[dict[str, object]]:
    """Each Table 7 row with our params and MAdds: ``madds`` counts true output positions, ``madds_tf`` adds
    TensorFlow's space-to-batch padding of atrous convolutions (how the paper's figures were counted)."""
    from mobilenets.analysis.dense import inference_madds
    from mobilenets.analysis.profile import count_params
    from mobilenets.registry import create_model
    from mobilenets.segmentation.inference import DEEPLAB_EVAL_SCALES, SINGLE_SCALE

    if resolution <= 0:
        raise ConfigError(f"resolution must be > 0, got {resolution}")
    rows = []
    for name, os_, aspp, mf, miou, params, madds in TABLE7:
        if mf and single_scale_only:
            continue
        model = create_model(name, aspp=aspp, output_stride=os_, num_classes=21)
        scales = DEEPLAB_EVAL_SCALES if mf else SINGLE_SCALE
        rows.append(
            {
                "model": name, "output_stride": os_, "aspp": aspp, "mf": mf,
                "params": count_params(model)[0],
                "madds": inference_madds(model, resolution, scales, flip=mf),
                "madds_tf": inference_madds(model, resolution, scales, flip=mf, tf_atrous=True),
                "paper_miou": miou, "paper_params_m": params, "paper_madds_b": madds,
            }
        )  # fmt: skip
    return rows


def cmd_table7(args: argparse.Namespace) -> int:
    rows = table7_rows(args.resolution, args.single_scale_only)
    if args.json:
        print_json({"resolution": args.resolution, "rows": rows})
        return 0
    print(f"V2 Table 7 at {args.resolution}×{args.resolution}, 21 classes; MF: scales 0.5:0.25:1.75 + flips")
    head = f"{'model':24s} {'OS':>3s} {'ASPP':>5s} {'MF':>3s} {'params':>8s} {'paper':>7s} "
    print(head + f"{'MAdds':>9s} {'TF-style':>9s} {'paper':>8s}")
    for r in rows:
        print(
            f"{r['model']:24s} {r['output_stride']:>3d} {'yes' if r['aspp'] else 'no':>5s} "
            f"{'yes' if r['mf'] else 'no':>3s} {r['params'] / 1e6:>7.2f}M {r['paper_params_m']:>6.2f}M "
            f"{r['madds'] / 1e9:>8.2f}B {r['madds_tf'] / 1e9:>8.2f}B {r['paper_madds_b']:>7.2f}B"
        )
    return 0

"""Multiply-adds of a segmenter's inference strategy (V2 §6.3 Table 7): the model's count summed over every
forward pass it makes (each scale, and the mirror images with flips).

Table 7 counts atrous convolutions as TensorFlow runs them (space-to-batch: the dilated input is padded to a
multiple of the rate and cut into rate² blocks, so a 3×3 conv at rate 6 on 33×33 computes 36·6² = 1296 positions
instead of 1089); ``tf_atrous=True`` adds that padding, which is what reproduces the paper's 5.8B and 387B.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mobilenets.analysis.profile import profile
from mobilenets.errors import ConfigError
from mobilenets.segmentation.inference import SINGLE_SCALE, _check_scales, scaled_size


def _space_to_batch_positions(size: int, kernel: int, rate: int) -> int:
    # tf.nn.convolution with dilation: SAME base padding (k-1)·rate, then padded up to a multiple of the rate,
    # cut into rate×rate blocks, each convolved VALID with the undilated kernel.
    padded = size + (kernel - 1) * rate
    padded += -padded % rate
    return rate * (padded // rate - kernel + 1)


def tf_atrous_madds(model: nn.Module, resolution: int | tuple[int, int]) -> int:
    """Multiply-adds as TensorFlow computes atrous convs (space-to-batch padding), for one image."""
    prof = profile(model, resolution)
    modules = dict(model.named_modules())
    total = 0
    for layer in prof.layers:
        total += layer.madds
        module = modules[layer.name]
        if isinstance(module, nn.Conv2d) and module.dilation[0] > 1:
            h, w = layer.output_shape[1:]
            per_position = layer.madds // (h * w)
            kh, kw = module.kernel_size
            positions = _space_to_batch_positions(h, kh, module.dilation[0]) * _space_to_batch_positions(
                w, kw, module.dilation[1]
            )
            total += per_position * (positions - h * w)
    return total


def inference_madds(
    model: nn.Module,
    resolution: int,
    scales: Sequence[float] = SINGLE_SCALE,
    flip: bool = False,
    tf_atrous: bool = False,
) -> int:
    """Multiply-adds of one ``resolution``² image under a strategy: summed over scales, ×2 with flips."""
    _check_scales(scales)
    count = tf_atrous_madds if tf_atrous else (lambda m, r: profile(m, r).madds)
    total = sum(count(model, scaled_size(resolution, s)) for s in scales)
    return total * (2 if flip else 1)


# V2 paper Table 7 (PASCAL VOC 2012 val): (model, output stride, ASPP, MF, mIOU, params M, MAdds B).
TABLE7 = [
    ("deeplabv3_mobilenet_v1", 16, True, False, 75.29, 11.15, 14.25),
    ("deeplabv3_mobilenet_v1", 8, True, True, 78.56, 11.15, 941.9),
    ("deeplabv3_mobilenet_v2", 16, True, False, 75.70, 4.52, 5.8),
    ("deeplabv3_mobilenet_v2", 8, True, True, 78.42, 4.52, 387.0),
    ("deeplabv3_mobilenet_v2", 16, False, False, 75.32, 2.11, 2.75),
    ("deeplabv3_mobilenet_v2", 8, False, True, 77.33, 2.11, 152.6),
]


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

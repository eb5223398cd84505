"""Registered classification models. Each name is a paper variant; every option can be overridden."""

from __future__ import annotations

from mobilenets.models.mobilenet import MobileNet, build_mobilenet
from mobilenets.registry import register_model


@register_model("mobilenet_v1")
def mobilenet_v1(**overrides: object) -> MobileNet:
    """MobileNetV1, Table 1 of arXiv 1704.04861."""
    return build_mobilenet("v1", **overrides)


@register_model("mobilenet_v2")
def mobilenet_v2(**overrides: object) -> MobileNet:
    """MobileNetV2, Table 2 of arXiv 1801.04381."""
    return build_mobilenet("v2", **overrides)


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(**overrides: object) -> MobileNet:
    """MobileNetV3-Large, Table 1 of arXiv 1905.02244."""
    return build_mobilenet("v3_large", **overrides)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(**overrides: object) -> MobileNet:
    """MobileNetV3-Small, Table 2 of arXiv 1905.02244."""
    return build_mobilenet("v3_small", **overrides)


@register_model("mobilenet_v3_large_minimal")
def mobilenet_v3_large_minimal(**overrides: object) -> MobileNet:
    """MobileNetV3-Large minimalistic (TF-Slim/Keras): no SE, ReLU, 3×3 kernels."""
    return build_mobilenet("v3_large", **{"minimal": True, **overrides})


@register_model("mobilenet_v3_small_minimal")
def mobilenet_v3_small_minimal(**overrides: object) -> MobileNet:
    """MobileNetV3-Small minimalistic (TF-Slim/Keras): no SE, ReLU, 3×3 kernels."""
    return build_mobilenet("v3_small", **{"minimal": True, **overrides})

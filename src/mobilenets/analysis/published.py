"""The published parameter and multiply-add counts of MobileNetV1/V2/V3, each beside our count.

    mobilenets published [--json] [--source v2_tfslim]

Conventions — what the papers and TF-Slim count (V1 §3, V2 Table 4, V3 Table 3):

- multiply-adds: convolutions and fully connected layers only, for one image, classifier included. The models
  were trained in TF-Slim on ImageNet with 1001 classes (a background class), so we count 1001.
- parameters: convolution and FC weights and biases, without BatchNorm ("no_bn"). Exception: TF-Slim's V1 table
  counts every variable of its checkpoints ("tf_variables"): weights plus BatchNorm's β, moving mean and moving
  variance (its V1 BatchNorm has no γ). That is how 4.24M comes out for V1 1.0 (4.21M weights + 3 × 10,944).
- A printed figure agrees with ours when it is ours rounded or truncated to the printed digits (TF-Slim's V2 MACs
  are truncated: 300.8 → 300, 153.9 → 153), or within 1%.

Figures that cannot be matched carry a ``note`` saying why; the tests check both that every other figure agrees and
that each noted one still differs. Our counts come from :func:`count`, a closed form over the resolved spec, which
the tests hold equal to the hook-based :func:`mobilenets.profile` on real models.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.models.specs import ARCH_OF_MODEL, NetSpec, build_spec

# -- sources -------------------------------------------------------------------------------------------------------
SOURCES = {
    "v1_paper": "MobileNetV1 paper, arXiv 1704.04861: Tables 6 (width), 7 (resolution), 9 and 10",
    "v1_tfslim": "TF-Slim, tensorflow/models research/slim/nets/mobilenet_v1.md: pre-trained models table",
    "v2_paper": "MobileNetV2 paper, arXiv 1801.04381: Table 4",
    "v2_tfslim": "TF-Slim, tensorflow/models research/slim/nets/mobilenet/README.md: MobileNet V2 checkpoints",
    "v3_paper": "MobileNetV3 paper, arXiv 1905.02244 (ICCV 2019 version): Table 3 and Appendix A Table 9",
    "v3_tfslim": "TF-Slim, tensorflow/models research/slim/nets/mobilenet/README.md: MobileNet V3 checkpoints",
}

# Each table copied as printed: width, resolution, MAdds (millions), parameters (millions); None = not printed.
V1_PAPER = [
    # table,      α,    res, MAdds, params
    ("Table 6", 1.0, 224, "569", "4.2"),
    ("Table 6", 0.75, 224, "325", "2.6"),
    ("Table 6", 0.5, 224, "149", "1.3"),
    ("Table 6", 0.25, 224, "41", "0.5"),
    ("Table 7", 1.0, 192, "418", "4.2"),
    ("Table 7", 1.0, 160, "290", "4.2"),
    ("Table 7", 1.0, 128, "186", "4.2"),
    ("Table 9", 0.5, 160, "76", "1.32"),
    ("Table 10", 0.75, 192, "239", None),  # Stanford Dogs: its parameter count has another classifier
]
V1_TFSLIM = [
    # α,    res, Million MACs, Million Parameters
    (1.0, 224, "569", "4.24"),
    (1.0, 192, "418", "4.24"),
    (1.0, 160, "291", "4.24"),
    (1.0, 128, "186", "4.24"),
    (0.75, 224, "317", "2.59"),
    (0.75, 192, "233", "2.59"),
    (0.75, 160, "162", "2.59"),
    (0.75, 128, "104", "2.59"),
    (0.5, 224, "150", "1.34"),
    (0.5, 192, "110", "1.34"),
    (0.5, 160, "77", "1.34"),
    (0.5, 128, "49", "1.34"),
    (0.25, 224, "41", "0.47"),
    (0.25, 192, "34", "0.47"),
    (0.25, 160, "21", "0.47"),
    (0.25, 128, "14", "0.47"),
]
V2_PAPER = [
    # table,      model,          α,   res, MAdds, params
    ("Table 4", "mobilenet_v2", 1.0, 224, "300", "3.4"),
    ("Table 4", "mobilenet_v2", 1.4, 224, "585", "6.9"),
    ("Table 4", "mobilenet_v1", 1.0, 224, "575", "4.2"),
]
V2_TFSLIM = [
    # α,   res, MACs (M), Parameters (M)
    (1.4, 224, "582", "6.06"),
    (1.3, 224, "509", "5.34"),
    (1.0, 224, "300", "3.47"),
    (1.0, 192, "221", "3.47"),
    (1.0, 160, "154", "3.47"),
    (1.0, 128, "99", "3.47"),
    (1.0, 96, "56", "3.47"),
    (0.75, 224, "209", "2.61"),
    (0.75, 192, "153", "2.61"),
    (0.75, 160, "107", "2.61"),
    (0.75, 128, "69", "2.61"),
    (0.75, 96, "39", "2.61"),
    (0.5, 224, "97", "1.95"),
    (0.5, 192, "71", "1.95"),
    (0.5, 160, "50", "1.95"),
    (0.5, 128, "32", "1.95"),
    (0.5, 96, "18", "1.95"),
    (0.35, 224, "59", "1.66"),
    (0.35, 192, "43", "1.66"),
    (0.35, 160, "30", "1.66"),
    (0.35, 128, "20", "1.66"),
    (0.35, 96, "11", "1.66"),
]
V3_PAPER = [
    # table,      model,                 α,    res, MAdds, params
    ("Table 3", "mobilenet_v3_large", 1.0, 224, "219", "5.4"),
    ("Table 3", "mobilenet_v3_large", 0.75, 224, "155", "4.0"),
    ("Table 3", "mobilenet_v3_small", 1.0, 224, "56", "2.5"),
    ("Table 3", "mobilenet_v3_small", 0.75, 224, "44", "2.0"),
    ("Table 3", "mobilenet_v2", 1.0, 224, "300", "3.4"),
    ("Table 3", "mobilenet_v2", 0.35, 224, "59.2", "1.6"),
    ("Table 9", "mobilenet_v3_large", 1.25, 224, "356", "7.5"),
    ("Table 9", "mobilenet_v3_large", 1.0, 224, "217", "5.4"),
    ("Table 9", "mobilenet_v3_large", 0.75, 224, "155", "4.0"),
    ("Table 9", "mobilenet_v3_large", 0.5, 224, "69", "2.6"),
    ("Table 9", "mobilenet_v3_large", 0.35, 224, "40", "2.2"),
    ("Table 9", "mobilenet_v3_large", 1.0, 256, "282", "5.4"),
    ("Table 9", "mobilenet_v3_large", 1.0, 192, "160", "5.4"),
    ("Table 9", "mobilenet_v3_large", 1.0, 160, "112", "5.4"),
    ("Table 9", "mobilenet_v3_large", 1.0, 128, "73", "5.4"),
    ("Table 9", "mobilenet_v3_large", 1.0, 96, "43", "5.4"),
    ("Table 9", "mobilenet_v3_small", 1.25, 224, "91", "3.6"),
    ("Table 9", "mobilenet_v3_small", 1.0, 224, "57", "2.5"),
    ("Table 9", "mobilenet_v3_small", 0.75, 224, "44", "2.0"),
    ("Table 9", "mobilenet_v3_small", 0.5, 224, "21", "1.6"),
    ("Table 9", "mobilenet_v3_small", 0.35, 224, "12", "1.4"),
    ("Table 9", "mobilenet_v3_small", 1.0, 256, "74", "2.5"),
    ("Table 9", "mobilenet_v3_small", 1.0, 160, "30", "2.5"),
    ("Table 9", "mobilenet_v3_small", 1.0, 128, "20", "2.5"),
    ("Table 9", "mobilenet_v3_small", 1.0, 96, "12", "2.5"),
]
V3_TFSLIM = [
    # model,                         α,   res, MACs (M), Params (M)
    ("mobilenet_v3_large", 1.0, 224, "217", "5.4"),
    ("mobilenet_v3_large", 0.75, 224, "155", "4.0"),
    ("mobilenet_v3_small", 1.0, 224, "66", "2.9"),
    ("mobilenet_v3_small", 0.75, 224, "44", "2.4"),
    ("mobilenet_v3_large_minimal", 1.0, 224, "209", "3.9"),
    ("mobilenet_v3_small_minimal", 1.0, 224, "65", "2.0"),
]

# Why a figure cannot be matched, keyed "source/table/model/width/resolution/madds|params".
NOTES = {
    "v1_tfslim/README/mobilenet_v1/0.75/224/madds": "the V1 paper gives 325M (its Table 6), as we count",
    "v1_tfslim/README/mobilenet_v1/0.75/192/madds": "the V1 paper gives 239M (its Table 10), as we count",
    "v1_tfslim/README/mobilenet_v1/0.75/160/madds": "like the other 0.75 rows, 2.5% below the count",
    "v1_tfslim/README/mobilenet_v1/0.75/128/madds": "like the other 0.75 rows, 2.5% below the count",
    "v1_tfslim/README/mobilenet_v1/0.25/192/madds": "out of line with its own rows: 41M × (192/224)² ≈ 30M",
    "v2_paper/Table 4/mobilenet_v2/1.4/224/params": "TF-Slim lists 6.06M for mobilenet_v2_1.4_224, as we count",
    "v2_paper/Table 4/mobilenet_v1/1.0/224/madds": "the V1 paper itself gives 569M (its Table 6), as we count",
    "v3_paper/Table 3/mobilenet_v3_large/1.0/224/madds": "the paper's Table 9 and TF-Slim give 217M, as we count",
    "v3_paper/Table 3/mobilenet_v3_small/0.75/224/madds": "43.4M counted, 1.4% below",
    "v3_paper/Table 9/mobilenet_v3_small/0.75/224/madds": "43.4M counted, 1.4% below",
    "v3_paper/Table 9/mobilenet_v3_small/1.0/256/madds": "73.2M counted, 1.1% below",
    "v3_paper/Table 9/mobilenet_v3_large/0.35/224/madds": "39.47M counted, 1.3% below",
    "v3_paper/Table 9/mobilenet_v3_large/0.35/224/params": "2.12M counted; BatchNorm or 1000 classes do not explain it",
    "v3_paper/Table 9/mobilenet_v3_small/1.25/224/params": (
        "3.19M with the 1024-wide pre-logits kept (3.63M if it grew to 1280, but Large 1.25's 7.5M needs it kept)"
    ),
    "v3_tfslim/README/mobilenet_v3_small/1.0/224/madds": "an earlier paper version's figure; the final paper: 56M",
    "v3_tfslim/README/mobilenet_v3_small/1.0/224/params": "an earlier paper version's figure; the final paper: 2.5M",
    "v3_tfslim/README/mobilenet_v3_small/0.75/224/madds": "43.4M counted, 1.4% below",
    "v3_tfslim/README/mobilenet_v3_small/0.75/224/params": "an earlier paper version's figure; the final paper: 2.0M",
    "v3_tfslim/README/mobilenet_v3_small_minimal/1.0/224/madds": "52.3M counted; ~10M above, like Small's 66M",
}
NUM_CLASSES = 1001
REL_TOL = 0.01


@dataclass(frozen=True)
class Figure:
    """One published (model, width, resolution) with its printed MAdds and parameters, in millions."""

    source: str
    table: str  # where in the source ("Table 6"; "README" for TF-Slim's tables)
    model: str
    width: float
    resolution: int
    madds: str | None
    params: str | None
    params_convention: str = "no_bn"  # or "tf_variables" (TF-Slim V1: + β, moving mean, moving variance)


def _figures() -> list[Figure]:
    rows = [Figure("v1_paper", t, "mobilenet_v1", *r) for t, *r in V1_PAPER]
    rows += [Figure("v1_tfslim", "README", "mobilenet_v1", *r, params_convention="tf_variables") for r in V1_TFSLIM]
    rows += [Figure("v2_paper", *r) for r in V2_PAPER]
    rows += [Figure("v2_tfslim", "README", "mobilenet_v2", *r) for r in V2_TFSLIM]
    rows += [Figure("v3_paper", *r) for r in V3_PAPER]
    rows += [Figure("v3_tfslim", "README", *r) for r in V3_TFSLIM]
    return rows


FIGURES: list[Figure] = _figures()


# -- our count, in closed form -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    madds: int
    params_no_bn: int
    bn_channels: int  # BatchNorm layers' total width: each has γ, β (parameters) and mean, variance (buffers)

    @property
    def params(self) -> int:
        """With BatchNorm's γ and β, as PyTorch counts ``parameters()``."""
        return self.params_no_bn + 2 * self.bn_channels

    def params_as(self, convention: str) -> int:
        if convention == "no_bn":
            return self.params_no_bn
        if convention == "tf_variables":
            return self.params_no_bn + 3 * self.bn_channels
        raise ValueError(f"unknown parameter convention {convention!r}")


def _out(size: int, stride: int) -> int:
    return -(-size // stride)  # symmetric (k-1)/2 padding and TF 'SAME' both give ceil(size / stride)


def count(spec: NetSpec, resolution: int, num_classes: int = NUM_CLASSES, in_chans: int = 3) -> Count:
    """Multiply-adds and parameters of a resolved spec, layer by layer as V2 §3.3 writes them:
    a k×k conv producing h×w×c' from c channels costs h·w·k²·c·c' (depthwise: h·w·k²·c)."""
    h = w = _out(resolution, 2)
    stem = spec.stem_channels
    madds, params, bn = h * w * 9 * in_chans * stem, 9 * in_chans * stem, stem
    c = stem
    for b in spec.blocks:
        mid, k2 = b.mid_channels, b.kernel * b.kernel
        if b.has_expand:  # 1×1 expansion at the input resolution
            madds, params, bn = madds + h * w * c * mid, params + c * mid, bn + mid
        h, w = _out(h, b.stride), _out(w, b.stride)
        madds, params, bn = madds + h * w * k2 * mid, params + k2 * mid, bn + mid  # depthwise
        if b.se_channels:  # two 1×1 convs with bias on the pooled vector
            madds += 2 * mid * b.se_channels
            params += 2 * mid * b.se_channels + b.se_channels + mid
        madds, params, bn = madds + h * w * mid * b.out_channels, params + mid * b.out_channels, bn + b.out_channels
        c = b.out_channels
    if spec.head_channels:  # the last 1×1 conv, with BN
        madds += h * w * c * spec.head_channels
        params += c * spec.head_channels
        bn += spec.head_channels
        c = spec.head_channels
    if spec.pre_logits_channels:  # after the pool: a 1×1 conv (our Linear) with bias, no BN
        madds += c * spec.pre_logits_channels
        params += c * spec.pre_logits_channels + spec.pre_logits_channels
        c = spec.pre_logits_channels
    if num_classes:
        madds, params = madds + c * num_classes, params + c * num_classes + num_classes
    return Count(madds, params, bn)


def count_model(model: str, width: float, resolution: int, num_classes: int = NUM_CLASSES) -> Count:
    arch, minimal = ARCH_OF_MODEL[model]
    return count(build_spec(arch, width, minimal=minimal), resolution, num_classes)


# -- comparison ----------------------------------------------------------------------------------------------------
def agrees(ours_millions: float, printed: str, rel_tol: float = REL_TOL) -> bool:
    """Is ``printed`` our figure rounded or truncated to its digits, or within ``rel_tol``?"""
    digits = len(printed.split(".")[1]) if "." in printed else 0
    unit, value = 10.0**-digits, float(printed)
    return value - unit / 2 <= ours_millions < value + unit or abs(ours_millions - value) <= rel_tol * value


@dataclass(frozen=True)
class Row:
    figure: Figure
    madds: float  # ours, millions
    params: float
    madds_agree: bool | None  # None: nothing printed
    params_agree: bool | None
    madds_note: str
    params_note: str


def compare(figures: list[Figure] = FIGURES) -> list[Row]:
    rows = []
    for f in figures:
        c = count_model(f.model, f.width, f.resolution)
        madds, params = c.madds / 1e6, c.params_as(f.params_convention) / 1e6
        key = f"{f.source}/{f.table}/{f.model}/{f.width}/{f.resolution}"
        rows.append(
            Row(
                f,
                madds,
                params,
                None if f.madds is None else agrees(madds, f.madds),
                None if f.params is None else agrees(params, f.params),
                NOTES.get(f"{key}/madds", ""),
                NOTES.get(f"{key}/params", ""),
            )
        )
    return rows

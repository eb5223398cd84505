"""Counting: the papers' convention, three ways (hooks, closed form, torch's FlopCounterMode), and the published
figures of the V1, V2 and V3 papers and TF-Slim reproduced — or, where they cannot be, the reason written down."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import Profile, create_model, profile
from mobilenets.analysis.published import FIGURES, NOTES, agrees, compare, count, count_model


@pytest.fixture(scope="module")
def v2_224() -> Profile:
    return profile(create_model("mobilenet_v2", num_classes=1001), 224)


def test_v2_anchor(v2_224: Profile) -> None:
    # TF-Slim's mobilenet_v2_1.0_224: 300 MACs (M), 3.47 parameters (M), BatchNorm excluded, 1001 classes.
    assert v2_224.madds == 300_775_552
    assert v2_224.params_no_bn == 3_472_041


def test_v2_block_cost_is_the_papers_formula(v2_224: Profile) -> None:
    # V2 §3.3: a stride-1 bottleneck costs h·w·d'·t·(d' + k² + d''); block 3 is 24 → 24 at 56×56, t = 6.
    h = w = 56
    d_in, t, d_out = 24, 6, 24
    block = sum(layer.madds for layer in v2_224.layers if layer.name.startswith("stages.1.1."))
    assert block == h * w * d_in * t * (d_in + 9 + d_out)


CASES = [
    ("mobilenet_v1", {"width": 0.25}, 96),
    ("mobilenet_v2", {"width": 0.35}, 96),
    ("mobilenet_v2", {"width": 1.4, "output_stride": 8}, 64),  # dilation: later maps keep their size
    ("mobilenet_v3_large", {"width": 0.75}, 64),
    ("mobilenet_v3_small", {"width": 1.25, "output_stride": 16}, 96),
    ("mobilenet_v3_small_minimal", {"width": 0.5}, 64),
]


@pytest.mark.parametrize(("name", "overrides", "resolution"), CASES)
def test_closed_form_equals_profile(name: str, overrides: dict[str, object], resolution: int) -> None:
    model = create_model(name, num_classes=1001, **overrides)
    measured = profile(model, resolution)
    closed = count(model.spec, resolution, 1001)
    assert (closed.madds, closed.params_no_bn, closed.params) == (
        measured.madds,
        measured.params_no_bn,
        measured.params,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mobilenet_v2", 3_504_872), ("mobilenet_v3_large", 5_483_032), ("mobilenet_v3_small", 2_542_856)],
)
def test_torchvision_parameter_counts(name: str, expected: int) -> None:
    # torchvision's published counts: BatchNorm's γ and β included, 1000 classes.
    assert count_model(name, 1.0, 224, num_classes=1000).params == expected


@pytest.mark.parametrize(
    ("name", "width"), [("mobilenet_v2", 0.5), ("mobilenet_v3_small", 1.0), ("mobilenet_v1", 0.25)]
)
def test_flop_counter_counts_two_flops_per_multiply_add(name: str, width: float) -> None:
    """torch's FlopCounterMode counts convolutions (depthwise included) and matrix multiplies (the FC layers) at
    2 FLOPs per multiply-add. It has no formula for BatchNorm, activations, additions, the squeeze-and-excite mean
    or the pooling — exactly what the papers leave out too — so the totals must agree exactly."""
    model = create_model(name, width=width).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 96, 96))
    counted_ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    # 1×1 convolutions run as matrix products in CPU inference (PointwiseConv2d): aten.mm
    assert counted_ops <= {"aten.convolution", "aten.addmm", "aten.mm"}
    assert counter.get_total_flops() == 2 * profile(model, 96).madds


def test_agreement_rule() -> None:
    assert agrees(300.8, "300")  # TF-Slim truncates
    assert agrees(568.7, "569")  # the V1 paper rounds
    assert agrees(59.29, "59.2") and not agrees(60.0, "59.2")  # printed to 0.1M: 1.4% off is too far
    assert agrees(3.472, "3.47") and agrees(0.465, "0.5")
    assert not agrees(325.4, "317") and not agrees(2.124, "2.2")


ROWS = compare()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.figure.source}-{r.figure.table}-{r.figure.model}-"
                         f"{r.figure.width}-{r.figure.resolution}")  # fmt: skip
def test_published_figure(row) -> None:
    # Every figure agrees with our count unless a note says why it cannot; a noted figure must really differ.
    for agree, note in ((row.madds_agree, row.madds_note), (row.params_agree, row.params_note)):
        if agree is not None:
            assert agree == (not note), note or "no note, but the figure does not agree"


def test_every_note_names_a_figure() -> None:
    keys = {f"{f.source}/{f.table}/{f.model}/{f.width}/{f.resolution}" for f in FIGURES}
    assert {note.rsplit("/", 1)[0] for note in NOTES} <= keys


def test_tfslim_v2_table_is_our_count_truncated() -> None:
    # All 22 MobileNetV2 checkpoints: TF-Slim's MACs are our exact count cut to whole millions.
    rows = [r for r in ROWS if r.figure.source == "v2_tfslim"]
    assert len(rows) == 22
    assert all(int(r.madds) == int(r.figure.madds) for r in rows)
    assert all(round(r.params, 2) == float(r.figure.params) for r in rows)


def test_published_coverage() -> None:
    # V2: every width × resolution TF-Slim lists (6 widths; 5 resolutions for 1.0 and below); V1: the paper's
    # widths and resolutions and TF-Slim's 16; V3: Large and Small, with the minimalistic variants.
    v2 = {(f.width, f.resolution) for f in FIGURES if f.source == "v2_tfslim"}
    assert {w for w, _ in v2} == {0.35, 0.5, 0.75, 1.0, 1.3, 1.4}
    assert {r for _, r in v2} == {96, 128, 160, 192, 224}
    v1 = {(f.width, f.resolution) for f in FIGURES if f.model == "mobilenet_v1" and f.source == "v1_tfslim"}
    assert len(v1) == 16
    v3 = {f.model for f in FIGURES if f.source.startswith("v3")}
    assert {"mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v3_large_minimal"} <= v3

"""The latency goals, computed from a run's rows within a precision class (never from rows picked by name).

- fp32: our fastest fp32 path that equals eager within ``FP32_TOLERANCE`` (times the outputs' largest magnitude
  where that exceeds 1: a backbone's feature maps reach the hundreds, logits do not) over the fastest peer fp32
  path (≤ 0.9);
- reduced: our fastest bf16 / int8 path within the accuracy bound over the fastest peer bf16 / int8 path within the
  same bound (≤ 0.9) — a runtime's default precision is whatever it reports, so OpenVINO's bf16 default competes
  here, not against fp32;
- eager: our fastest PyTorch-eager path over the fastest peer PyTorch-eager path (timm; ≤ 1.0);
- moonshot: our fastest path within its bound at batch 1 ≤ 1.0 ms, judged only on a host with AMX tiles.

The accuracy bound for reduced precision is top-1 agreement with our fp32 eager model ≥ 99 % on its confident
predictions (probability > 0.5) where there are at least ``MIN_CONFIDENT`` of them (trained weights); with random
weights no prediction is confident, and a relative error below ``REL_ERROR_BOUND`` only checks that the path is not
broken: an output no closer to eager's than zeros (1.0; unrelated outputs ≈ 1.4) is left out. With random weights
and BatchNorm re-estimated on photos the int8 paths measured 0.23–0.30 on MobileNetV2 / V3-Large logits at 224 and
0.74–0.81 on the SSDLite-V2 backbone's feature maps at 320, bf16 0.05–0.36.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from mobilenets.bench.timing import BenchResult

FP32_TOLERANCE = 1e-4
REDUCED = ("bf16", "fp16", "int8")
CONFIDENT_AGREEMENT = 0.99
MIN_CONFIDENT = 8
REL_ERROR_BOUND = 1.0
RATIO_GOAL = 0.9
EAGER_GOAL = 1.0
MOONSHOT_MS = 1.0


def accuracy_gate(row: BenchResult) -> str | None:
    """None where ``row`` may stand in its precision class, else why not."""
    if row.precision == "fp32":
        if not row.ours:
            return None  # a peer's true-fp32 row (other weights, as timm's, cannot be compared)
        tolerance = FP32_TOLERANCE * max(1.0, row.reference_max_abs or 1.0)
        if row.max_abs_diff is None or row.max_abs_diff > tolerance:
            return f"max abs diff {row.max_abs_diff} vs eager exceeds {tolerance:.3g}"
        return None
    if row.precision not in REDUCED:
        return f"precision {row.precision!r} is in no class"
    if row.rel_error is None:
        return "not compared with our eager model"
    if row.confident is not None and row.confident >= MIN_CONFIDENT:
        agreement = row.confident_agreement or 0.0
        if agreement < CONFIDENT_AGREEMENT:
            return f"top-1 agreement {agreement:.3f} on {row.confident} confident photos < {CONFIDENT_AGREEMENT}"
        return None
    if row.rel_error >= REL_ERROR_BOUND:
        return f"relative error {row.rel_error:.3f} >= {REL_ERROR_BOUND} (no confident predictions to compare)"
    return None


def _fastest(rows: list[BenchResult]) -> BenchResult | None:
    return min(rows, key=lambda r: r.batch1_ms_median, default=None)


def _ratio(a: BenchResult | None, b: BenchResult | None, goal: float, klass: str) -> dict[str, Any]:
    value = a.batch1_ms_median / b.batch1_ms_median if a and b else None
    report: dict[str, Any] = {
        "class": klass,
        "ours": a.name if a else None,
        "ours_precision": a.precision if a else None,
        "ours_ms": a.batch1_ms_median if a else None,
        "peer": b.name if b else None,
        "peer_precision": b.precision if b else None,
        "peer_ms": b.batch1_ms_median if b else None,
        "ratio": value,
        "goal": goal,
        "met": value is not None and value <= goal,
    }
    # The same two paths' ratio within each interleaved round (timed seconds apart): how much the ratio moves
    # while one run lasts, beside how far it is from the goal.
    if a and b and a.batch1_ms_round_medians and len(a.batch1_ms_round_medians) == len(b.batch1_ms_round_medians):
        per_round = [x / y for x, y in zip(a.batch1_ms_round_medians, b.batch1_ms_round_medians, strict=True)]
        deciles = statistics.quantiles(per_round, n=10, method="inclusive") if len(per_round) > 1 else per_round * 9
        report["rounds"] = {"median": statistics.median(per_round), "p10": deciles[0], "p90": deciles[-1],
                            "met": sum(r <= goal for r in per_round), "of": len(per_round)}  # fmt: skip
    return report


def goal_ratios(results: list[BenchResult], isa: Mapping[str, bool | None] | None = None) -> dict[str, Any]:
    """The goals of one model's rows (see the module docstring); ``isa``: the host's flags (``host.cpu_info``),
    which decide whether the moonshot applies. Rows left out of a class by the accuracy gate are listed with why."""
    excluded = {r.name: why for r in results if (why := accuracy_gate(r)) is not None}
    admitted = [r for r in results if r.name not in excluded]
    fp32 = [r for r in admitted if r.precision == "fp32"]
    reduced = [r for r in admitted if r.precision in REDUCED]
    eager = [r for r in admitted if r.runtime == "pytorch eager"]
    goals: dict[str, Any] = {
        "fp32": _ratio(_fastest([r for r in fp32 if r.ours]), _fastest([r for r in fp32 if not r.ours]),
                       RATIO_GOAL, "fp32"),
        "reduced": _ratio(_fastest([r for r in reduced if r.ours]), _fastest([r for r in reduced if not r.ours]),
                          RATIO_GOAL, "bf16/int8"),
        "eager": _ratio(_fastest([r for r in eager if r.ours]), _fastest([r for r in eager if not r.ours]),
                        EAGER_GOAL, "pytorch eager"),
    }  # fmt: skip
    amx = bool(isa and isa.get("amx_tile"))
    best = _fastest([r for r in admitted if r.ours])
    goals["moonshot"] = {
        "applies": amx,
        "ours": best.name if best else None,
        "ours_precision": best.precision if best else None,
        "ours_ms": best.batch1_ms_median if best else None,
        "goal_ms": MOONSHOT_MS,
        "met": amx and best is not None and best.batch1_ms_median <= MOONSHOT_MS,
    }
    if not amx:
        goals["moonshot"]["reason"] = "judged only on a host with AMX (amx_tile absent or unknown)"
    goals["excluded"] = excluded
    return goals


def verdict_lines(goals: Mapping[str, Any]) -> list[str]:
    """One line per goal, as the command prints them."""
    lines = []
    for key in ("fp32", "reduced", "eager"):
        g = goals[key]
        shown = "n/a" if g["ratio"] is None else f"{g['ratio']:.2f}"
        verdict = "no peer to compare with" if g["ratio"] is None else "met" if g["met"] else "not met"
        line = f"goal {key} ({g['class']}): {g['ours']} / {g['peer']} = {shown} (goal <= {g['goal']}: {verdict})"
        if (rounds := g.get("rounds")) is not None:
            line += f"; per round {rounds['median']:.2f} (p10-p90 {rounds['p10']:.2f}-{rounds['p90']:.2f})"
            line += f", met in {rounds['met']} of {rounds['of']}"
        lines.append(line)
    m = goals["moonshot"]
    if m["applies"]:
        ms = "n/a" if m["ours_ms"] is None else f"{m['ours_ms']:.2f} ms"
        lines.append(f"moonshot: {m['ours']} {ms} (goal <= {m['goal_ms']} ms: {'met' if m['met'] else 'not met'})")
    else:
        lines.append(f"moonshot: not judged ({m['reason']})")
    for name, why in goals["excluded"].items():
        lines.append(f"  left out of its class: {name}: {why}")
    return lines

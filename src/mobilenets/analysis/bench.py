"""One CPU benchmark, our execution paths and peer runtimes side by side, in one process and one run.

Every path runs the same weights. Random initialisation leaves BatchNorm as the identity and activations that
shrink layer after layer into denormal floats, which CPUs process tens of times slower; so, unless a trained
checkpoint is given, BatchNorm statistics are re-estimated on real photographs (scikit-image's CC0 images)
before anything is timed, and denormals are flushed to zero. Latency is batch 1 (median and p90 over ``runs``
calls after warm-up); throughput is batch 32. Compare paths as ratios within one run: absolute numbers depend on
what else the machine is doing.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from mobilenets.analysis.memtrace import peak_activation_bytes
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.errors import ConfigError

# timm's name of the same architecture (width 1.0), for the peer eager row.
TIMM_NAMES = {
    "mobilenet_v1": "mobilenetv1_100",
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
}
SPLIT_GROUPS = 4

T = TypeVar("T")


@dataclass
class BenchResult:
    name: str
    ours: bool
    precision: str  # fp32 | int8
    batch1_ms_median: float
    batch1_ms_p90: float
    batch32_img_s: float
    max_abs_diff: float | None  # vs our eager model, batch 1 (None: a different model, e.g. timm's)
    peak_activation_bytes: int | None  # live activations in one batch-1 forward (PyTorch eager paths only)
    note: str = ""
    # the batch-1 median of each interleaved round, in round order: ratios between paths per round
    batch1_ms_round_medians: list[float] = field(default_factory=list)


def real_images(resolution: int, count: int = 32, seed: int = 0) -> torch.Tensor:
    """``count`` random crops of scikit-image's bundled photographs (or matplotlib's sample), ImageNet-normalised."""
    photos = _photos()
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[1:]
        side = int(min(h, w) * (0.5 + 0.5 * torch.rand(1, generator=g).item()))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = img[:, top : top + side, left : left + side].unsqueeze(0)
        crop = nn.functional.interpolate(crop, size=(resolution, resolution), mode="bilinear", antialias=True)
        out.append((crop[0] - mean) / std)
    return torch.stack(out)


def _photos() -> list[torch.Tensor]:
    arrays: list[np.ndarray] = []
    try:
        from skimage import data

        arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    except ImportError:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            arrays = [np.asarray(Image.open(f).convert("RGB"))]
    return [torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float() / 255 for a in arrays]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 8) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` (cumulative average), then eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for chunk in images.split(batch):
        model(chunk)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def p90(times: list[float]) -> float:
    """The 90th percentile of ``times`` (the value at index ⌊0.9·n⌋ of the sorted list, capped at the last)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass
class Candidate:
    """One execution path to time: ``predict`` maps a batch to logits."""

    name: str
    ours: bool
    precision: str
    predict: Callable[[torch.Tensor], torch.Tensor]
    compare: bool = True  # same weights as our eager model: report the max abs difference
    model_for_memory: nn.Module | None = None
    activation_bytes: int | None = None  # known without tracing (the fused engine's scratch)
    note: str = ""


def round_order(items: list[T], r: int) -> list[T]:
    """The order of round ``r``: reversed every other round, so that no path always runs first or last (measured in
    the training benchmark: always first cost ours 3–8 % in every run)."""
    return items if r % 2 == 0 else items[::-1]


def interleaved_times(
    calls: dict[str, Callable[[], object]], runs: int, rounds: int, pause_s: float = 0.2
) -> dict[str, list[list[float]]]:
    """Milliseconds of ``runs`` calls of each entry, spread over ``rounds`` round-robin passes (each block: a sleep
    of ``pause_s``, 2 untimed calls, then its share of the timed ones), as one list per pass; see
    :func:`measure_interleaved`. Each pass runs in the reverse order of the one before (:func:`round_order`)."""
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    times: dict[str, list[list[float]]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in round_order(list(calls), r):
            time.sleep(pause_s)
            times[name].append(time_calls(calls[name], per_round[r], warmup=2))
    return times


def pooled(rounds: list[list[float]]) -> list[float]:
    """The times of every round of :func:`interleaved_times` in one list."""
    return [t for round_times in rounds for t in round_times]


def measure_interleaved(
    candidates: list[Candidate],
    x1: torch.Tensor,
    x32: torch.Tensor,
    reference: torch.Tensor,
    runs: int,
    batch32_runs: int,
    rounds: int = 5,
    log: Callable[[str], None] = print,
    pause_s: float = 0.2,
) -> list[BenchResult]:
    """Time every path in ``rounds`` round-robin passes (each pass: 2 untimed calls, then its share of ``runs``
    timed batch-1 calls; then one timed batch-32 call per path and round), so that a change in machine load
    during the run falls on all paths alike instead of on whichever ran last. Before each block the process
    sleeps ``pause_s``: the previous runtime's worker threads spin-wait for a while after their last call, and on a
    2-core machine that spinning would be charged to the next runtime (measured: ONNX Runtime fp32 8.3 ms right after
    PyTorch paths without the pause, 5.2 ms when it ran on its own)."""
    b32: dict[str, list[float]] = {c.name: [] for c in candidates}
    diffs: dict[str, float | None] = {}
    with torch.no_grad():
        for c in candidates:
            diffs[c.name] = float((c.predict(x1) - reference).abs().max()) if c.compare else None
            time_calls(lambda c=c: c.predict(x1), 0, warmup=max(3, runs // 10))
            time_calls(lambda c=c: c.predict(x32), 0, warmup=1)
        calls = {c.name: (lambda c=c: c.predict(x1)) for c in candidates}
        b1 = interleaved_times(calls, runs, rounds, pause_s)
        for r in range(batch32_runs):
            for c in round_order(candidates, r):
                time.sleep(pause_s)
                b32[c.name] += time_calls(lambda c=c: c.predict(x32), 1, warmup=0)
    results = []
    for c in candidates:
        times = pooled(b1[c.name])
        peak = peak_activation_bytes(c.model_for_memory, x1) if c.model_for_memory is not None else c.activation_bytes
        result = BenchResult(
            c.name,
            c.ours,
            c.precision,
            statistics.median(times),
            p90(times),
            len(x32) * 1e3 / statistics.median(b32[c.name]),
            diffs[c.name],
            peak,
            c.note,
            [statistics.median(round_times) for round_times in b1[c.name]],
        )
        log(f"  {result.name:34s} {result.batch1_ms_median:8.2f} ms  {result.batch32_img_s:8.1f} img/s")
        results.append(result)
    return results


def _import_timm() -> Any:
    # timm imports torchvision, whose CUDA wheel cannot load here; its two custom ops are all timm's import needs.
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm

    return timm


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "timm", "onnx"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = "not installed"
    return versions


def run_bench(
    model_name: str = "mobilenet_v2",
    resolution: int = 224,
    threads: int = 2,
    runs: int = 50,
    batch32_runs: int = 3,
    checkpoint: str | None = None,
    peers: bool = True,
    log: Callable[[str], None] = print,
    compile_path: bool = False,
    rounds: int = 5,
) -> dict[str, Any]:
    """Benchmark ``model_name`` through every available path; returns the JSON-ready report."""
    from mobilenets.deploy.export import export_onnx, ort_session, quantize_onnx, run_onnx
    from mobilenets.deploy.fold import compile_for_inference, fold_batchnorm, optimize_for_inference
    from mobilenets.deploy.split import split_model
    from mobilenets.registry import create_model

    if runs < 1 or batch32_runs < 1 or threads < 1:
        raise ConfigError(f"runs, batch32_runs and threads must be >= 1 (got {runs}, {batch32_runs}, {threads})")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    images = real_images(resolution, 64)
    if checkpoint:
        model = create_model(model_name, weights=checkpoint).eval()
    else:
        torch.manual_seed(0)
        model = recalibrate_batchnorm(create_model(model_name), images)
    in_chans = model.config.in_chans
    # Copies, not views: the memory tracer counts a view's whole storage (all 64 images).
    x1 = images[:1, :in_chans].clone()
    x32 = images[:32, :in_chans].clone()
    with torch.no_grad():
        reference = model(x1)
    notes: list[str] = []
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    split = split_model(model, SPLIT_GROUPS)
    candidates = [
        Candidate("ours eager", True, "fp32", model, model_for_memory=model),
        Candidate(
            "ours BN-folded channels_last",
            True,
            "fp32",
            lambda x: folded(x.contiguous(memory_format=torch.channels_last)),
            model_for_memory=folded,
        ),
        Candidate(
            "ours frozen TorchScript",
            True,
            "fp32",
            optimize_for_inference(model, x1),
            note="BN folded, channels_last, jit.freeze",
        ),
    ]
    candidates += _fused_candidates(model, threads, resolution, list(images[32:].split(8)), notes)
    if compile_path:
        compiled = compile_for_inference(model, x1)
        candidates.append(
            Candidate("ours torch.compile", True, "fp32", compiled, note="BN folded, channels_last, Inductor freezing")
        )
    candidates.append(Candidate(f"ours §5.1 split t={SPLIT_GROUPS}", True, "fp32", split, model_for_memory=split))

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(model, Path(tmp) / "plain.onnx", resolution, fold=False)
        int8_path = quantize_onnx(fp32_path, Path(tmp) / "int8.onnx", list(images[32:].split(8)))
        session, session8 = ort_session(fp32_path, threads), ort_session(int8_path, threads)
        candidates.append(
            Candidate("onnxruntime fp32", False, "fp32", lambda x: run_onnx(session, x), note="plain export")
        )
        candidates.append(
            Candidate(
                "onnxruntime int8",
                False,
                "int8",
                lambda x: run_onnx(session8, x),
                note="QDQ, per-channel, calibrated on photos",
            )
        )
        if peers:
            candidates += _openvino_candidates(fp32_path, int8_path, threads, notes)
            candidates += _timm_candidates(model_name, images, notes)
        log(
            f"timing {len(candidates)} paths in interleaved rounds ({runs} batch-1 calls, {batch32_runs} batch-32 each)"
        )
        results = measure_interleaved(candidates, x1, x32, reference, runs, batch32_runs, rounds, log=log)
    return {
        "model": model_name,
        "resolution": resolution,
        "threads": threads,
        "runs": runs,
        "rounds": rounds,
        "batch32_runs": batch32_runs,
        "weights": checkpoint or "random init, BatchNorm re-estimated on real photos",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            # PASSIVE (good for training on a shared machine) made batch-1 PyTorch paths 2-3x slower here
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        },
        "versions": _versions(),
        "notes": notes,
        "results": [asdict(r) for r in results],
        "goals": goal_ratios(results),
    }


def _fused_candidates(
    model: nn.Module, threads: int, resolution: int, calibration: list[torch.Tensor], notes: list[str]
) -> list[Candidate]:
    from mobilenets.deploy.fused import FusedEngine
    from mobilenets.errors import MobilenetsError

    try:
        engine = FusedEngine(model, threads)
        engine8 = FusedEngine(model, threads, calibration=calibration)
    except MobilenetsError as e:  # not a V1/V2/minimal-V3 classifier, or no compiler / AVX2
        notes.append(f"fused engine skipped: {e}")
        return []
    note = "C++ AVX2: BN folded, row-streamed inverted residuals, one parallel region"
    note8 = "int8 1x1 convs (7-bit codes x 7-bit per-channel weights, calibrated on the photos), fp32 depthwise"
    return [
        Candidate("ours fused engine", True, "fp32", engine, note=note,
                  activation_bytes=engine.activation_bytes(resolution, resolution)),
        Candidate("ours fused engine int8", True, "int8", engine8, compare=False, note=note8,
                  activation_bytes=engine8.activation_bytes(resolution, resolution)),
    ]  # fmt: skip


def goal_ratios(results: list[BenchResult], tolerance: float = 1e-4) -> dict[str, Any]:
    """The issue's three latency goals as ratios of batch-1 medians in this run: our fastest fp32 path within
    ``tolerance`` of eager over the fastest peer fp32 runtime (goal ≤ 0.9), our fastest int8 path over that peer
    (≤ 0.5), our eager model over timm's (≤ 1.0). A ratio is None when a side is missing from the run.

    Beside each ratio, ``rounds``: the same two paths' ratio within each interleaved round (both timed seconds
    apart), as its median, 10th and 90th percentiles and the number of rounds meeting the goal — how far this run's
    ratio is from the goal compared with how much it moves while the run lasts."""

    def fastest(rows: list[BenchResult]) -> BenchResult | None:
        return min(rows, key=lambda r: r.batch1_ms_median, default=None)

    exact = [r for r in results if r.max_abs_diff is not None and r.max_abs_diff <= tolerance]
    ours_fp32 = fastest([r for r in exact if r.ours and r.precision == "fp32"])
    peer_fp32 = fastest([r for r in results if not r.ours and r.precision == "fp32"])
    ours_int8 = fastest([r for r in results if r.ours and r.precision == "int8"])
    ours_eager = next((r for r in results if r.name == "ours eager"), None)
    timm_eager = next((r for r in results if r.name.startswith("timm ")), None)

    def ratio(a: BenchResult | None, b: BenchResult | None, goal: float) -> dict[str, Any]:
        value = a.batch1_ms_median / b.batch1_ms_median if a and b else None
        report = {"ours": a.name if a else None, "peer": b.name if b else None, "ratio": value, "goal": goal,
                  "met": value is not None and value <= goal}  # fmt: skip
        if a and b and a.batch1_ms_round_medians and len(a.batch1_ms_round_medians) == len(b.batch1_ms_round_medians):
            per_round = [x / y for x, y in zip(a.batch1_ms_round_medians, b.batch1_ms_round_medians, strict=True)]
            deciles = statistics.quantiles(per_round, n=10, method="inclusive") if len(per_round) > 1 else per_round * 9
            report["rounds"] = {"median": statistics.median(per_round), "p10": deciles[0], "p90": deciles[-1],
                                "met": sum(r <= goal for r in per_round), "of": len(per_round)}  # fmt: skip
        return report

    return {
        "fp32": ratio(ours_fp32, peer_fp32, 0.9),
        "int8": ratio(ours_int8, peer_fp32, 0.5),
        "eager": ratio(ours_eager, timm_eager, 1.0),
    }


def _openvino_candidates(fp32_path: Path, int8_path: Path, threads: int, notes: list[str]) -> list[Candidate]:
    try:
        import openvino as ov
    except ImportError:
        notes.append("openvino not installed: its rows are skipped (pip install openvino)")
        return []
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    out = []
    for path, precision in ((fp32_path, "fp32"), (int8_path, "int8")):
        request = core.compile_model(str(path), "CPU", config).create_infer_request()

        def predict(x: torch.Tensor, request: Any = request) -> torch.Tensor:
            return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

        note = "plain export" if precision == "fp32" else "the ONNX Runtime QDQ model"
        out.append(Candidate(f"openvino {precision}", False, precision, predict, note=note))
    return out


def _timm_candidates(model_name: str, images: torch.Tensor, notes: list[str]) -> list[Candidate]:
    if model_name not in TIMM_NAMES:
        notes.append(f"no timm counterpart registered for {model_name}")
        return []
    try:
        timm = _import_timm()
    except Exception as e:
        notes.append(f"timm unavailable ({e}): its row is skipped")
        return []
    torch.manual_seed(0)
    peer = recalibrate_batchnorm(timm.create_model(TIMM_NAMES[model_name]), images)
    note = "own random weights, BN re-estimated on the same photos"
    return [Candidate(f"timm {TIMM_NAMES[model_name]} eager", False, "fp32", peer, False, peer, note)]


def plot_bench(report: dict[str, Any], path: str | Path) -> None:
    """A horizontal bar chart of batch-1 median latency, ours and peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["results"], key=lambda r: r["batch1_ms_median"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    colors = ["tab:blue" if r["ours"] else "tab:gray" for r in rows]
    ax.barh([f"{r['name']} ({r['precision']})" for r in rows], [r["batch1_ms_median"] for r in rows], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("batch-1 latency, median (ms)")
    ax.set_title(f"{report['model']} @ {report['resolution']}, {report['threads']} threads (blue: ours)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

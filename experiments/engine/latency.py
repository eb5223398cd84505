"""Batch-1 latency of MobileNetV2 1.0 @ 224 (2 threads): the fused engine at each ISA level and precision against
ONNX Runtime and OpenVINO at each of theirs, every path interleaved in one process (docs/engine.md).

Weights: random initialisation with BatchNorm statistics re-estimated on photo crops (``bench.photos``), so that
activations are those of a trained-like network (no denormals); int8 paths are calibrated on 32 other crops. Each
round times ``--calls`` back-to-back calls of every path in turn; the figures are the medians and p10–p90 over all
calls, and the ratios are those of the medians within this one run (other people share this machine: compare
figures only within a run). Also printed: top-1 agreement of each path with eager fp32 on 64 crops, the load
average and the CPU's ISA flags.

    python experiments/engine/latency.py                 # about three minutes
    python experiments/engine/latency.py --rounds 10 --calls 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.deploy import fused

Predict = Callable[[torch.Tensor], torch.Tensor]


def onnx_paths(model: torch.nn.Module, tmp: Path, calibration: torch.Tensor) -> tuple[Path, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prep, int8 = tmp / "v2.onnx", tmp / "v2.prep.onnx", tmp / "v2.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (calibration[:1],), str(fp32), input_names=["images"], output_names=["logits"],
                          opset_version=17, dynamo=False)  # fmt: skip

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": x[None].numpy()} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return fp32, int8


def peers(fp32: Path, int8: Path, threads: int) -> dict[str, Predict]:
    import onnxruntime as ort
    import openvino as ov

    out: dict[str, Predict] = {}
    for label, path in (("onnxruntime fp32", fp32), ("onnxruntime int8 (QDQ)", int8)):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[label] = lambda x, s=session: torch.from_numpy(s.run(None, {"images": x.numpy()})[0])
    core = ov.Core()
    for label, path, hint in (("openvino f32", fp32, "f32"), ("openvino default (bf16)", fp32, None),
                              ("openvino int8 (QDQ)", int8, None)):  # fmt: skip
        config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = core.compile_model(str(path), "CPU", config)
        hint_type = compiled.get_property("INFERENCE_PRECISION_HINT")
        actual = hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else str(hint_type)
        label = label.replace("(bf16)", f"({actual})") if hint is None and "int8" not in label else label
        request = compiled.create_infer_request()
        out[label] = lambda x, r=request: torch.from_numpy(r.infer({0: x.numpy()})[0].copy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between paths")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = recalibrate_batchnorm(create_model("mobilenet_v2"), real_images(224, 64, seed=0)).eval()
    calibration = real_images(224, 32, seed=1)
    photos = real_images(224, 64, seed=2)
    paths: dict[str, Predict] = {}
    for isa in fused.supported_isas()[::-1]:
        paths[f"ours fp32 [{isa}]"] = fused.FusedEngine(model, threads=args.threads, isa=isa)
    for isa in fused.supported_isas()[::-1]:
        batches = list(calibration.split(8))
        paths[f"ours int8 [{isa}]"] = fused.FusedEngine(model, threads=args.threads, calibration=batches, isa=isa)
    for isa in fused.bf16_isas()[::-1]:
        paths[f"ours bf16 [{isa}]"] = fused.FusedEngine(model, threads=args.threads, precision="bf16", isa=isa)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_peers:
            paths.update(peers(*onnx_paths(model, Path(tmp), calibration), args.threads))
        x = photos[:1].contiguous()
        with torch.no_grad():
            reference = model(photos)
        for name, predict in paths.items():  # agreement with eager fp32 on the photos, and warm-up
            got = torch.cat([predict(p[None].contiguous()) for p in photos])
            agree = float((got.argmax(1) == reference.argmax(1)).float().mean())
            print(f"{name:28s} top-1 agreement with eager fp32 {agree:6.1%}  max |Δlogit| "
                  f"{float((got - reference).abs().max()):.2e}")  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, predict in paths.items():
                time.sleep(args.pause)  # the previous path's spinning threads sleep (ours spin 20 ms)
                predict(x)
                for _ in range(args.calls):
                    start = time.perf_counter()
                    predict(x)
                    times[name].append((time.perf_counter() - start) * 1e3)
    print(f"\nMobileNetV2 1.0 @ 224, batch 1, {args.threads} threads, {args.rounds} rounds × {args.calls} calls; "
          f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f}")  # fmt: skip
    flags = fused.cpu_flags()
    print("CPU flags:", " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                                 if f in flags))  # fmt: skip
    medians, p10s = {}, {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        medians[name], p10s[name] = statistics.median(ts), q[0]
        print(f"{name:28s} median {medians[name]:6.3f} ms   p10–p90 {q[0]:.3f}–{q[-1]:.3f}")

    def best(prefix: str, keys: list[str]) -> tuple[str, float] | None:
        found = [(k, medians[k]) for k in medians if k.startswith(prefix) and any(s in k for s in keys)]
        return min(found, key=lambda kv: kv[1]) if found else None

    ours_fp32, ours_reduced = best("ours", ["fp32"]), best("ours", ["int8", "bf16"])
    peer_fp32 = best("onnxruntime fp32", [""]) or None
    ov_f32 = best("openvino f32", [""])
    peer_fp32 = min([p for p in (peer_fp32, ov_f32) if p], key=lambda kv: kv[1], default=None)
    peer_reduced = min([p for p in (best("openvino", ["bf16", "int8"]), best("onnxruntime", ["int8"])) if p],
                       key=lambda kv: kv[1], default=None)  # fmt: skip
    for label, ours, peer, goal in (("fp32", ours_fp32, peer_fp32, 0.9), ("reduced", ours_reduced, peer_reduced, 0.9)):
        if ours and peer:
            ratio = ours[1] / peer[1]
            print(f"  (the same two paths' p10 ratio: {p10s[ours[0]] / p10s[peer[0]]:.2f})")
            print(
                f"goal {label}: {ours[0]} / {peer[0]} = {ratio:.2f} (≤ {goal}: {'met' if ratio <= goal else 'not met'})"
            )
    if ours_reduced:
        print(f"moonshot ≤ 1.0 ms: {ours_reduced[0]} {ours_reduced[1]:.3f} ms")


if __name__ == "__main__":
    main()

"""What glibc's mmap-per-large-block costs a CPU training step, and what ``keep_freed_memory`` gives back.

Each configuration runs in its own fresh process (``mallopt`` is process-wide and cannot be undone), alternating
plain / kept, for ``--rounds`` rounds: SSDLite or LR-ASPP on MobileNetV2, random images, forward + backward + AdamW
step, median step time over ``--steps`` steps after two warm-up steps, and minor page faults per step::

    python experiments/training/allocator_check.py --model ssdlite_mobilenet_v2 --resolution 192 224 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _step_stats(model_name: str, resolution: int, batch: int, steps: int, threads: int, keep: bool) -> dict:
    import torch

    from mobilenets.engine.allocator import keep_freed_memory
    from mobilenets.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kept = keep_freed_memory() if keep else False
    model = create_model(model_name, width=0.5, num_classes=11).train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        out = model(x)
        tensors = out.values() if isinstance(out, dict) else [out]
        loss = sum(t.float().square().mean() for t in tensors if t.requires_grad)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    step(), step()
    times, faults = [], []
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"kept": kept, "step_ms": 1000 * statistics.median(times), "faults_per_step": statistics.median(faults)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ssdlite_mobilenet_v2")
    p.add_argument("--resolution", type=int, nargs="+", default=[192, 224, 256])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("RESOLUTION", "KEEP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res, keep = int(args.child[0]), args.child[1] == "1"
        print(json.dumps(_step_stats(args.model, res, args.batch_size, args.steps, args.threads, keep)))
        return
    rows = []
    for res in args.resolution:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--threads", str(args.threads),
                       "--child", str(res), str(int(keep))]  # fmt: skip
                runs[keep].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        plain = statistics.median(r["step_ms"] for r in runs[False])
        kept = statistics.median(r["step_ms"] for r in runs[True])
        rows.append({
            "resolution": res,
            "plain_step_ms": round(plain, 1),
            "kept_step_ms": round(kept, 1),
            "speedup": round(plain / kept, 2),
            "plain_faults_per_step": statistics.median(r["faults_per_step"] for r in runs[False]),
            "kept_faults_per_step": statistics.median(r["faults_per_step"] for r in runs[True]),
            "glibc_took_it": all(r["kept"] for r in runs[True]),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"{args.model}, batch {args.batch_size}, channels_last, {args.threads} threads:")
    print(" input  plain ms  kept ms  speed-up  faults/step plain / kept")
    for r in rows:
        print(f"{r['resolution']:6d}  {r['plain_step_ms']:8.1f}  {r['kept_step_ms']:7.1f}  {r['speedup']:8.2f}  "
              f"{r['plain_faults_per_step']:>11.0f} / {r['kept_faults_per_step']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Where the fused engine's time goes, layer by layer: thread 0's `rdtsc` time per program layer, and inside each
block that streams rows without squeeze-excite, its expansion (the window's new rows), depthwise and projection; in
each block run on the whole map (threads sharing its channel panels), its expansion, depthwise and projection and,
under "wait", thread 0's wait at the barrier between the depthwise and the projection.

The engine carries no timers. This script copies the installed package to a temporary folder, puts them into that
copy's ``graph.cpp``, ``blocks.h`` and ``blocks.cpp`` (text insertions at marked places; it stops with a message
where the sources no longer have them) and runs the copy in a child process: batch 1 at 224 px, BatchNorm
re-estimated on the benchmark's photos, ``--calls`` calls (the first ones warm it up and are counted too). Times are
µs per image at the TSC frequency of /proc/cpuinfo (``--tsc-mhz`` overrides). The row "pre" holds what came before
the walk's first layer (a thread alone: the chain of streamed layers); a stem fused with the first block is the
stem's row.

    python experiments/engine/layer_times.py --model mobilenet_v2 --precision int8 --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mobilenets

HEADER = """// Timers for experiments/engine/layer_times.py (not part of the engine).
#pragma once
#include <x86intrin.h>
#include <cstdio>
#include <cstdlib>
namespace mn {
struct LayerTimes {
  double layer[256] = {0};
  double part[256][4] = {{0}};
  long images = 0;
  ~LayerTimes() {
    const double mhz = std::atof(std::getenv("MN_TSC_MHZ"));
    for (int i = 0; i < 256; ++i)
      if (layer[i] > 0)
        std::fprintf(stderr, "LAYER %d %.1f %.1f %.1f %.1f %.1f\\n", i, layer[i] / images / mhz,
                     part[i][0] / images / mhz, part[i][1] / images / mhz, part[i][2] / images / mhz,
                     part[i][3] / images / mhz);
  }
};
inline LayerTimes layer_times;
inline int timed_layer = 0;  // written and read by thread 0 only
inline thread_local int timed_thread = -1;
}  // namespace mn
"""

# (file, text found exactly once, what replaces it)
EDITS = [
    # Whole-map blocks: each panel chunk's expansion and depthwise, the barrier before the projection, the projection.
    (
        "blocks.cpp",
        "    if (L.has_expand) {\n      // Each thread quantises",
        "    const unsigned long long w0 = __rdtsc();\n    if (L.has_expand) {\n      // Each thread quantises",
    ),
    (
        "blocks.cpp",
        "    const int c0 = 16 * p0, c1 = std::min(E, 16 * p1);\n    const float* rows[5];",
        "    const unsigned long long w1 = __rdtsc();\n"
        "    const int c0 = 16 * p0, c1 = std::min(E, 16 * p1);\n    const float* rows[5];",
    ),
    (
        "blocks.cpp",
        "    if (L.se_channels) channel_sums(",
        "    if (timed_thread == 0) {\n      double* p = layer_times.part[timed_layer];\n"
        "      p[0] += w1 - w0, p[1] += __rdtsc() - w1;\n    }\n"
        "    if (L.se_channels) channel_sums(",
    ),
    (
        "blocks.cpp",
        "  me.wait();\n  Share projection(",
        "  const unsigned long long w2 = __rdtsc();\n  me.wait();\n  const unsigned long long w3 = __rdtsc();\n"
        "  Share projection(",
    ),
    (
        "blocks.cpp",
        "            L.cout, L.act_out, p0, p1, qrow);\n}",
        "            L.cout, L.act_out, p0, p1, qrow);\n"
        "  if (timed_thread == 0) {\n    double* p = layer_times.part[timed_layer];\n"
        "    p[3] += w3 - w2, p[2] += __rdtsc() - w3;\n  }\n}",
    ),
    ("graph.cpp", '#include "graph.h"\n', '#include "graph.h"\n#include "layer_times.h"\n'),
    (
        "graph.cpp",
        "  for (; i < n_layers; ++i) {\n",
        "  unsigned long long t0 = __rdtsc();\n"
        "  int timing = 255;  // the layer whose time runs: 255, what came before\n"
        "  timed_thread = t;\n  if (t == 0) layer_times.images++;\n"
        "  for (; i < n_layers; ++i) {\n"
        "    if (t == 0) {\n      const unsigned long long t1 = __rdtsc();\n"
        "      layer_times.layer[timing] += t1 - t0;\n      t0 = t1;\n      timing = timed_layer = i;\n    }\n",
    ),
    (
        "graph.cpp",
        "      me.wait();\n      return;",
        "      me.wait();\n      if (t == 0) layer_times.layer[i] += __rdtsc() - t0;\n      return;",
    ),
    ("blocks.h", "#pragma once\n", '#pragma once\n#include "layer_times.h"\n'),
    (
        "blocks.h",
        "    window.rows(y, rows);\n    // An int8",
        "    const unsigned long long a0 = __rdtsc();\n    window.rows(y, rows);\n"
        "    const unsigned long long a1 = __rdtsc();\n    // An int8",
    ),
    (
        "blocks.h",
        "    conv1x1(L.out, Wo, L.cout, E, window.dw,",
        "    const unsigned long long a2 = __rdtsc();\n    conv1x1(L.out, Wo, L.cout, E, window.dw,",
    ),
    (
        "blocks.h",
        "            L.cout, L.act_out, 0, panels(L.cout), qrow);\n  }\n}",
        "            L.cout, L.act_out, 0, panels(L.cout), qrow);\n"
        "    if (timed_thread == 0) {\n      double* p = layer_times.part[timed_layer];\n"
        "      const unsigned long long a3 = __rdtsc();\n"
        "      p[0] += a1 - a0, p[1] += a2 - a1, p[2] += a3 - a2;\n    }\n"
        "  }\n}",
    ),
]

CHILD = """
import sys, torch
from mobilenets import create_model
from mobilenets.bench.photos import real_images, recalibrate_batchnorm
from mobilenets.deploy import fused
name, precision, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = recalibrate_batchnorm(create_model(name).eval(), real_images(224, 16))
images = real_images(224, 24, seed=3)
kw = {"calibration": list(images[8:].split(8))} if precision == "int8" else {"precision": precision}
engine = fused.FusedEngine(model, threads=threads, **kw)
x = images[:1].contiguous()
for _ in range(calls):
    engine(x)
"""


def instrumented_copy(root: Path) -> None:
    """The installed package copied under root, with the timers in its engine sources."""
    shutil.copytree(Path(mobilenets.__file__).parent, root / "mobilenets", ignore=shutil.ignore_patterns("__pycache__"))
    csrc = root / "mobilenets" / "deploy" / "csrc"
    (csrc / "layer_times.h").write_text(HEADER)
    for name, old, new in EDITS:
        path = csrc / name
        text = path.read_text()
        if text.count(old) != 1:
            sys.exit(f"{name}: the place to time ({old.strip().splitlines()[0]!r}) is not there exactly once")
        path.write_text(text.replace(old, new))


def tsc_mhz() -> float:
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    if not match:
        sys.exit("no 'cpu MHz' in /proc/cpuinfo: give --tsc-mhz")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--tsc-mhz", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        instrumented_copy(Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp, MN_TSC_MHZ=str(args.tsc_mhz or tsc_mhz()),
                   MOBILENETS_CACHE=str(Path(tmp) / "cache"))  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, args.precision, str(args.threads), str(args.calls)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    rows = [line.split()[1:] for line in run.stderr.splitlines() if line.startswith("LAYER ")]
    if run.returncode or not rows:
        sys.exit(run.stderr[-2000:])
    print(f"{args.model} {args.precision}, {args.threads} threads: thread 0's µs per image")
    print(f"{'layer':>5} {'total':>8} {'expand':>8} {'dw':>8} {'project':>8} {'wait':>8}")
    total = 0.0
    for i, layer, *parts in rows:
        total += float(layer)
        cells = " ".join(f"{float(p):8.1f}" if float(p) else " " * 8 for p in parts)
        print(f"{'pre' if i == '255' else i:>5} {float(layer):8.1f} {cells}")
    print(f"{'sum':>5} {total:8.1f}")


if __name__ == "__main__":
    main()

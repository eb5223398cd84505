"""The engine's int8 GEMM and fp32 depthwise kernels alone, one thread, against this core's peak.

Compiles a small C++ harness with the engine's own sources (``gemm_int8.cpp``, ``depthwise.cpp``) at the ``avx512``
level (AVX-512 + VNNI; the CPU must have it) and prints:

- the peak: ``vpdpbusd`` (and, beside it, a 512-bit FMA) in twelve independent chains, instructions per second;
- ``gemm_int8`` at the shapes of MobileNetV2's row-streamed 1×1 convolutions at 224 px (M pixels of one row × N
  outputs × K inputs, and the head), GMAC/s and the share of the ``vpdpbusd`` peak (64 products each);
- the 3×3 / 5×5 depthwise row kernel on rows hot in L1 (the same rows every call), FMAs per ns, at V2's and V3's
  widths, with the pixel stride as the model has it and padded to 16 channels (64-byte-aligned pixels).

Medians of repeated calls; numbers move with the host's load, so compare within one run.

    python experiments/engine/kernel_rates.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mobilenets.deploy import fused

HARNESS = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "kernels.h"
#include "simd.h"
using namespace mn;
using Clock = std::chrono::steady_clock;

template <typename F> double median_seconds(int reps, int inner, F&& f) {
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    auto t = Clock::now();
    for (int i = 0; i < inner; ++i) f();
    ts.push_back(std::chrono::duration<double>(Clock::now() - t).count() / inner);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

#define DP(I) "vpdpbusd %[b], %[a], %[x" #I "]\n\t"
#define FM(I) "vfmadd231ps %[b], %[a], %[x" #I "]\n\t"
template <bool Fma> double peak() {  // instructions per second, twelve independent chains
  __m512i x0{}, x1{}, x2{}, x3{}, x4{}, x5{}, x6{}, x7{}, x8{}, x9{}, x10{}, x11{};
  const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01020304);
  const long n = 20000000;
  auto t = Clock::now();
  for (long k = 0; k < n; ++k) {
    if constexpr (Fma)
      asm volatile(FM(0) FM(1) FM(2) FM(3) FM(4) FM(5) FM(6) FM(7) FM(8) FM(9) FM(10) FM(11)
                   : [x0] "+v"(x0), [x1] "+v"(x1), [x2] "+v"(x2), [x3] "+v"(x3), [x4] "+v"(x4), [x5] "+v"(x5),
                     [x6] "+v"(x6), [x7] "+v"(x7), [x8] "+v"(x8), [x9] "+v"(x9), [x10] "+v"(x10), [x11] "+v"(x11)
                   : [a] "v"(a), [b] "v"(b));
    else
      asm volatile(DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7) DP(8) DP(9) DP(10) DP(11)
                   : [x0] "+v"(x0), [x1] "+v"(x1), [x2] "+v"(x2), [x3] "+v"(x3), [x4] "+v"(x4), [x5] "+v"(x5),
                     [x6] "+v"(x6), [x7] "+v"(x7), [x8] "+v"(x8), [x9] "+v"(x9), [x10] "+v"(x10), [x11] "+v"(x11)
                   : [a] "v"(a), [b] "v"(b));
  }
  return n * 12 / std::chrono::duration<double>(Clock::now() - t).count();
}

template <typename T> T* aligned(size_t n, T value) {
  T* p = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
  std::fill(p, p + n, value);
  return p;
}

int main() {
  const double dp = std::max(peak<false>(), peak<false>()), fma = std::max(peak<true>(), peak<true>());
  const double macs_peak = dp * 64;
  std::printf("peak: vpdpbusd %.2f G/s (%.0f GMAC/s), 512-bit FMA %.2f G/s\n", dp / 1e9, macs_peak / 1e9, fma / 1e9);
  const int shapes[][3] = {{112, 96, 16}, {56, 144, 24}, {56, 24, 144}, {28, 192, 32}, {28, 32, 192},
                           {14, 384, 64}, {14, 576, 96}, {14, 96, 576}, {49, 960, 160}, {49, 160, 960},
                           {49, 1280, 320}};
  std::printf("gemm_int8 (M x N x K): us, GMAC/s, share of the vpdpbusd peak\n");
  for (const auto& s : shapes) {
    const int M = s[0], N = s[1], K = s[2];
    uint8_t* A = aligned<uint8_t>(size_t(M) * K, 7);
    int8_t* q = aligned<int8_t>(size_t(panels(N)) * 16 * K, 3);
    float* scale = aligned<float>(N + 16, 0.01f);
    float* bias = aligned<float>(N + 16, 0.1f);
    int32_t* corr = aligned<int32_t>(N + 16, -5);
    float* C = aligned<float>(size_t(M) * N, 0.0f);
    MnConv cv{};
    cv.q = q, cv.scale = scale, cv.bias = bias, cv.corr = corr, cv.qmax = 255;
    const auto call = [&] { gemm_int8(M, N, K, A, K, cv, C, N, nullptr, 0, MN_RELU6, 0, panels(N)); };
    const double t = median_seconds(201, 50, call);
    const double rate = double(M) * N * K / t;
    std::printf("  %4d x %4d x %4d  %7.2f  %5.0f  %3.0f %%\n", M, N, K, t * 1e6, rate / 1e9, 100 * rate / macs_peak);
  }
  std::printf("depthwise row, rows hot in L1 (W x C, kernel): FMA/ns at the model's pixel stride, padded to 16\n");
  const int dws[][3] = {{56, 144, 3}, {112, 32, 3}, {28, 192, 3}, {28, 120, 5}, {14, 200, 3}, {56, 72, 3}};
  for (const auto& d : dws) {
    const int W = d[0], Cn = d[1], K = d[2];
    double rate[2];
    for (int padded = 0; padded < 2; ++padded) {
      const int step = padded ? (Cn + 15) / 16 * 16 : Cn;
      float* in = aligned<float>(size_t(K) * W * step, 0.5f);
      float* w = aligned<float>(size_t(25) * step, 0.1f);
      float* b = aligned<float>(step, 0.0f);
      float* o = aligned<float>(size_t(W) * step, 0.0f);
      const float* rows[5];
      for (int k = 0; k < K; ++k) rows[k] = in + size_t(k) * W * step;
      const Sink sink{o, nullptr, 1.0f, 0, 255, false};
      const auto call = [&] { depthwise_row(rows, K, 1, W, W, 1, step, w, b, sink, 0, Cn, MN_RELU6); };
      const double t = median_seconds(201, 20, call);
      rate[padded] = double(W) * Cn / 16 * K * K / t / 1e9;
    }
    std::printf("  %3d x %4d  %dx%d  %.2f  %.2f\n", W, Cn, K, K, rate[0], rate[1]);
  }
}
"""


def main() -> None:
    cxx = shutil.which("g++")
    if cxx is None:
        sys.exit("needs g++")
    level, needed, flags = fused.ISAS["avx512"]
    missing = sorted(set(needed) - fused.cpu_flags())
    if missing:
        sys.exit(f"this CPU lacks {', '.join(missing)}: the harness runs the avx512 level")
    csrc = Path(fused.__file__).parent / "csrc"
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "kernel_rates.cpp", Path(tmp) / "kernel_rates"
        source.write_text(HARNESS)
        build = [cxx, "-O3", *flags, f"-DMN_ISA={level}", "-std=c++17", f"-I{csrc}", str(source),
                 str(csrc / "gemm_int8.cpp"), str(csrc / "depthwise.cpp"), "-o", str(binary)]  # fmt: skip
        subprocess.run(build, check=True)
        subprocess.run([str(binary)], check=True)


if __name__ == "__main__":
    main()

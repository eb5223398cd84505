"""The engine's int8 GEMM and fp32 depthwise kernels alone, one thread, against this core's peak.

Compiles a small C++ harness with the engine's own sources (``gemm_int8.cpp``, ``depthwise.cpp``) at the ``avx512``
level (AVX-512 + VNNI; the CPU must have it) and prints:

- the peak: ``vpdpbusd`` (and, beside it, a 512-bit FMA) in twelve independent chains, instructions per second;
  where the CPU has AVX512-BF16, ``vdpbf16ps`` in 24 chains (the avx512 level's bf16 product);
- ``gemm_int8`` at the shapes of MobileNetV2's row-streamed 1×1 convolutions at 224 px (M pixels of one row × N
  outputs × K inputs, and the head), GMAC/s and the share of the ``vpdpbusd`` peak (64 products each);
- the 3×3 / 5×5 depthwise row kernel on rows hot in L1 (the same rows every call), FMAs per ns, at V2's and V3's
  widths, with the pixel stride as the model has it and padded to 16 channels (64-byte-aligned pixels).

With AVX512-FP16 (Sapphire Rapids and later), a second harness times a 3×3 depthwise row in fp16 arithmetic (32
lanes per FMA, fp16 rows: what the int8 path would run if its expansions wrote fp16) against the engine's fp32 row
kernel, both writing the int8 projection's codes, at MobileNetV2's depthwise shapes (output width × channels,
stride), on the same random rows; it prints both times, their ratio and how many codes differ (and by at most how
much). The fp16 kernel is this experiment's own: pre-padded rows, channels in 32-lane vectors with a masked tail.

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

# What both harnesses start with: the headers and the median of repeated timings.
PRELUDE = r"""
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
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
"""

HARNESS = (
    PRELUDE
    + r"""

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

// vdpbf16ps (two bf16 products per fp32 lane) in 24 independent chains: its latency on Intel is long enough that
// twelve chains under-measure it. Run only where the CPU has avx512_bf16 (main's argument says so).
#define BF(I) "vdpbf16ps %%zmm1, %%zmm0, %%zmm" #I "\n\t"
double peak_bf16() {
  const long n = 10000000;
  auto t = Clock::now();
  for (long k = 0; k < n; ++k)
    asm volatile(BF(8) BF(9) BF(10) BF(11) BF(12) BF(13) BF(14) BF(15) BF(16) BF(17) BF(18) BF(19)
                 BF(20) BF(21) BF(22) BF(23) BF(24) BF(25) BF(26) BF(27) BF(28) BF(29) BF(30) BF(31)
                 ::: "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17",
                   "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
                   "xmm28", "xmm29", "xmm30", "xmm31");
  return n * 24 / std::chrono::duration<double>(Clock::now() - t).count();
}

template <typename T> T* aligned(size_t n, T value) {
  T* p = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
  std::fill(p, p + n, value);
  return p;
}

int main(int argc, char** argv) {
  const double dp = std::max(peak<false>(), peak<false>()), fma = std::max(peak<true>(), peak<true>());
  const double macs_peak = dp * 64;
  std::printf("peak: vpdpbusd %.2f G/s (%.0f GMAC/s), 512-bit FMA %.2f G/s\n", dp / 1e9, macs_peak / 1e9, fma / 1e9);
  if (argc > 1 && std::string(argv[1]) == "bf16")
    std::printf("peak: vdpbf16ps %.2f G/s (24 chains; 32 multiply-adds each, an FMA 16)\n",
                std::max(peak_bf16(), peak_bf16()) / 1e9);
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
)

FP16_HARNESS = (
    PRELUDE
    + r"""

// One 3x3 depthwise output row in fp16 from pre-padded rows (Wo * S + 2 pixels of C channels), NO outputs per group
// (Wo a multiple of NO), 32 channels per vector (a masked last one), written as codes: round, clamp to 0..qmax.
template <int S, int NO>
void dw_fp16(const _Float16* const* rows, int Wo, int C, const _Float16* w, const _Float16* b, uint8_t* q, int qmax) {
  constexpr int NI = (NO - 1) * S + 3;
  for (int x0 = 0; x0 < Wo; x0 += NO) {
    for (int c = 0; c < C; c += 32) {
      const __mmask32 m = C - c >= 32 ? ~__mmask32{0} : (__mmask32{1} << (C - c)) - 1;
      auto load = [&](const _Float16* p) { return _mm512_castsi512_ph(_mm512_maskz_loadu_epi16(m, p)); };
      __m512h acc[NO];
      const __m512h bv = load(b + c);
#pragma GCC unroll 8
      for (int j = 0; j < NO; ++j) acc[j] = bv;
#pragma GCC unroll 3
      for (int ky = 0; ky < 3; ++ky) {
        __m512h wk[3];
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) wk[kx] = load(w + (3 * ky + kx) * C + c);
        const _Float16* r = rows[ky] + static_cast<int64_t>(x0 * S) * C + c;
#pragma GCC unroll 17
        for (int col = 0; col < NI; ++col) {
          const __m512h v = load(r);
          r += C;
          asm("" : "+r"(r));
#pragma GCC unroll 8
          for (int j = 0; j < NO; ++j) {
            const int k = col - j * S;
            if (k >= 0 && k < 3) acc[j] = _mm512_fmadd_ph(v, wk[k], acc[j]);
          }
        }
      }
#pragma GCC unroll 8
      for (int j = 0; j < NO; ++j) {
        __m512i i = _mm512_cvtph_epi16(acc[j]);
        i = _mm512_min_epi16(_mm512_max_epi16(i, _mm512_setzero_si512()), _mm512_set1_epi16(static_cast<short>(qmax)));
        _mm256_mask_storeu_epi8(q + static_cast<int64_t>(x0 + j) * C + c, m, _mm512_cvtepi16_epi8(i));
      }
    }
  }
}

template <int S>
void dw_fp16_row(const _Float16* const* rows, int Wo, int C, const _Float16* w, const _Float16* b, uint8_t* q) {
  if (Wo % 8 == 0) dw_fp16<S, 8>(rows, Wo, C, w, b, q, 255);
  else dw_fp16<S, 7>(rows, Wo, C, w, b, q, 255);
}

int main() {
  // MobileNetV2's depthwise layers at 224 px: output width, channels, stride.
  const int shapes[][3] = {{112, 32, 1}, {56, 96, 2}, {56, 144, 1}, {28, 144, 2}, {28, 192, 1}, {14, 192, 2},
                           {14, 384, 1}, {14, 576, 1}, {7, 576, 2}, {7, 960, 1}};
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> act(0.0f, 6.0f), tap(-0.5f, 0.5f);
  std::printf("depthwise row 3x3 to codes (Wo x C, stride): fp32 us, fp16 us, fp16/fp32, codes differing, max diff\n");
  for (const auto& s : shapes) {
    const int Wo = s[0], C = s[1], S = s[2], Wp = Wo * S + 2;  // pre-padded input width
    std::vector<float> in(size_t(3) * Wp * C), w(9 * C), b(C);
    for (auto& v : in) v = act(gen);
    for (int k = 0; k < 3; ++k)  // the padding columns hold zeros, as the engine's padding does
      for (int c = 0; c < C; ++c) in[(size_t(k) * Wp) * C + c] = 0.0f, in[(size_t(k) * Wp + Wp - 1) * C + c] = 0.0f;
    for (auto& v : w) v = tap(gen) * 8.0f;  // taps pre-divided by a codes scale of 1/8
    for (auto& v : b) v = tap(gen) * 16.0f + 40.0f;
    std::vector<_Float16> in16(in.begin(), in.end()), w16(w.begin(), w.end()), b16(b.begin(), b.end());
    std::vector<uint8_t> q32(size_t(Wo) * C + 64), q16(size_t(Wo) * C + 64);
    const float* rows[3];
    const _Float16* rows16[3];
    for (int k = 0; k < 3; ++k) {
      rows[k] = in.data() + size_t(k) * Wp * C + C;
      rows16[k] = in16.data() + size_t(k) * Wp * C;
    }
    const Sink sink{nullptr, q32.data(), 1.0f, 0, 255, true};
    // The engine's row reads the unpadded row (Wp - 2 pixels) and pads at its edges itself.
    auto f32 = [&] { depthwise_row(rows, 3, 1, Wp - 2, Wo, S, C, w.data(), b.data(), sink, 0, C, MN_LINEAR); };
    auto f16 = [&] {
      if (S == 1) dw_fp16_row<1>(rows16, Wo, C, w16.data(), b16.data(), q16.data());
      else dw_fp16_row<2>(rows16, Wo, C, w16.data(), b16.data(), q16.data());
    };
    f32(), f16();
    int differ = 0, worst = 0;
    for (size_t i = 0; i < size_t(Wo) * C; ++i) {
      const int d = std::abs(int(q32[i]) - int(q16[i]));
      differ += d != 0, worst = std::max(worst, d);
    }
    const double t32 = median_seconds(301, 20, f32), t16 = median_seconds(301, 20, f16);
    std::printf("  %3d x %4d  s%d  %6.2f  %6.2f  %.2f  %5.2f %%  %d\n", Wo, C, S, t32 * 1e6, t16 * 1e6, t16 / t32,
                100.0 * differ / (double(Wo) * C), worst);
  }
}
"""
)


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
        subprocess.run([str(binary), *(["bf16"] if fused.BF16_FLAG in fused.cpu_flags() else [])], check=True)
        if "avx512_fp16" not in fused.cpu_flags():
            print("(no AVX512-FP16 on this CPU: the fp16 depthwise harness is skipped)")
            return
        source, binary = Path(tmp) / "fp16_depthwise.cpp", Path(tmp) / "fp16_depthwise"
        source.write_text(FP16_HARNESS)
        build = [cxx, "-O3", *flags, "-mavx512fp16", f"-DMN_ISA={level}", "-std=c++17", f"-I{csrc}", str(source),
                 str(csrc / "depthwise.cpp"), "-o", str(binary)]  # fmt: skip
        subprocess.run(build, check=True)
        subprocess.run([str(binary)], check=True)


if __name__ == "__main__":
    main()

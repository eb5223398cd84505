// The k×k depthwise convolution (3×3: V1 §3.1 / V2 §3.3; 5×5: V3 Table 1), one output row at a time, fp32, with
// its output sent where the Sink says (fp32, or the codes of an int8 projection). Dilation (the atrous blocks
// of output stride 16 / 8) runs as d interleaved undilated rows: with stride 1 and a padding that is a multiple
// of d, output column x reads only the input columns x ≡ x (mod d), so the pixels r, r + d, r + 2d, … form a row
// of their own, walked with a pixel step of d·C.
#include <type_traits>

#include "kernels.h"
#include "simd.h"

namespace mn {
namespace {

template <typename V, int MODE>
inline void put(const Sink& out, int64_t at, typename V::T v) {
  if constexpr (MODE == Sink::FP32) {
    V::store(out.f + at, v);
  } else if constexpr (MODE == Sink::SCALED_CODES) {
    V::store_codes(out.q + at, v, out.qmax);
  } else {
    V::store_quantized(out.q + at, v, out.inv_scale, out.zero, out.qmax);
  }
}

// NO neighbouring outputs x0 .. x0+NO−1 of a K×K depthwise row for channels [c0, c1) (pixels outside, channels
// inside: the group's input columns stay in L1 while it runs). Per vector of channels (V::N: 8 on AVX2, 16 on
// AVX-512): NO independent accumulators (eight keep both FMA pipes busy despite the FMA latency), the K weights
// of a kernel row in registers, each input column loaded once and fed to every output whose window holds it.
// Pixels are `step` floats apart (C, or d·C for a dilated row). LEFT / RIGHT: the group's window reaches into the
// zero padding on that side. A 3×3 window reaches one column into it, skipped at compile time; a 5×5 one up to
// two, so its edge groups test each column against [lo, hi) instead (the interior groups test nothing).
template <typename V, int S, int K, int NO, bool LEFT, bool RIGHT, int MODE>
void depthwise_run(const typename V::E* const* rows, int x0, int C, int64_t step, int lo, int hi, int c0, int c1,
                   const typename V::E* w, const typename V::E* bias, const Sink& out, int act) {
  using T = typename V::T;
  constexpr int NI = (NO - 1) * S + K;  // input columns the NO outputs read
  constexpr bool kTested = K != 3 && (LEFT || RIGHT);
  const int64_t first = (x0 * S - (K - 1) / 2) * step;
  for (int c = c0; c < c1; c += V::N) {
    T acc[NO];
    const T bv = V::load(bias + c);
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) acc[j] = bv;
#pragma GCC unroll 5
    for (int ky = 0; ky < K; ++ky) {
      T wk[K];
#pragma GCC unroll 5
      for (int kx = 0; kx < K; ++kx) wk[kx] = V::load(w + (K * ky + kx) * C + c);
      // One pointer stepped column by column (the empty asm keeps the compiler from turning the steps back into
      // 17 precomputed offsets, which it would spill: two scalar loads per vector load). Where the window starts
      // in the padding the pointer starts before the row; only the columns inside it are read.
      const typename V::E* r = rows[ky] + first + c + (K == 3 && LEFT ? step : 0);
#pragma GCC unroll 19
      for (int col = K == 3 && LEFT ? 1 : 0; col < (K == 3 && RIGHT ? NI - 1 : NI); ++col) {
        if (kTested && (col < lo || col >= hi)) {
          r += step;
          continue;
        }
        const T v = V::load(r);
        r += step;
        asm("" : "+r"(r));
#pragma GCC unroll 8
        for (int j = 0; j < NO; ++j) {
          const int k = col - j * S;
          if (k >= 0 && k < K) acc[j] = V::fma(v, wk[k], acc[j]);
        }
      }
    }
    // Scaled codes leave the activation to the clamp (Sink): no test of `act` per output.
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) {
      if constexpr (MODE == Sink::SCALED_CODES)
        put<V, MODE>(out, (x0 + j) * step + c, acc[j]);
      else
        put<V, MODE>(out, (x0 + j) * step + c, V::act(acc[j], act));
    }
  }
}

// Channels [c0, c1) in the widest vectors while they last: fp32 in 16 (AVX-512 builds), then 8; fp16 (AMX builds)
// in 32, then 16, then 8 (channels come in multiples of 8).
template <typename E, int S, int K, int NO, bool LEFT, bool RIGHT, int MODE>
void depthwise_channels(const E* const* rows, int x0, int C, int64_t step, int lo, int hi, int c0, int c1,
                        const E* w, const E* bias, const Sink& out, int act) {
#if MN_ISA >= MN_ISA_AMX
  if constexpr (std::is_same_v<E, _Float16>) {
    const int c32 = c0 + (c1 - c0) / 32 * 32, c16 = c32 + (c1 - c32) / 16 * 16;
    depthwise_run<H32, S, K, NO, LEFT, RIGHT, MODE>(rows, x0, C, step, lo, hi, c0, c32, w, bias, out, act);
    depthwise_run<H16, S, K, NO, LEFT, RIGHT, MODE>(rows, x0, C, step, lo, hi, c32, c16, w, bias, out, act);
    depthwise_run<H8, S, K, NO, LEFT, RIGHT, MODE>(rows, x0, C, step, lo, hi, c16, c1, w, bias, out, act);
    return;
  } else
#endif
  {
#if MN_ISA >= MN_ISA_AVX512
    const int c16 = c0 + (c1 - c0) / 16 * 16;
    depthwise_run<V16, S, K, NO, LEFT, RIGHT, MODE>(rows, x0, C, step, lo, hi, c0, c16, w, bias, out, act);
    c0 = c16;
#endif
    depthwise_run<V8, S, K, NO, LEFT, RIGHT, MODE>(rows, x0, C, step, lo, hi, c0, c1, w, bias, out, act);
  }
}

// Which sides of the group's window reach into the padding. For a 3×3 window the right padding, when a group
// needs it, is always its last input column; the 5×5 edge groups carry the columns inside the row, [lo, hi).
template <typename E, int S, int K, int NO, int MODE>
void depthwise_group(const E* const* rows, int Wi, int x0, int C, int64_t step, int c0, int c1, const E* w,
                     const E* bias, const Sink& out, int act) {
  constexpr int P = (K - 1) / 2, NI = (NO - 1) * S + K;
  const int start = x0 * S - P;  // the window's first input column
  const bool left = start < 0, right = start + NI > Wi;
  const int lo = left ? -start : 0, hi = right ? Wi - start : NI;
  if (!left && !right)
    depthwise_channels<E, S, K, NO, false, false, MODE>(rows, x0, C, step, lo, hi, c0, c1, w, bias, out, act);
  else if (left && !right)
    depthwise_channels<E, S, K, NO, true, false, MODE>(rows, x0, C, step, lo, hi, c0, c1, w, bias, out, act);
  else if (!left)
    depthwise_channels<E, S, K, NO, false, true, MODE>(rows, x0, C, step, lo, hi, c0, c1, w, bias, out, act);
  else
    depthwise_channels<E, S, K, NO, true, true, MODE>(rows, x0, C, step, lo, hi, c0, c1, w, bias, out, act);
}

// The row goes in groups of eight outputs, the remainder as one shorter group.
template <typename E, int S, int K, int MODE>
void depthwise_row_s(const E* const* rows, int Wi, int Wo, int C, int64_t step, const E* w, const E* bias,
                     const Sink& out, int c0, int c1, int act) {
  int x = 0;
  for (; x + 8 <= Wo; x += 8) depthwise_group<E, S, K, 8, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act);
  switch (Wo - x) {
    case 7: depthwise_group<E, S, K, 7, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 6: depthwise_group<E, S, K, 6, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 5: depthwise_group<E, S, K, 5, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 4: depthwise_group<E, S, K, 4, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 3: depthwise_group<E, S, K, 3, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 2: depthwise_group<E, S, K, 2, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    case 1: depthwise_group<E, S, K, 1, MODE>(rows, Wi, x, C, step, c0, c1, w, bias, out, act); break;
    default: break;
  }
}

// The kernels are compiled per sink mode (a branch per vector cost int8 1.3–5 %, interleaved A/B). fp16 rows go
// only to scaled codes.
template <typename E, int K>
void depthwise_row_k(const E* const* rows, int Wi, int Wo, int stride, int C, int64_t step, const E* w,
                     const E* bias, const Sink& out, int c0, int c1, int act) {
  if constexpr (!std::is_same_v<E, float>) {
    if (stride == 1)
      depthwise_row_s<E, 1, K, Sink::SCALED_CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act);
    else
      depthwise_row_s<E, 2, K, Sink::SCALED_CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act);
  } else {
    switch (out.mode() * 2 + (stride == 1 ? 0 : 1)) {
      case 0: depthwise_row_s<E, 1, K, Sink::FP32>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
      case 1: depthwise_row_s<E, 2, K, Sink::FP32>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
      case 2: depthwise_row_s<E, 1, K, Sink::SCALED_CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
      case 3: depthwise_row_s<E, 2, K, Sink::SCALED_CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
      case 4: depthwise_row_s<E, 1, K, Sink::CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
      default: depthwise_row_s<E, 2, K, Sink::CODES>(rows, Wi, Wo, C, step, w, bias, out, c0, c1, act); break;
    }
  }
}

// Any kernel and dilation: a dilated row as d interleaved undilated ones (see the top of this file).
template <typename E>
void depthwise_row_any(const E* const* rows, int kernel, int dilation, int Wi, int Wo, int stride, int C, const E* w,
                       const E* bias, const Sink& out, int c0, int c1, int act) {
  auto run = kernel == 5 ? depthwise_row_k<E, 5> : depthwise_row_k<E, 3>;
  if (dilation == 1) {
    run(rows, Wi, Wo, stride, C, C, w, bias, out, c0, c1, act);
    return;
  }
  // Stride 1: sub-row r holds the pixels r, r + d, … of the input and of the output alike.
  for (int r = 0; r < dilation && r < Wi; ++r) {
    const E* sub[5];
    for (int k = 0; k < kernel; ++k) sub[k] = rows[k] + static_cast<int64_t>(r) * C;
    const int64_t at = static_cast<int64_t>(r) * C;
    const Sink shifted{out.f ? out.f + at : nullptr, out.q ? out.q + at : nullptr, out.inv_scale, out.zero, out.qmax,
                       out.scaled};
    const int n = (Wi - r + dilation - 1) / dilation;
    run(sub, n, n, 1, C, static_cast<int64_t>(dilation) * C, w, bias, shifted, c0, c1, act);
  }
}

}  // namespace

void depthwise_row(const float* const rows[3], int Wi, int Wo, int stride, int C, const float* w, const float* bias,
                   const Sink& out, int c0, int c1, int act) {
  depthwise_row_k<float, 3>(rows, Wi, Wo, stride, C, C, w, bias, out, c0, c1, act);
}

void depthwise_row(const float* const* rows, int kernel, int dilation, int Wi, int Wo, int stride, int C,
                   const float* w, const float* bias, const Sink& out, int c0, int c1, int act) {
  depthwise_row_any(rows, kernel, dilation, Wi, Wo, stride, C, w, bias, out, c0, c1, act);
}

#if MN_ISA >= MN_ISA_AMX
void depthwise_row(const _Float16* const* rows, int kernel, int dilation, int Wi, int Wo, int stride, int C,
                   const _Float16* w, const _Float16* bias, const Sink& out, int c0, int c1) {
  depthwise_row_any(rows, kernel, dilation, Wi, Wo, stride, C, w, bias, out, c0, c1, MN_LINEAR);
}
#endif

}  // namespace mn

// The 3×3 depthwise convolution, one output row at a time, fp32 (V1 §3.1 / V2 §3.3), with its output sent where
// the Sink says (fp32, or the codes of an int8 projection).
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

// NO neighbouring outputs x0 .. x0+NO−1 of a 3×3 depthwise row for channels [c0, c1) (pixels outside, channels
// inside: the group's input columns stay in L1 while it runs). Per vector of channels (V::N: 8 on AVX2, 16 on
// AVX-512): NO independent accumulators (eight keep both FMA pipes busy despite the FMA latency), the three
// weights of a kernel row in registers, each input column loaded once and fed to every output whose window
// holds it. LEFT / RIGHT: the first / last input column is the zero padding (x0 = 0 / the row's end), skipped at
// compile time.
template <typename V, int S, int NO, bool LEFT, bool RIGHT, int MODE>
void depthwise_run(const float* const rows[3], int x0, int C, int c0, int c1, const float* w, const float* bias,
                   const Sink& out, int act) {
  using T = typename V::T;
  constexpr int NI = (NO - 1) * S + 3;  // input columns the NO outputs read
  const int64_t first = static_cast<int64_t>(x0 * S - 1) * C;
  for (int c = c0; c < c1; c += V::N) {
    T acc[NO];
    const T bv = V::load(bias + c);
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) acc[j] = bv;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ++ky) {
      const T wk[3] = {V::load(w + (3 * ky) * C + c), V::load(w + (3 * ky + 1) * C + c),
                       V::load(w + (3 * ky + 2) * C + c)};
      // One pointer stepped column by column (the empty asm keeps the compiler from turning the steps back into
      // 17 precomputed offsets, which it would spill: two scalar loads per vector load).
      const float* r = rows[ky] + first + c + (LEFT ? C : 0);
#pragma GCC unroll 17
      for (int col = LEFT ? 1 : 0; col < (RIGHT ? NI - 1 : NI); ++col) {
        const T v = V::load(r);
        r += C;
        asm("" : "+r"(r));
#pragma GCC unroll 8
        for (int j = 0; j < NO; ++j) {
          const int k = col - j * S;
          if (k >= 0 && k <= 2) acc[j] = V::fma(v, wk[k], acc[j]);
        }
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) put<V, MODE>(out, static_cast<int64_t>(x0 + j) * C + c, V::act(acc[j], act));
  }
}

// Channels [c0, c1) in vectors of 16 while they last (AVX-512 builds), the rest in vectors of 8.
template <int S, int NO, bool LEFT, bool RIGHT, int MODE>
void depthwise_channels(const float* const rows[3], int x0, int C, int c0, int c1, const float* w, const float* bias,
                        const Sink& out, int act) {
#if MN_ISA >= MN_ISA_AVX512
  const int c16 = c0 + (c1 - c0) / 16 * 16;
  depthwise_run<V16, S, NO, LEFT, RIGHT, MODE>(rows, x0, C, c0, c16, w, bias, out, act);
  c0 = c16;
#endif
  depthwise_run<V8, S, NO, LEFT, RIGHT, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
}

// The right padding, when a group needs it, is always its last input column.
template <int S, int NO, int MODE>
void depthwise_group(const float* const rows[3], int Wi, int x0, int C, int c0, int c1, const float* w,
                     const float* bias, const Sink& out, int act) {
  const bool left = x0 == 0, right = (x0 + NO - 1) * S + 1 >= Wi;
  if (!left && !right)
    depthwise_channels<S, NO, false, false, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else if (left && !right)
    depthwise_channels<S, NO, true, false, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else if (!left)
    depthwise_channels<S, NO, false, true, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else
    depthwise_channels<S, NO, true, true, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
}

// The row goes in groups of eight outputs, the remainder as one shorter group.
template <int S, int MODE>
void depthwise_row_s(const float* const rows[3], int Wi, int Wo, int C, const float* w, const float* bias,
                     const Sink& out, int c0, int c1, int act) {
  int x = 0;
  for (; x + 8 <= Wo; x += 8) depthwise_group<S, 8, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act);
  switch (Wo - x) {
    case 7: depthwise_group<S, 7, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 6: depthwise_group<S, 6, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 5: depthwise_group<S, 5, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 4: depthwise_group<S, 4, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 3: depthwise_group<S, 3, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 2: depthwise_group<S, 2, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 1: depthwise_group<S, 1, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    default: break;
  }
}

}  // namespace

// The kernels are compiled per sink mode (a branch per vector cost int8 1.3–5 %, interleaved A/B).
void depthwise_row(const float* const rows[3], int Wi, int Wo, int stride, int C, const float* w, const float* bias,
                   const Sink& out, int c0, int c1, int act) {
  switch (out.mode() * 2 + (stride == 1 ? 0 : 1)) {
    case 0: depthwise_row_s<1, Sink::FP32>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 1: depthwise_row_s<2, Sink::FP32>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 2: depthwise_row_s<1, Sink::SCALED_CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 3: depthwise_row_s<2, Sink::SCALED_CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 4: depthwise_row_s<1, Sink::CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    default: depthwise_row_s<2, Sink::CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
  }
}

}  // namespace mn

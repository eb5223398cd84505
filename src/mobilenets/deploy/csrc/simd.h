// Vector helpers shared by the kernels. MN_ISA (set by fused.py's build) says which instructions the library may
// use: MN_ISA_AVX2 (AVX2 + FMA), MN_ISA_AVX512 (AVX-512 F/BW/VL/DQ + VNNI), MN_ISA_AMX (also AVX512_BF16 and the
// AMX tiles). A library is only loaded on a CPU that has its level (fused.py reads the CPU flags first), so code
// under `#if MN_ISA >= …` never runs where the instructions are missing.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "abi.h"

#ifndef MN_ISA
#define MN_ISA MN_ISA_AVX2
#endif

namespace mn {

// The activations of every epilogue (GEMM, depthwise). V3 §5.2: h-swish(x) = x · ReLU6(x + 3) / 6, and SE's gate
// h-sigmoid(x) = ReLU6(x + 3) / 6; a multiply by 1/6 rather than PyTorch's division (a divide per vector costs as
// much as a 16-long GEMM sum; the two differ by at most one rounding, far inside the 1e-4 bound).
// The tests run in the order of how often an epilogue meets them (every projection is linear): the compiler keeps
// them per call, and with the V3 ones tested before `linear` the int8 V2 engine ran 3–4 % slower (interleaved A/B).
inline __m256 activate(__m256 v, int act) {
  const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f);
  if (act == MN_LINEAR) return v;
  if (act == MN_RELU6) return _mm256_min_ps(_mm256_max_ps(v, zero), six);
  if (act == MN_RELU) return _mm256_max_ps(v, zero);
  const __m256 gate = _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.0f)), zero), six),
                                    _mm256_set1_ps(1.0f / 6.0f));
  return act == MN_HSWISH ? _mm256_mul_ps(v, gate) : gate;  // else MN_HSIGMOID
}

// Eight 32-bit lanes of fp32 (the AVX2 vector) and, on AVX-512 builds, sixteen: the depthwise kernel and the
// epilogues are written once over these.
struct V8 {
  using T = __m256;
  using E = float;
  static constexpr int N = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T act(T v, int a) { return activate(v, a); }
  // round(v) clamped to 0..qmax, as N bytes at q.
  static void store_codes(uint8_t* q, T v, int qmax) {
    const __m256i i = _mm256_cvtps_epi32(v);
    const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    const __m128i b = _mm_min_epu8(_mm_packus_epi16(w16, w16), _mm_set1_epi8(static_cast<char>(qmax)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q), b);
  }
  // round(v / scale) + zero clamped to 0..qmax, as N bytes at q.
  static void store_quantized(uint8_t* q, T v, float inv_scale, int zero, int qmax);
};

#if MN_ISA >= MN_ISA_AVX512
inline __m512 activate(__m512 v, int act) {
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
  if (act == MN_LINEAR) return v;
  if (act == MN_RELU6) return _mm512_min_ps(_mm512_max_ps(v, zero), six);
  if (act == MN_RELU) return _mm512_max_ps(v, zero);
  const __m512 gate = _mm512_mul_ps(_mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0f)), zero), six),
                                    _mm512_set1_ps(1.0f / 6.0f));
  return act == MN_HSWISH ? _mm512_mul_ps(v, gate) : gate;  // else MN_HSIGMOID
}

struct V16 {
  using T = __m512;
  using E = float;
  static constexpr int N = 16;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static T act(T v, int a) { return activate(v, a); }
  static void store_codes(uint8_t* q, T v, int qmax) {
    __m512i i = _mm512_cvtps_epi32(v);
    i = _mm512_min_epi32(_mm512_max_epi32(i, _mm512_setzero_si512()), _mm512_set1_epi32(qmax));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(i));
  }
  static void store_quantized(uint8_t* q, T v, float inv_scale, int zero, int qmax) {
    __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inv_scale))), _mm512_set1_epi32(zero));
    i = _mm512_min_epi32(_mm512_max_epi32(i, _mm512_setzero_si512()), _mm512_set1_epi32(qmax));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(i));
  }
};
#endif

#if MN_ISA >= MN_ISA_AMX
// fp16 lanes (AVX512-FP16, which every AMX CPU has; fused.py asks for fp16 depthwise weights only where the CPU
// flags it): the int8 engine's depthwise on fp16 expanded rows, 32, 16 or 8 channels per vector. Only the scaled
// codes sink (Sink::SCALED_CODES): the value is clamped to 0..qmax in fp16 first, so that sums beyond int16's
// range still give the clamp's code, then rounded to nearest even.
struct H32 {
  using T = __m512h;
  using E = _Float16;
  static constexpr int N = 32;
  static T load(const E* p) { return _mm512_loadu_ph(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ph(a, b, c); }
  static void store_codes(uint8_t* q, T v, int qmax) {
    v = _mm512_min_ph(_mm512_max_ph(v, _mm512_setzero_ph()), _mm512_set1_ph(static_cast<_Float16>(qmax)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm512_cvtepi16_epi8(_mm512_cvtph_epi16(v)));
  }
};
struct H16 {
  using T = __m256h;
  using E = _Float16;
  static constexpr int N = 16;
  static T load(const E* p) { return _mm256_loadu_ph(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ph(a, b, c); }
  static void store_codes(uint8_t* q, T v, int qmax) {
    v = _mm256_min_ph(_mm256_max_ph(v, _mm256_setzero_ph()), _mm256_set1_ph(static_cast<_Float16>(qmax)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm256_cvtepi16_epi8(_mm256_cvtph_epi16(v)));
  }
};
struct H8 {
  using T = __m128h;
  using E = _Float16;
  static constexpr int N = 8;
  static T load(const E* p) { return _mm_loadu_ph(p); }
  static T fma(T a, T b, T c) { return _mm_fmadd_ph(a, b, c); }
  static void store_codes(uint8_t* q, T v, int qmax) {
    v = _mm_min_ph(_mm_max_ph(v, _mm_setzero_ph()), _mm_set1_ph(static_cast<_Float16>(qmax)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_cvtepi16_epi8(_mm_cvtph_epi16(v)));
  }
};
#endif

// The codes of eight values, round(x / scale) + zero clamped to 0..qmax, in the low 8 bytes.
inline __m128i codes8(__m256 x, __m256 inv_scale, __m256i zero, int qmax) {
  const __m256i v = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x, inv_scale)), zero);
  const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_min_epu8(_mm_packus_epi16(w16, w16), _mm_set1_epi8(static_cast<char>(qmax)));
}

inline void store_codes(uint8_t* q, __m256 x, __m256 inv_scale, __m256i zero, int qmax) {
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), codes8(x, inv_scale, zero, qmax));
}

// The codes of eight pixels of three channel rows (each channel on its own grid: inv[c], zero[c]), interleaved as
// 24 bytes r0 g0 b0 r1 g1 b1 … at q.
inline void store_rgb_codes(uint8_t* q, const float* r, const float* g, const float* b, const __m256 inv[3],
                            const __m256i zero[3], int qmax) {
  const __m128i rg = _mm_unpacklo_epi64(codes8(_mm256_loadu_ps(r), inv[0], zero[0], qmax),
                                        codes8(_mm256_loadu_ps(g), inv[1], zero[1], qmax));
  const __m128i bb = codes8(_mm256_loadu_ps(b), inv[2], zero[2], qmax);
  // Output byte p takes pixel p / 3 of channel p % 3: red and green from rg (bytes 0–7, 8–15), blue from bb.
  const __m128i lo = _mm_or_si128(
      _mm_shuffle_epi8(rg, _mm_setr_epi8(0, 8, -1, 1, 9, -1, 2, 10, -1, 3, 11, -1, 4, 12, -1, 5)),
      _mm_shuffle_epi8(bb, _mm_setr_epi8(-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1)));
  const __m128i hi = _mm_or_si128(
      _mm_shuffle_epi8(rg, _mm_setr_epi8(13, -1, 6, 14, -1, 7, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1)),
      _mm_shuffle_epi8(bb, _mm_setr_epi8(-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, -1, -1, -1, -1, -1, -1)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), lo);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q + 16), hi);
}

inline void V8::store_quantized(uint8_t* q, T v, float inv_scale, int zero, int qmax) {
  mn::store_codes(q, v, _mm256_set1_ps(inv_scale), _mm256_set1_epi32(zero), qmax);
}

inline int panels(int n) { return (n + 15) / 16; }

// Row tiles for M rows: full tiles of `rows`, but a remainder shorter than 4 is merged with the last full tile
// and the two split evenly (a tile of 1–3 rows has too few accumulators to hide the FMA latency).
template <typename F>
inline void row_tiles(int M, int rows, F&& f) {
  int m = 0;
  const int rem = M % rows;
  const int full_end = (rem > 0 && rem < 4 && M > rows) ? M - rem - rows : M - rem;
  for (; m < full_end; m += rows) f(m, rows);
  const int left = M - m;
  if (left > rows) {
    f(m, (left + 1) / 2);
    f(m + (left + 1) / 2, left / 2);
  } else if (left > 0) {
    f(m, left);
  }
}

}  // namespace mn

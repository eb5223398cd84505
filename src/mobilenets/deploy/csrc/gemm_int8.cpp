// int8 GEMM: the input's codes (uint8, a calibrated scale and zero point per tensor) × int8 weights (one scale per
// output channel), int32 sums, an fp32 epilogue: act(scale · (Σ a·q + corr) + bias) (+ R).
//
// AVX2 (no VNNI): a product costs vpmaddubsw (pairs of products summed in int16, saturating) and vpmaddwd (to
// int32). With 8-bit codes 0..255 a pair fits in int16 when its two weights have opposite signs (≤ 255·127) or,
// same-signed, sum to at most 128 codes (255·128 = 32640 ≤ 32767): fused.py's AVX2 grid quantises the weights so
// (per output channel, the range and the pairs moved onto the limit that keep the codes closest), and each
// vpmaddubsw result goes to int32 through its own vpmaddwd. (Adding two pairs in int16 first, which needs 7-bit
// codes, saves a quarter of the multiply-unit instructions but cost 1 point of agreement with fp32 on confident
// photo predictions: 98.0 % against 99.2 %, experiments/engine/real_weights.py.)
// AVX-512 + VNNI: vpdpbusd sums four u8 × s8 products straight into int32 without an int16 stage, so the codes
// use the full 0..255 and the weights ±127 (fused.py picks the grid by the ISA), 16 lanes per instruction.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels.h"
#include "simd.h"

namespace mn {
namespace {

// The AVX2 tile, K in steps of 8 (one int32 lane = 4 products; two such steps share one vpmaddwd). K must be a
// multiple of 8.
#if MN_ISA < MN_ISA_AVX512
template <int MR, int NR>
inline void tile_s8(int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col, float* C, int ldc,
                    const float* R, int ldr, int act) {
  constexpr int NV = NR / 8;
  __m256i acc[MR][NV];  // start from the zero-point correction (spares an add per output in the epilogue)
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cv.corr + col + 8 * j));
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) acc[i][j] = corr;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  for (int k = 0; k < K; k += 8) {
    __m256i b0[NV], b1[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) {
      b0[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + k * NR + 32 * j));
      b1[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + (k + 4) * NR + 32 * j));
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      int32_t lo, hi;
      std::memcpy(&lo, A + static_cast<int64_t>(i) * lda + k, 4);
      std::memcpy(&hi, A + static_cast<int64_t>(i) * lda + k + 4, 4);
      const __m256i a0 = _mm256_set1_epi32(lo), a1 = _mm256_set1_epi32(hi);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) {
        const __m256i lo4 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, b0[j]), ones);
        const __m256i hi4 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, b1[j]), ones);
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_add_epi32(lo4, hi4));
      }
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const __m256 scale = _mm256_loadu_ps(cv.scale + col + 8 * j), bias = _mm256_loadu_ps(cv.bias + col + 8 * j);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][j]), scale, bias);
      v = activate(v, act);
      if (R) v = _mm256_add_ps(v, _mm256_loadu_ps(R + static_cast<int64_t>(i) * ldr + 8 * j));
      _mm256_storeu_ps(C + static_cast<int64_t>(i) * ldc + 8 * j, v);
    }
  }
}

template <int NR>
inline void tile_s8_rows(int mr, int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col,
                         float* C, int ldc, const float* R, int ldr, int act) {
  switch (mr) {
    case 4: tile_s8<4, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 3: tile_s8<3, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 2: tile_s8<2, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    default: tile_s8<1, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
  }
}

void panel_avx2(int M, int nr, int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col, float* C,
                int ldc, const float* R, int ldr, int act) {
  auto rows = [&](int m, int mr) {
    const uint8_t* a = A + static_cast<int64_t>(m) * lda;
    float* c = C + static_cast<int64_t>(m) * ldc + col;
    const float* r = R ? R + static_cast<int64_t>(m) * ldr + col : nullptr;
    if (nr == 16)
      tile_s8_rows<16>(mr, K, a, lda, B, cv, col, c, ldc, r, ldr, act);
    else
      tile_s8_rows<8>(mr, K, a, lda, B, cv, col, c, ldc, r, ldr, act);
  };
  // Four rows per tile for thin K (the epilogue weighs more there), else three: four rows with the paired
  // products need more than the 16 vector registers and spill accumulators (three measured 5–24 % faster for
  // K ≥ 96). Two calls with constant row counts, so that each is compiled for its own.
  if (K <= 32)
    row_tiles(M, 4, rows);
  else
    row_tiles(M, 3, rows);
}
#endif

#if MN_ISA >= MN_ISA_AVX512
template <int W>
struct Lanes;
template <>
struct Lanes<16> {
  using I = __m512i;
  using F = __m512;
};
template <>
struct Lanes<8> {
  using I = __m256i;
  using F = __m256;
};

// acc + the four-product sums of a (u8) and b (s8) per int32 lane, in place: GCC 12 compiles the intrinsics with a
// copy of each accumulator in and out of every vpdpbusd and spills a few to the stack (measured on the 8 × 2 tile:
// 16 vpdpbusd, 35 moves and 3 stores per k step); the instruction written out keeps each in its register.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
inline __m256i dpbusd(__m256i acc, __m256i a, __m256i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// VNNI: MR rows × NV panels of W columns (W = 16: one zmm per 4 k of a panel, panel j at B + j · 16K bytes;
// W = 8: the 8-wide last panel in a ymm), K in steps of 4.
// Out: float, or (AMX builds) _Float16, each output rounded to fp16 as it is stored (no residual then).
template <int MR, int NV, int W, typename Out>
inline void tile_vnni(int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col, Out* C,
                      int ldc, const float* R, int ldr, int act) {
  using I = typename Lanes<W>::I;
  using F = typename Lanes<W>::F;
  auto loadi = [](const void* p) {
    if constexpr (W == 16) return _mm512_loadu_si512(p);
    else return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  };
  I acc[MR][NV];
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const I corr = loadi(cv.corr + col + W * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[i][j] = corr;
  }
  const int64_t next_panel = static_cast<int64_t>(16) * K;
  for (int k = 0; k < K; k += 4) {
    I b[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) b[j] = loadi(B + j * next_panel + k * W);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      std::memcpy(&four, A + static_cast<int64_t>(i) * lda + k, 4);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) {
        if constexpr (W == 16)
          acc[i][j] = dpbusd(acc[i][j], _mm512_set1_epi32(four), b[j]);
        else
          acc[i][j] = dpbusd(acc[i][j], _mm256_set1_epi32(four), b[j]);
      }
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    F scale, bias;
    if constexpr (W == 16)
      scale = _mm512_loadu_ps(cv.scale + col + 16 * j), bias = _mm512_loadu_ps(cv.bias + col + 16 * j);
    else
      scale = _mm256_loadu_ps(cv.scale + col), bias = _mm256_loadu_ps(cv.bias + col);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      Out* c = C + static_cast<int64_t>(i) * ldc + W * j;
      const float* r = R + static_cast<int64_t>(i) * ldr + W * j;
      constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
      if constexpr (W == 16) {
        __m512 v = activate(_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), scale, bias), act);
        if constexpr (std::is_same_v<Out, float>) {
          if (R) v = _mm512_add_ps(v, _mm512_loadu_ps(r));
          _mm512_storeu_ps(c, v);
        } else {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), _mm512_cvtps_ph(v, kRound));
        }
      } else {
        __m256 v = activate(_mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][j]), scale, bias), act);
        if constexpr (std::is_same_v<Out, float>) {
          if (R) v = _mm256_add_ps(v, _mm256_loadu_ps(r));
          _mm256_storeu_ps(c, v);
        } else {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(c), _mm256_cvtps_ph(v, kRound));
        }
      }
    }
  }
}

template <int NV, int W, typename Out>
inline void tile_vnni_rows(int mr, int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col,
                           Out* C, int ldc, const float* R, int ldr, int act) {
  switch (mr) {
    case 8: tile_vnni<8, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 7: tile_vnni<7, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 6: tile_vnni<6, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 5: tile_vnni<5, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 4: tile_vnni<4, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 3: tile_vnni<3, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 2: tile_vnni<2, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    default: tile_vnni<1, NV, W, Out>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
  }
}

template <int NV, int W, typename Out>
void panels_vnni(int M, int K, const uint8_t* A, int lda, const int8_t* B, const MnConv& cv, int col, Out* C,
                 int ldc, const float* R, int ldr, int act) {
  row_tiles(M, 8, [&](int m, int mr) {
    tile_vnni_rows<NV, W>(mr, K, A + static_cast<int64_t>(m) * lda, lda, B, cv, col,
                          C + static_cast<int64_t>(m) * ldc + col, ldc,
                          R ? R + static_cast<int64_t>(m) * ldr + col : nullptr, ldr, act);
  });
}
// Output panels [p0, p1) on the VNNI tiles, two 16-wide panels at a time while they last.
template <typename Out>
void gemm_vnni(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, Out* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1) {
  for (int p = p0; p < p1;) {
    const int col = 16 * p;
    const int nr = std::min(16, N - col);
    const int8_t* B = cv.q + static_cast<int64_t>(col) * K;
    const bool pair = nr == 16 && p + 1 < p1 && N - col >= 32;
    if (pair)
      panels_vnni<2, 16>(M, K, A, lda, B, cv, col, C, ldc, R, ldr, act);
    else if (nr == 16)
      panels_vnni<1, 16>(M, K, A, lda, B, cv, col, C, ldc, R, ldr, act);
    else
      panels_vnni<1, 8>(M, K, A, lda, B, cv, col, C, ldc, R, ldr, act);
    p += pair ? 2 : 1;
  }
}

// The product on AMX tiles where on_tiles says (the same sums), else on the VNNI tiles: fp32 or fp16 outputs.
template <typename Out>
void gemm_wide(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, Out* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1) {
#if MN_ISA >= MN_ISA_AMX
  if (on_tiles(cv, M)) {
    gemm_int8_amx(M, N, K, A, lda, cv, C, ldc, R, ldr, act, p0, p1);
    return;
  }
#endif
  gemm_vnni(M, N, K, A, lda, cv, C, ldc, R, ldr, act, p0, p1);
}
#endif

}  // namespace

void gemm_int8(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, float* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1) {
#if MN_ISA >= MN_ISA_AVX512
  gemm_wide(M, N, K, A, lda, cv, C, ldc, R, ldr, act, p0, p1);
#else
  for (int p = p0; p < p1; ++p) {
    const int col = 16 * p;
    panel_avx2(M, std::min(16, N - col), K, A, lda, cv.q + static_cast<int64_t>(col) * K, cv, col, C, ldc, R, ldr,
               act);
  }
#endif
}

#if MN_ISA >= MN_ISA_AMX
void gemm_int8(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, _Float16* C, int ldc, int act,
               int p0, int p1) {
  gemm_wide(M, N, K, A, lda, cv, C, ldc, nullptr, 0, act, p0, p1);
}

void conv1x1(const MnConv& cv, int M, int N, int K, const float* A, int lda, const uint8_t* Aq, _Float16* C, int ldc,
             const float*, int, int act, int p0, int p1, uint8_t* qbuf) {
  if (p0 >= p1) return;
  if (!Aq) Aq = input_codes(cv, A, lda, M, K, qbuf);
  gemm_int8(M, N, K, Aq, K, cv, C, ldc, act, p0, p1);
}
#endif

void quantize_rows(const float* X, int ldx, int M, int K, uint8_t* Q, int ldq, float inv_scale, int zero, int qmax) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256i z = _mm256_set1_epi32(zero);
  for (int m = 0; m < M; ++m) {
    const float* x = X + static_cast<int64_t>(m) * ldx;
    uint8_t* q = Q + static_cast<int64_t>(m) * ldq;
    int k = 0;
#if MN_ISA >= MN_ISA_AVX512
    // The same codes 16 at a time (7 instructions where the 8-wide path takes 14).
    for (; k + 16 <= K; k += 16) V16::store_quantized(q + k, _mm512_loadu_ps(x + k), inv_scale, zero, qmax);
#endif
    for (; k + 8 <= K; k += 8) store_codes(q + k, _mm256_loadu_ps(x + k), inv, z, qmax);
    for (; k < K; ++k)  // the same rounding (to nearest even) as the vector conversion
      q[k] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::nearbyint(x[k] * inv_scale)) + zero, 0, qmax));
  }
}

const uint8_t* input_codes(const MnConv& cv, const float* A, int lda, int M, int K, uint8_t* buf) {
  if (!cv.q) return nullptr;
  quantize_rows(A, lda, M, K, buf, K, cv.inv_scale, cv.zero, cv.qmax);
  return buf;
}

}  // namespace mn

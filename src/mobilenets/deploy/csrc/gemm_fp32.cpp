// fp32 GEMM for the 1×1 convolutions, the stem's im2col product and the linear layers.
//
// Register tiles: MR rows × one panel. AVX2: a 16-wide panel is two 8-lane vectors, MR = 6 (12 accumulators of
// the 16 registers); an 8-wide panel takes 12 rows. AVX-512 (32 registers of 16 lanes): two adjacent 16-wide
// panels at once with MR = 8 (16 accumulators; two weight loads and eight broadcasts feed 16 FMAs), a lone one
// with MR = 12; the 8-wide last panel, if any, still runs the AVX2 tile.
#include <algorithm>

#include "kernels.h"
#include "simd.h"

namespace mn {
namespace {

// C[m, n] = act(A[m, :] · B[:, n] + bias[n]) (+ R[m, n]) for an MR × NR tile; B is one packed panel [K][NR].
template <int MR, int NR>
inline void tile(int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                 const float* R, int ldr, int act) {
  constexpr int NV = NR / 8;
  __m256 acc[MR][NV];
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const __m256 b = _mm256_loadu_ps(bias + 8 * j);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) acc[i][j] = b;
  }
  const float* a[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) a[i] = A + static_cast<int64_t>(i) * lda;
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) b[j] = _mm256_loadu_ps(B + k * NR + 8 * j);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a[i] + k);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) {
      __m256 v = activate(acc[i][j], act);
      if (R) v = _mm256_add_ps(v, _mm256_loadu_ps(R + static_cast<int64_t>(i) * ldr + 8 * j));
      _mm256_storeu_ps(C + static_cast<int64_t>(i) * ldc + 8 * j, v);
    }
  }
}

template <int NR>
inline void tile_rows(int mr, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                      const float* R, int ldr, int act) {
  switch (mr) {
    case 12:
      if constexpr (NR == 8) {
        tile<12, 8>(K, A, lda, B, bias, C, ldc, R, ldr, act);
        break;
      }
      [[fallthrough]];
    case 6: tile<6, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 5: tile<5, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 4: tile<4, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 3: tile<3, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 2: tile<2, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    default: tile<1, NR>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
  }
}

// One panel on the AVX2 tiles.
void panel_avx2(int M, int nr, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                const float* R, int ldr, int act) {
  row_tiles(M, nr == 16 ? 6 : 12, [&](int m, int mr) {
    const float* a = A + static_cast<int64_t>(m) * lda;
    float* c = C + static_cast<int64_t>(m) * ldc;
    const float* r = R ? R + static_cast<int64_t>(m) * ldr : nullptr;
    if (nr == 16) {
      tile_rows<16>(mr, K, a, lda, B, bias, c, ldc, r, ldr, act);
    } else {
      // An 8-wide panel takes 12 rows at once; 7..11 rows go in two near-equal tiles.
      const int first = (mr == 12 || mr <= 6) ? mr : (mr + 1) / 2;
      tile_rows<8>(first, K, a, lda, B, bias, c, ldc, r, ldr, act);
      if (first < mr)
        tile_rows<8>(mr - first, K, a + static_cast<int64_t>(first) * lda, lda, B, bias,
                     c + static_cast<int64_t>(first) * ldc, ldc, r ? r + static_cast<int64_t>(first) * ldr : nullptr,
                     ldr, act);
    }
  });
}

#if MN_ISA >= MN_ISA_AVX512
// MR rows × NV adjacent 16-wide panels (panel j at B + j · 16K), one 16-lane vector each.
template <int MR, int NV>
inline void tile16(int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                   const float* R, int ldr, int act) {
  __m512 acc[MR][NV];
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const __m512 b = _mm512_loadu_ps(bias + 16 * j);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) acc[i][j] = b;
  }
  const float* a[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) a[i] = A + static_cast<int64_t>(i) * lda;
  const int64_t next_panel = static_cast<int64_t>(16) * K;
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __m512 b[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_ps(B + j * next_panel + k * 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i][k]);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) {
      __m512 v = activate(acc[i][j], act);
      if (R) v = _mm512_add_ps(v, _mm512_loadu_ps(R + static_cast<int64_t>(i) * ldr + 16 * j));
      _mm512_storeu_ps(C + static_cast<int64_t>(i) * ldc + 16 * j, v);
    }
  }
}

template <int NV>
inline void tile16_rows(int mr, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                        const float* R, int ldr, int act) {
  switch (mr) {
    case 12:
      if constexpr (NV == 1) {
        tile16<12, 1>(K, A, lda, B, bias, C, ldc, R, ldr, act);
        break;
      }
      [[fallthrough]];
    case 8: tile16<8, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 7: tile16<7, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 6: tile16<6, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 5: tile16<5, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 4: tile16<4, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 3: tile16<3, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    case 2: tile16<2, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
    default: tile16<1, NV>(K, A, lda, B, bias, C, ldc, R, ldr, act); break;
  }
}

template <int NV>
void panels_avx512(int M, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                   const float* R, int ldr, int act) {
  constexpr int rows = NV == 2 ? 8 : 12;
  row_tiles(M, rows, [&](int m, int mr) {
    const int first = (mr == rows || mr <= 8) ? mr : (mr + 1) / 2;  // 9..11 rows of a lone panel: two tiles
    const float* a = A + static_cast<int64_t>(m) * lda;
    float* c = C + static_cast<int64_t>(m) * ldc;
    const float* r = R ? R + static_cast<int64_t>(m) * ldr : nullptr;
    tile16_rows<NV>(first, K, a, lda, B, bias, c, ldc, r, ldr, act);
    if (first < mr)
      tile16_rows<NV>(mr - first, K, a + static_cast<int64_t>(first) * lda, lda, B, bias,
                      c + static_cast<int64_t>(first) * ldc, ldc, r ? r + static_cast<int64_t>(first) * ldr : nullptr,
                      ldr, act);
  });
}
#endif

}  // namespace

void gemm_fp32(int M, int N, int K, const float* A, int lda, const float* Bp, const float* bias, float* C, int ldc,
               const float* R, int ldr, int act, int p0, int p1) {
  for (int p = p0; p < p1;) {
    const int col = 16 * p;
    const int nr = std::min(16, N - col);
    const float* B = Bp + static_cast<int64_t>(col) * K;
    float* c = C + col;
    const float* r = R ? R + col : nullptr;
#if MN_ISA >= MN_ISA_AVX512
    if (nr == 16) {
      const bool pair = p + 1 < p1 && N - col >= 32;
      if (pair)
        panels_avx512<2>(M, K, A, lda, B, bias + col, c, ldc, r, ldr, act);
      else
        panels_avx512<1>(M, K, A, lda, B, bias + col, c, ldc, r, ldr, act);
      p += pair ? 2 : 1;
      continue;
    }
#endif
    panel_avx2(M, nr, K, A, lda, B, bias + col, c, ldc, r, ldr, act);
    ++p;
  }
}

}  // namespace mn

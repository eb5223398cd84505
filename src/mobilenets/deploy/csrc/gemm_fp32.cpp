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

// C[m, n] = act(A[m, :] · B[:, n] + bias[n]) (+ R[m, n]) for MR rows × NV vectors of V::N columns. Vector j of
// B's row k is at B + k · kstride + j · jstride: one interleaved AVX2 panel [K][8·NV] (kstride 8·NV, jstride 8) or
// NV adjacent AVX-512 panels [K][16] (kstride 16, jstride 16·K). Written once for both vector widths (V8, V16).
template <class V, int MR, int NV>
inline void tile(int K, const float* A, int lda, const float* B, int64_t kstride, int64_t jstride,
                 const float* bias, float* C, int ldc, const float* R, int ldr, int act) {
  typename V::T acc[MR][NV];
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const typename V::T b = V::load(bias + V::N * j);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) acc[i][j] = b;
  }
  const float* a[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) a[i] = A + static_cast<int64_t>(i) * lda;
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    typename V::T b[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) b[j] = V::load(B + k * kstride + j * jstride);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const typename V::T av = V::broadcast(a[i] + k);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) {
      typename V::T v = V::act(acc[i][j], act);
      if (R) v = V::add(v, V::load(R + static_cast<int64_t>(i) * ldr + V::N * j));
      V::store(C + static_cast<int64_t>(i) * ldc + V::N * j, v);
    }
  }
}

// mr rows (1 <= mr <= MR) as the tile of exactly that many rows, chosen among the compiled sizes.
template <class V, int NV, int MR>
inline void tile_upto(int mr, int K, const float* A, int lda, const float* B, int64_t kstride, int64_t jstride,
                      const float* bias, float* C, int ldc, const float* R, int ldr, int act) {
  if constexpr (MR > 1) {
    if (mr < MR) {
      tile_upto<V, NV, MR - 1>(mr, K, A, lda, B, kstride, jstride, bias, C, ldc, R, ldr, act);
      return;
    }
  }
  tile<V, MR, NV>(K, A, lda, B, kstride, jstride, bias, C, ldc, R, ldr, act);
}

// mr rows of a row tile (mr <= TOP) as one tile, except that SMALL < mr < TOP rows go in two near-equal tiles (only
// TOP and 1..SMALL rows are compiled: a tile of TOP uses every register, one between would waste most of them).
template <class V, int NV, int TOP, int SMALL>
inline void rows_as_tiles(int mr, int K, const float* A, int lda, const float* B, int64_t kstride, int64_t jstride,
                          const float* bias, float* C, int ldc, const float* R, int ldr, int act) {
  if (mr == TOP) {
    tile<V, TOP, NV>(K, A, lda, B, kstride, jstride, bias, C, ldc, R, ldr, act);
    return;
  }
  const int first = mr <= SMALL ? mr : (mr + 1) / 2;
  tile_upto<V, NV, SMALL>(first, K, A, lda, B, kstride, jstride, bias, C, ldc, R, ldr, act);
  if (first < mr)
    tile_upto<V, NV, SMALL>(mr - first, K, A + static_cast<int64_t>(first) * lda, lda, B, kstride, jstride, bias,
                            C + static_cast<int64_t>(first) * ldc, ldc,
                            R ? R + static_cast<int64_t>(first) * ldr : nullptr, ldr, act);
}

// One panel on the AVX2 tiles: a 16-wide panel 6 rows at a time, an 8-wide one 12.
void panel_avx2(int M, int nr, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                const float* R, int ldr, int act) {
  row_tiles(M, nr == 16 ? 6 : 12, [&](int m, int mr) {
    const float* a = A + static_cast<int64_t>(m) * lda;
    float* c = C + static_cast<int64_t>(m) * ldc;
    const float* r = R ? R + static_cast<int64_t>(m) * ldr : nullptr;
    if (nr == 16)
      rows_as_tiles<V8, 2, 6, 6>(mr, K, a, lda, B, 16, 8, bias, c, ldc, r, ldr, act);
    else
      rows_as_tiles<V8, 1, 12, 6>(mr, K, a, lda, B, 8, 8, bias, c, ldc, r, ldr, act);
  });
}

#if MN_ISA >= MN_ISA_AVX512
// NV adjacent 16-wide panels on the AVX-512 tiles: two at once 8 rows at a time, a lone one 12.
template <int NV>
void panels_avx512(int M, int K, const float* A, int lda, const float* B, const float* bias, float* C, int ldc,
                   const float* R, int ldr, int act) {
  constexpr int rows = NV == 2 ? 8 : 12;
  row_tiles(M, rows, [&](int m, int mr) {
    const float* a = A + static_cast<int64_t>(m) * lda;
    float* c = C + static_cast<int64_t>(m) * ldc;
    const float* r = R ? R + static_cast<int64_t>(m) * ldr : nullptr;
    rows_as_tiles<V16, NV, rows, 8>(mr, K, a, lda, B, 16, 16 * static_cast<int64_t>(K), bias, c, ldc, r, ldr, act);
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

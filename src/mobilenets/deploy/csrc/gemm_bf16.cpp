// bf16 GEMM on AMX tiles (AMX builds; elsewhere these entry points are never reached: fused.py builds no bf16
// weights below the AMX level).
//
// A tile holds 16 rows of 64 bytes. Per block of 32 output rows the thread rounds its A rows to bf16 into a
// buffer of 32 × Kp (K zero-padded to a multiple of 32, so that every tile is a whole one), then for each pair of
// 16-column panels keeps four C tiles (2 row tiles × 2 panels: tmm0–3) and streams K in steps of 32 through two
// A tiles (tmm4, tmm5) and two B tiles (tmm6, tmm7): tdpbf16ps multiplies bf16 pairs and sums in fp32. The C
// tiles go to a small buffer and an AVX-512 epilogue adds the bias, the activation and the residual. B is packed
// per panel as [Kp/2][16][2]: the pairs of consecutive k that tdpbf16ps reads per fp32 lane.
#include <algorithm>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace mn {

#if MN_ISA >= MN_ISA_AMX

namespace {

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The rows [m0, m0 + rows) of A (K wide) as bf16 in buf (32 rows of Kp); columns K..Kp are zero. Rows past `rows`
// keep what they held: they only feed C rows that are never stored.
void to_bf16(const float* A, int lda, int m0, int rows, int K, int Kp, uint16_t* buf) {
  for (int i = 0; i < rows; ++i) {
    const float* a = A + static_cast<int64_t>(m0 + i) * lda;
    uint16_t* b = buf + static_cast<int64_t>(i) * Kp;
    for (int k = 0; k < Kp; k += 16) {
      const __mmask16 valid = K - k >= 16 ? 0xffff : K > k ? static_cast<__mmask16>((1u << (K - k)) - 1) : 0;
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(valid, a + k));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + k), (__m256i)v);
    }
  }
}

// C rows [0, rows) × `cols` columns (16 or 8) of one panel from a tile's 16 × 16 fp32 at t (rows 16 floats apart).
void epilogue(const float* t, int rows, int cols, const float* bias, float* C, int ldc, const float* R, int ldr,
              int act) {
  const __mmask16 mask = cols == 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __m512 b = _mm512_maskz_loadu_ps(mask, bias);
  for (int i = 0; i < rows; ++i) {
    __m512 v = activate(_mm512_add_ps(_mm512_loadu_ps(t + 16 * i), b), act);
    if (R) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, R + static_cast<int64_t>(i) * ldr));
    _mm512_mask_storeu_ps(C + static_cast<int64_t>(i) * ldc, mask, v);
  }
}

}  // namespace

void tiles_configure() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.rows[i] = 16, cfg.colsb[i] = 64;
  // ldtilecfg by hand: GCC 12 does not see _tile_loadconfig read the struct and drops the stores above.
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

void tiles_release() { _tile_release(); }

void gemm_bf16(int M, int N, int K, const float* A, int lda, const MnConv& cv, float* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1) {
  if (p0 >= p1) return;
  const int Kp = (K + 31) / 32 * 32;
  // Per thread: the bf16 rows (grown to the widest K seen; thread_local, as the pool's threads live on).
  thread_local std::vector<uint16_t> abuf;
  if (abuf.size() < static_cast<size_t>(32) * Kp) abuf.assign(static_cast<size_t>(32) * Kp, 0);
  alignas(64) float ctile[4][16 * 16];
  const int64_t stride_a = static_cast<int64_t>(Kp) * 2;  // bytes
  for (int m0 = 0; m0 < M; m0 += 32) {
    const int rows = std::min(32, M - m0);
    to_bf16(A, lda, m0, rows, K, Kp, abuf.data());
    const uint16_t* a0 = abuf.data();
    const uint16_t* a1 = a0 + static_cast<int64_t>(16) * Kp;
    for (int p = p0; p < p1; p += 2) {
      const bool two = p + 1 < p1;
      const uint16_t* b0 = cv.wb + static_cast<int64_t>(p) * Kp * 16;
      const uint16_t* b1 = b0 + static_cast<int64_t>(Kp) * 16;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < Kp; k += 32) {
        _tile_loadd(4, a0 + k, stride_a);
        _tile_loadd(6, b0 + static_cast<int64_t>(k) * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (rows > 16) {
          _tile_loadd(5, a1 + k, stride_a);
          _tile_dpbf16ps(2, 5, 6);
        }
        if (two) {
          _tile_loadd(7, b1 + static_cast<int64_t>(k) * 16, 64);
          _tile_dpbf16ps(1, 4, 7);
          if (rows > 16) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, ctile[0], 64);
      if (two) _tile_stored(1, ctile[1], 64);
      if (rows > 16) {
        _tile_stored(2, ctile[2], 64);
        if (two) _tile_stored(3, ctile[3], 64);
      }
      for (int j = 0; j < (two ? 2 : 1); ++j) {
        const int col = 16 * (p + j), cols = std::min(16, N - col);
        for (int half = 0; half < (rows > 16 ? 2 : 1); ++half) {
          const int m = m0 + 16 * half, n = std::min(16, rows - 16 * half);
          epilogue(ctile[2 * half + j], n, cols, cv.bias + col, C + static_cast<int64_t>(m) * ldc + col, ldc,
                   R ? R + static_cast<int64_t>(m) * ldr + col : nullptr, ldr, act);
        }
      }
    }
  }
}

#else

void tiles_configure() {}
void tiles_release() {}
void gemm_bf16(int, int, int, const float*, int, const MnConv&, float*, int, const float*, int, int, int, int) {}

#endif

}  // namespace mn

// int8 GEMM on AMX tiles (AMX builds; gemm_int8 hands it products of at least 16 rows, the VNNI kernel keeps
// the thinner ones such as the classifier's single row).
//
// tdpbusd multiplies u8 codes by s8 weights and sums four products at a time into int32, exactly as vpdpbusd
// does, so the integer sums, and with the same epilogue the outputs, are those of the VNNI kernel. Per block of
// 32 output rows the thread copies its rows of codes into a buffer of 32 × Kp bytes (K zero-padded to a multiple
// of 64, so that every tile is a whole one), then for each pair of column panels keeps four C tiles (2 row tiles
// × 2 panels: tmm0–3) and streams K in steps of 64 through two A tiles (tmm4, tmm5) and two B tiles (tmm6, tmm7).
// B is read where fused.py packed it for the VNNI kernel, [K/4][panel width][4] per panel: a 16-wide panel's
// rows of 64 bytes are a B tile's rows as they are. An 8-wide last panel is loaded 32 bytes per row, so the
// tile's columns 8–15 read the next row's weights: those C columns are never stored. Past K the tiles read the
// next panel's weights (or the zero bytes fused.py appends after the last one), but they meet the zero columns
// of the A buffer and add nothing.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace mn {

#if MN_ISA >= MN_ISA_AMX

namespace {

// The codes of rows [m0, m0 + rows) (K wide, rows lda apart) into buf (rows Kp apart), zero from K to Kp. Rows
// past `rows` keep what they held: they only feed C rows that are never stored.
void gather_codes(const uint8_t* A, int lda, int m0, int rows, int K, int Kp, uint8_t* buf) {
  for (int i = 0; i < rows; ++i) {
    uint8_t* b = buf + static_cast<int64_t>(i) * Kp;
    std::memcpy(b, A + static_cast<int64_t>(m0 + i) * lda, K);
    std::memset(b + K, 0, Kp - K);
  }
}

// C rows [0, rows) × `cols` columns (16 or 8) of one panel from a tile's 16 × 16 int32 sums at t: the VNNI
// kernel's epilogue, act(scale · (Σ + corr) + bias) (+ R).
void epilogue(const int32_t* t, int rows, int cols, const MnConv& cv, int col, float* C, int ldc, const float* R,
              int ldr, int act) {
  const __mmask16 mask = cols == 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __m512i corr = _mm512_maskz_loadu_epi32(mask, cv.corr + col);
  const __m512 scale = _mm512_maskz_loadu_ps(mask, cv.scale + col), bias = _mm512_maskz_loadu_ps(mask, cv.bias + col);
  for (int i = 0; i < rows; ++i) {
    const __m512i sums = _mm512_add_epi32(_mm512_loadu_si512(t + 16 * i), corr);
    __m512 v = activate(_mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, bias), act);
    if (R) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, R + static_cast<int64_t>(i) * ldr));
    _mm512_mask_storeu_ps(C + static_cast<int64_t>(i) * ldc, mask, v);
  }
}

}  // namespace

void gemm_int8_amx(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, float* C, int ldc,
                   const float* R, int ldr, int act, int p0, int p1) {
  const int Kp = (K + 63) / 64 * 64;
  // Per thread: the padded codes (grown to the widest K seen; thread_local, as the pool's threads live on).
  thread_local std::vector<uint8_t> abuf;
  if (abuf.size() < static_cast<size_t>(32) * Kp) abuf.assign(static_cast<size_t>(32) * Kp, 0);
  alignas(64) int32_t ctile[4][16 * 16];
  for (int m0 = 0; m0 < M; m0 += 32) {
    const int rows = std::min(32, M - m0);
    gather_codes(A, lda, m0, rows, K, Kp, abuf.data());
    const uint8_t* a0 = abuf.data();
    const uint8_t* a1 = a0 + static_cast<int64_t>(16) * Kp;
    for (int p = p0; p < p1; p += 2) {
      const bool two = p + 1 < p1;
      const int col0 = 16 * p, w0 = std::min(16, N - col0), w1 = two ? std::min(16, N - col0 - 16) : 0;
      const int8_t* b0 = cv.q + static_cast<int64_t>(col0) * K;
      const int8_t* b1 = b0 + static_cast<int64_t>(w0) * K;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < Kp; k += 64) {
        _tile_loadd(4, a0 + k, Kp);
        _tile_loadd(6, b0 + static_cast<int64_t>(k) * w0, 4 * w0);
        _tile_dpbusd(0, 4, 6);
        if (rows > 16) {
          _tile_loadd(5, a1 + k, Kp);
          _tile_dpbusd(2, 5, 6);
        }
        if (two) {
          _tile_loadd(7, b1 + static_cast<int64_t>(k) * w1, 4 * w1);
          _tile_dpbusd(1, 4, 7);
          if (rows > 16) _tile_dpbusd(3, 5, 7);
        }
      }
      _tile_stored(0, ctile[0], 64);
      if (two) _tile_stored(1, ctile[1], 64);
      if (rows > 16) {
        _tile_stored(2, ctile[2], 64);
        if (two) _tile_stored(3, ctile[3], 64);
      }
      for (int j = 0; j < (two ? 2 : 1); ++j) {
        const int col = col0 + 16 * j;
        for (int half = 0; half < (rows > 16 ? 2 : 1); ++half) {
          const int m = m0 + 16 * half, n = std::min(16, rows - 16 * half);
          epilogue(ctile[2 * half + j], n, j ? w1 : w0, cv, col, C + static_cast<int64_t>(m) * ldc + col, ldc,
                   R ? R + static_cast<int64_t>(m) * ldr + col : nullptr, ldr, act);
        }
      }
    }
  }
}

#else

void gemm_int8_amx(int, int, int, const uint8_t*, int, const MnConv&, float*, int, const float*, int, int, int,
                   int) {}

#endif

}  // namespace mn

// bf16 GEMM on AMX tiles (AMX builds; elsewhere these entry points are never reached: fused.py builds no bf16
// weights below the AMX level): the thread rounds its A rows to bf16 (K zero-padded to a multiple of 32, so that
// every tile is a whole one) and amx_tiles (amx.h) runs the tiles, tdpbf16ps multiplying bf16 pairs and summing in
// fp32; an AVX-512 epilogue adds the bias, the activation and the residual.
#include <algorithm>

#include "amx.h"
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
void store_sums(const float* t, int rows, int cols, const float* bias, float* C, int ldc, const float* R, int ldr,
                int act) {
  const __mmask16 mask = cols == 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __m512 b = _mm512_maskz_loadu_ps(mask, bias);
  for (int i = 0; i < rows; ++i) {
    __m512 v = activate(_mm512_add_ps(_mm512_loadu_ps(t + 16 * i), b), act);
    if (R) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, R + static_cast<int64_t>(i) * ldr));
    _mm512_mask_storeu_ps(C + static_cast<int64_t>(i) * ldc, mask, v);
  }
}

// fp32 rows rounded to bf16 × bf16 weights as amx_tiles' Op (amx.h). B is packed per panel of 16 columns (N
// padded to 16) as [Kp/2][16][2]: the pairs of consecutive k that tdpbf16ps reads per fp32 lane.
struct Bf16Tiles : TileOperands<float, uint16_t> {
  static constexpr bool kInt8 = false;
  using Sum = float;

  void gather(int m0, int rows) { to_bf16(A, lda, m0, rows, K, Kp, buf); }
  const uint16_t* a(int half, int step) const { return buf + static_cast<int64_t>(16 * half) * Kp + 32 * step; }
  const uint16_t* b(int panel, int step) const {
    return cv.wb + static_cast<int64_t>(panel) * Kp * 16 + static_cast<int64_t>(32 * step) * 16;
  }
  int b_stride(int) const { return 64; }
  void epilogue(const float* sums, int rows, int panel, int m) const {
    const int col = 16 * panel;
    store_sums(sums, rows, std::min(16, N - col), cv.bias + col, c_at(m, col), ldc, r_at(m, col), ldr, act);
  }
};

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
  Bf16Tiles op{{M, N, K, Kp, Kp / 32, 2 * Kp, A, lda, cv, C, ldc, R, ldr, act, gather_buffer<uint16_t>(Kp)}};
  amx_tiles(M, p0, p1, op);
}

#else

void tiles_configure() {}
void tiles_release() {}
void gemm_bf16(int, int, int, const float*, int, const MnConv&, float*, int, const float*, int, int, int, int) {}

#endif

}  // namespace mn

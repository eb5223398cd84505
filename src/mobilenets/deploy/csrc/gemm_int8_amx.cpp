// int8 GEMM on AMX tiles (AMX builds; gemm_int8 hands it products of at least 64 rows and 64 input channels, and
// the VNNI kernel keeps the thinner ones, on which tiles measured no faster: MobileNetV2 1.0 @ 224 int8 at
// batch 1 took 0.99× (one thread) and 0.94× (two) the VNNI level's time with this rule, 1.02× / 0.95× with
// tiles from 16 rows and 64 channels up).
//
// tdpbusd multiplies u8 codes by s8 weights and sums four products at a time into int32, exactly as vpdpbusd does,
// so the integer sums, and with the same epilogue the outputs, are those of the VNNI kernel. The thread copies its
// rows of codes into a buffer (K zero-padded to a multiple of 64, so that every tile is a whole one) and amx_tiles
// (amx.h) runs the tiles. B is read where fused.py packed it for the VNNI kernel, [K/4][panel width][4] per panel: a
// 16-wide panel's rows of 64 bytes are a B tile's rows as they are. An 8-wide last panel is loaded 32 bytes per row,
// so the tile's columns 8–15 read the next row's weights: those C columns are never stored. Past K the tiles read
// the next panel's weights (or the zero bytes fused.py appends after the last one), but they meet the zero columns
// of the A buffer and add nothing.
#include <algorithm>
#include <cstring>

#include "amx.h"
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
void store_sums(const int32_t* t, int rows, int cols, const MnConv& cv, int col, float* C, int ldc, const float* R,
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

// The codes × int8 weights as amx_tiles' Op (amx.h).
struct Int8Tiles : TileOperands<uint8_t, uint8_t> {
  static constexpr bool kInt8 = true;
  using Sum = int32_t;

  void gather(int m0, int rows) { gather_codes(A, lda, m0, rows, K, Kp, buf); }
  const uint8_t* a(int half, int step) const { return buf + static_cast<int64_t>(16 * half) * Kp + 64 * step; }
  int width(int panel) const { return std::min(16, N - 16 * panel); }
  // A panel's 64 k from step on: [K/4][width][4] at column 16·panel (every panel before it is 16 wide).
  const int8_t* b(int panel, int step) const {
    return cv.q + static_cast<int64_t>(16 * panel) * K + static_cast<int64_t>(64 * step) * width(panel);
  }
  int b_stride(int panel) const { return 4 * width(panel); }
  void epilogue(const int32_t* sums, int rows, int panel, int m) const {
    const int col = 16 * panel;
    store_sums(sums, rows, width(panel), cv, col, c_at(m, col), ldc, r_at(m, col), ldr, act);
  }
};

}  // namespace

void gemm_int8_amx(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, float* C, int ldc,
                   const float* R, int ldr, int act, int p0, int p1) {
  const int Kp = (K + 63) / 64 * 64;
  Int8Tiles op{{M, N, K, Kp, Kp / 64, Kp, A, lda, cv, C, ldc, R, ldr, act, gather_buffer<uint8_t>(Kp)}};
  amx_tiles(M, p0, p1, op);
}

#else

void gemm_int8_amx(int, int, int, const uint8_t*, int, const MnConv&, float*, int, const float*, int, int, int,
                   int) {}

#endif

}  // namespace mn

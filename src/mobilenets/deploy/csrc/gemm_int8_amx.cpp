// int8 GEMM on AMX tiles (AMX builds; gemm_int8 hands it the products on_tiles picks, kernels.h: at least 64 input
// and output channels and 7 rows. An earlier rule, at least 64 rows, kept every product of V2 at two threads on
// VNNI; with this one V2 int8 took 0.89–0.93 of the time at two threads and 0.89–0.91 at one, ab.py).
//
// tdpbusd multiplies u8 codes by s8 weights and sums four products at a time into int32, exactly as vpdpbusd does,
// so the integer sums, and with the same epilogue the outputs, are those of the VNNI kernel. The thread copies its
// rows of codes into a buffer (K zero-padded to a multiple of 64, so that every tile is a whole one) and amx_tiles
// (amx.h) runs the tiles. Where K is a multiple of 64 already (V2 @ 224: the 14-px rows' 64-wide expansions and
// 384- / 576-wide projections, the 28-px projections, the 7-px projections and the head) the tiles read the codes
// where they lie instead: a block's tiles then also read up to 15 rows past its last one, inside the scratch
// (mn_scratch_floats keeps a slack after its last buffer), and those rows only feed C rows that are never stored.
// Measured (experiments/engine/sources_ab.py, V2 int8, two threads, session 31): whole 32-row blocks alone in
// place 0.966–0.973 of the time against 0.976–1.007 for an unchanged copy; every block 0.976–0.987 of that again.
// B is read where fused.py packed it for the VNNI kernel, [K/4][panel width][4] per panel: a 16-wide panel's rows
// of 64 bytes are a B tile's rows as they are. An 8-wide last panel is loaded 32 bytes per row, so the tile's
// columns 8–15 read the next row's weights: those C columns are never stored. Past K the tiles read the next
// panel's weights (or the zero bytes fused.py appends after the last one), but they meet the zero columns of the A
// buffer and add nothing.
#include <algorithm>
#include <cstring>
#include <type_traits>

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
template <typename Out>
void store_sums(const int32_t* t, int rows, int cols, const MnConv& cv, int col, Out* C, int ldc, const float* R,
                int ldr, int act) {
  const __mmask16 mask = cols == 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __m512i corr = _mm512_maskz_loadu_epi32(mask, cv.corr + col);
  const __m512 scale = _mm512_maskz_loadu_ps(mask, cv.scale + col), bias = _mm512_maskz_loadu_ps(mask, cv.bias + col);
  for (int i = 0; i < rows; ++i) {
    const __m512i sums = _mm512_add_epi32(_mm512_loadu_si512(t + 16 * i), corr);
    __m512 v = activate(_mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, bias), act);
    if constexpr (std::is_same_v<Out, float>) {
      if (R) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, R + static_cast<int64_t>(i) * ldr));
      _mm512_mask_storeu_ps(C + static_cast<int64_t>(i) * ldc, mask, v);
    } else {  // rounded to fp16 (nearest even) as the VNNI kernel's fp16 epilogue rounds them
      _mm256_mask_storeu_epi16(C + static_cast<int64_t>(i) * ldc, mask,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
}

// The codes × int8 weights as amx_tiles' Op (amx.h).
template <typename Out>
struct Int8Tiles : TileOperands<uint8_t, uint8_t, Out> {
  using Base = TileOperands<uint8_t, uint8_t, Out>;
  using Base::A, Base::lda, Base::cv, Base::K, Base::Kp, Base::N, Base::buf, Base::ldc, Base::ldr, Base::act;
  static constexpr bool kInt8 = true;
  using Sum = int32_t;

  // Where the tiles read the current block's rows: in place (K unpadded) or the copy.
  const uint8_t* rows_at = nullptr;
  void gather(int m0, int rows) {
    if (K == Kp) {  // rows past M: read from the scratch's slack (mn_scratch_floats), never stored
      rows_at = A + static_cast<int64_t>(m0) * lda;
      this->a_stride = lda;
    } else {
      gather_codes(A, lda, m0, rows, K, Kp, buf);
      rows_at = buf;
      this->a_stride = Kp;
    }
  }
  const uint8_t* a(int half, int step) const {
    return rows_at + static_cast<int64_t>(16 * half) * this->a_stride + 64 * step;
  }
  int width(int panel) const { return std::min(16, N - 16 * panel); }
  // A panel's 64 k from step on: [K/4][width][4] at column 16·panel (every panel before it is 16 wide).
  const int8_t* b(int panel, int step) const {
    return cv.q + static_cast<int64_t>(16 * panel) * K + static_cast<int64_t>(64 * step) * width(panel);
  }
  int b_stride(int panel) const { return 4 * width(panel); }
  void epilogue(const int32_t* sums, int rows, int panel, int m) const {
    const int col = 16 * panel;
    store_sums(sums, rows, width(panel), cv, col, this->c_at(m, col), ldc, this->r_at(m, col), ldr, act);
  }
};

}  // namespace

template <typename Out>
void gemm_int8_amx(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, Out* C, int ldc,
                   const float* R, int ldr, int act, int p0, int p1) {
  const int Kp = (K + 63) / 64 * 64;
  Int8Tiles<Out> op{{M, N, K, Kp, Kp / 64, Kp, A, lda, cv, C, ldc, R, ldr, act, gather_buffer<uint8_t>(Kp)}};
  amx_tiles(M, p0, p1, op);
}
template void gemm_int8_amx<float>(int, int, int, const uint8_t*, int, const MnConv&, float*, int, const float*, int,
                                   int, int, int);
template void gemm_int8_amx<_Float16>(int, int, int, const uint8_t*, int, const MnConv&, _Float16*, int,
                                      const float*, int, int, int, int);

#else

template <typename Out>
void gemm_int8_amx(int, int, int, const uint8_t*, int, const MnConv&, Out*, int, const float*, int, int, int, int) {}
template void gemm_int8_amx<float>(int, int, int, const uint8_t*, int, const MnConv&, float*, int, const float*, int,
                                   int, int, int);

#endif

}  // namespace mn

// The tile loop both AMX GEMMs share (gemm_bf16.cpp, gemm_int8_amx.cpp; AMX builds only). A tile holds 16 rows of
// 64 bytes. Per block of 32 output rows the kernel copies its A rows into a buffer whose K is padded to whole
// tiles (Op::gather); then for each pair of 16-column panels four C tiles (2 row tiles × 2 panels: tmm0–3) sum
// the products of K's 64-byte steps through two A tiles (tmm4, tmm5) and two B tiles (tmm6, tmm7) with tdpbusd or
// tdpbf16ps, and the C tiles go through a small buffer to Op's epilogue.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "abi.h"

#if MN_ISA >= MN_ISA_AMX
namespace mn {

// What both AMX GEMMs' ops carry: the product's sizes (Kp: K padded to whole tiles; steps: its 64-byte steps;
// a_stride: the bytes between the A rows the tiles read, which an op's gather may set per block), A (In: fp32
// rows, or the codes), the weights, C (+ R) and the gather buffer (Buf: bf16, or the padded codes).
template <typename In, typename Buf, typename Out = float>
struct TileOperands {
  int M, N, K, Kp, steps, a_stride;
  const In* A;
  int lda;
  const MnConv& cv;
  Out* C;
  int ldc;
  const float* R;
  int ldr, act;
  Buf* buf;

  // C's and R's rows from m on at column col (R: nullptr without a residual).
  Out* c_at(int m, int col) const { return C + static_cast<int64_t>(m) * ldc + col; }
  const float* r_at(int m, int col) const { return R ? R + static_cast<int64_t>(m) * ldr + col : nullptr; }
};

// This thread's gather buffer: 32 rows of Kp elements (grown to the widest K seen; thread_local, as the pool's
// threads live on).
template <typename Buf>
Buf* gather_buffer(int Kp) {
  thread_local std::vector<Buf> buf;
  if (buf.size() < static_cast<size_t>(32) * Kp) buf.assign(static_cast<size_t>(32) * Kp, 0);
  return buf.data();
}

// tdpbusd and tdpbf16ps take their tile numbers as literals (GCC pastes them into the instruction's text), so the
// instruction is picked per use: kInt8 (u8 × s8 → int32) or not (bf16 pairs → fp32).
#define MN_TILE_DOT(Op, c, a, b) \
  do {                           \
    if constexpr (Op::kInt8)     \
      _tile_dpbusd(c, a, b);     \
    else                         \
      _tile_dpbf16ps(c, a, b);   \
  } while (0)

// Op provides: kInt8 and Sum (the C tiles' element type, int32_t or float); steps (K's 64-byte steps); gather(m0,
// rows) (A rows [m0, m0 + rows) into its buffer; rows past `rows` keep what they held: they only feed C rows that
// are never stored); a(half, step) and a_stride (the A tile of rows 16·half.., in bytes); b(panel, step) and
// b_stride(panel); epilogue(sums, rows, panel, m) (C rows m .. m + rows of a panel).
template <typename Op>
void amx_tiles(int M, int p0, int p1, Op& op) {
  alignas(64) typename Op::Sum ctile[4][16 * 16];
  for (int m0 = 0; m0 < M; m0 += 32) {
    const int rows = std::min(32, M - m0);
    op.gather(m0, rows);
    for (int p = p0; p < p1; p += 2) {
      const bool two = p + 1 < p1;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int s = 0; s < op.steps; ++s) {
        _tile_loadd(4, op.a(0, s), op.a_stride);
        _tile_loadd(6, op.b(p, s), op.b_stride(p));
        MN_TILE_DOT(Op, 0, 4, 6);
        if (rows > 16) {
          _tile_loadd(5, op.a(1, s), op.a_stride);
          MN_TILE_DOT(Op, 2, 5, 6);
        }
        if (two) {
          _tile_loadd(7, op.b(p + 1, s), op.b_stride(p + 1));
          MN_TILE_DOT(Op, 1, 4, 7);
          if (rows > 16) MN_TILE_DOT(Op, 3, 5, 7);
        }
      }
      _tile_stored(0, ctile[0], 64);
      if (two) _tile_stored(1, ctile[1], 64);
      if (rows > 16) {
        _tile_stored(2, ctile[2], 64);
        if (two) _tile_stored(3, ctile[3], 64);
      }
      for (int j = 0; j < (two ? 2 : 1); ++j)
        for (int half = 0; half < (rows > 16 ? 2 : 1); ++half)
          op.epilogue(ctile[2 * half + j], std::min(16, rows - 16 * half), p + j, m0 + 16 * half);
    }
  }
}

}  // namespace mn
#endif

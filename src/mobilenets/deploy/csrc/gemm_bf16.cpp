// bf16 GEMM: fp32 rows rounded to bf16 (nearest even; K zero-padded to a multiple of 32) times bf16 weights, the
// products summed in fp32. On AMX builds amx_tiles (amx.h) runs the tiles with tdpbf16ps; on AVX-512 builds a
// register tile runs vdpbf16ps (AVX512-BF16: fused.py builds bf16 weights at that level only where the CPU has it,
// so a CPU without it never reaches these instructions, written out in asm so that the library needs no
// -mavx512bf16). An AVX-512 epilogue adds the bias, the activation and the residual. AVX2 builds: never reached.
#include <algorithm>
#include <cstring>
#include <vector>

#include "amx.h"
#include "kernels.h"
#include "simd.h"

namespace mn {

#if MN_ISA >= MN_ISA_AVX512
namespace {

// 16 fp32 as bf16, nearest even (vcvtneps2bf16).
inline __m256i bf16_of(__m512 v) {
  __m256i r;
  asm("vcvtneps2bf16 %1, %0" : "=v"(r) : "v"(v));
  return r;
}

// The rows [m0, m0 + rows) of A (K wide) as bf16 in buf (rows Kp apart); columns K..Kp are zero. Rows past `rows`
// keep what they held: they only feed C rows that are never stored.
void to_bf16(const float* A, int lda, int m0, int rows, int K, int Kp, uint16_t* buf) {
  for (int i = 0; i < rows; ++i) {
    const float* a = A + static_cast<int64_t>(m0 + i) * lda;
    uint16_t* b = buf + static_cast<int64_t>(i) * Kp;
    for (int k = 0; k < Kp; k += 16) {
      const __mmask16 valid = K - k >= 16 ? 0xffff : K > k ? static_cast<__mmask16>((1u << (K - k)) - 1) : 0;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + k), bf16_of(_mm512_maskz_loadu_ps(valid, a + k)));
    }
  }
}

}  // namespace
#endif

#if MN_ISA >= MN_ISA_AMX

namespace {

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

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

#elif MN_ISA >= MN_ISA_AVX512

namespace {

inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// MR rows × NV panels of 16 columns: A's bf16 rows a (Kp apart) times the panels at b (each [Kp/2][16][2], Kp · 16
// apart), `pairs` pairs of k, then bias, activation and residual; the last panel's columns under `last`.
template <int MR, int NV>
inline void tile_bf16(int pairs, const uint16_t* a, int Kp, const uint16_t* b, const float* bias, float* C, int ldc,
                      const float* R, int ldr, int act, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t next_panel = static_cast<int64_t>(Kp) * 16;
  for (int s = 0; s < pairs; ++s) {
    __m512i w[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) w[j] = _mm512_loadu_si512(b + j * next_panel + 32 * s);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t two;  // a[k], a[k + 1]
      std::memcpy(&two, a + static_cast<int64_t>(i) * Kp + 2 * s, 4);
      const __m512i x = _mm512_set1_epi32(two);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = dpbf16(acc[i][j], x, w[j]);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    const __mmask16 mask = j == NV - 1 ? last : 0xffff;
    const __m512 bj = _mm512_maskz_loadu_ps(mask, bias + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512 v = activate(_mm512_add_ps(acc[i][j], bj), act);
      if (R) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, R + static_cast<int64_t>(i) * ldr + 16 * j));
      _mm512_mask_storeu_ps(C + static_cast<int64_t>(i) * ldc + 16 * j, mask, v);
    }
  }
}

template <int NV>
inline void tile_bf16_rows(int mr, int pairs, const uint16_t* a, int Kp, const uint16_t* b, const float* bias,
                           float* C, int ldc, const float* R, int ldr, int act, __mmask16 last) {
  switch (mr) {
    case 8: tile_bf16<8, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 7: tile_bf16<7, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 6: tile_bf16<6, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 5: tile_bf16<5, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 4: tile_bf16<4, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 3: tile_bf16<3, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    case 2: tile_bf16<2, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
    default: tile_bf16<1, NV>(pairs, a, Kp, b, bias, C, ldc, R, ldr, act, last); break;
  }
}

// Rows of A are rounded to bf16 this many at a time, into a thread's buffer.
constexpr int kBf16Rows = 64;

}  // namespace

// Output panels [p0, p1): per block of kBf16Rows rows, A rounded to bf16 once, then two panels at a time on 8 × 2
// tiles (the last panel's width masked: N need not be a multiple of 16).
void gemm_bf16(int M, int N, int K, const float* A, int lda, const MnConv& cv, float* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1) {
  if (p0 >= p1) return;
  const int Kp = (K + 31) / 32 * 32, pairs = (K + 1) / 2;
  thread_local std::vector<uint16_t> rounded;
  if (rounded.size() < static_cast<size_t>(kBf16Rows) * Kp) rounded.assign(static_cast<size_t>(kBf16Rows) * Kp, 0);
  uint16_t* buf = rounded.data();
  for (int m0 = 0; m0 < M; m0 += kBf16Rows) {
    const int rows = std::min(kBf16Rows, M - m0);
    to_bf16(A, lda, m0, rows, K, Kp, buf);
    for (int p = p0; p < p1;) {
      const int col = 16 * p;
      const bool pair = p + 1 < p1;
      const int width = std::min(16, N - col - (pair ? 16 : 0));  // of the tile's last panel
      const __mmask16 last = static_cast<__mmask16>((1u << width) - 1);
      const uint16_t* b = cv.wb + static_cast<int64_t>(p) * Kp * 16;
      row_tiles(rows, 8, [&](int m, int mr) {
        const int64_t row = static_cast<int64_t>(m0 + m);
        float* c = C + row * ldc + col;
        const float* r = R ? R + row * ldr + col : nullptr;
        const uint16_t* a = buf + static_cast<int64_t>(m) * Kp;
        if (pair)
          tile_bf16_rows<2>(mr, pairs, a, Kp, b, cv.bias + col, c, ldc, r, ldr, act, last);
        else
          tile_bf16_rows<1>(mr, pairs, a, Kp, b, cv.bias + col, c, ldc, r, ldr, act, last);
      });
      p += pair ? 2 : 1;
    }
  }
}

#else

void gemm_bf16(int, int, int, const float*, int, const MnConv&, float*, int, const float*, int, int, int, int) {}

#endif

#if MN_ISA < MN_ISA_AMX
void tiles_configure() {}
void tiles_release() {}
#endif

}  // namespace mn

// A MobileNet-specific inference engine, fp32 or int8, for x86-64 with AVX2 + FMA (fused.py is the Python side).
//
// Why it exists (V2 §5.1, the hardware argument): an inverted residual block's wide expansion never has to be
// materialised whole. For large feature maps each thread keeps a ring of three expanded rows, computes one
// depthwise output row from them and projects it straight away, so the t-times-wider tensor lives only in
// the core's cache. Small maps (whose expansion fits in L2 anyway) run layer by layer with the threads
// sharing out channel panels. One parallel region covers the whole network; threads meet at a spin barrier
// after each block instead of a thread-pool dispatch per operator, and take rows and panels as they go (see
// Share) rather than a fixed share each.
//
// Layout: activations NHWC fp32; 1×1 weights packed K-major in panels of 16 output channels (the last panel
// may be 8 wide); depthwise weights [9][C]; BatchNorm already folded into every convolution (fused.py).
// Channel counts of convolutions must be multiples of 8 (V1/V2 round every width to 8).
//
// int8 (optional, per GEMM: the stem, the 1×1 convolutions, the linear layers): the input is quantised on the fly
// to 7-bit codes 0..127 (a calibrated scale and zero point per tensor) and the weights to int8 per output channel
// within ±63. Without VNNI (this CPU family has AVX2 only) a product costs vpmaddubsw (pairs of products summed
// in int16) and vpmaddwd (to int32); with these ranges two vpmaddubsw results, i.e. four products, still fit in
// int16 (4·127·63 = 32004 < 32767), so one vpaddw lets one vpmaddwd serve eight products instead of four: a
// quarter fewer multiply-unit instructions per product. Sums are int32; the epilogue returns to fp32. Depthwise
// convolutions, residuals and the activations between layers stay fp32.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

enum Act : int { LINEAR = 0, RELU = 1, RELU6 = 2 };
enum Kind : int { STEM = 1, BLOCK = 2, POINTWISE = 3, POOL_FC = 4 };

// A 1×1 convolution (or the stem's im2col GEMM, or the classifier): fp32 weights, or int8 ones.
struct Conv {
  const float* w;        // fp32 weights, packed [K] x [N] in panels; unused when q is set
  const float* bias;     // [N]
  const int8_t* q;       // int8 weights (±63), packed per panel as [K/4][panel width][4]; nullptr: run in fp32
  const float* scale;    // [N]: input scale × weight scale of the channel
  const int32_t* corr;   // [N]: −(input zero point) · Σ_k q[k][n]
  float inv_scale;       // 1 / input scale, to quantise the input
  int32_t zero;          // input zero point
};

// One layer of the program, filled in by fused.py (ctypes mirrors this struct field by field).
struct Layer {
  int32_t kind;
  int32_t cin, cmid, cout;   // BLOCK: in, expanded (== cin without expansion), out. STEM: 3·3·in, -, out.
  int32_t stride;            // STEM / BLOCK depthwise stride (1 or 2)
  int32_t act_mid, act_out;  // activation after expansion+depthwise / after the output conv
  int32_t has_expand, residual;
  int32_t stem_in_chans;
  Conv expand;               // [cin] x [cmid]
  const float *w_dw, *b_dw;  // [9][cmid]
  Conv out;                  // [cmid] x [cout] (STEM: [27] x [cout]; POOL_FC: [cin] x [cout])
  int32_t dw_codes;          // BLOCK with an int8 `out`: w_dw, b_dw are pre-divided by its input scale (see Sink)
};

inline __m256 activate(__m256 v, int act) {
  if (act == RELU) return _mm256_max_ps(v, _mm256_setzero_ps());
  if (act == RELU6) return _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
  return v;
}

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

// Row tiles for M rows: full tiles of `rows`, but a remainder shorter than 4 is merged with the last full tile
// and the two split evenly (a tile of 1–3 rows has too few accumulators to hide the FMA latency).
template <typename F>
inline void row_tiles(int M, int rows, F&& f) {
  int m = 0;
  const int rem = M % rows;
  const int full_end = (rem > 0 && rem < 4 && M > rows) ? M - rem - rows : M - rem;
  for (; m < full_end; m += rows) f(m, rows);
  const int left = M - m;
  if (left > rows) {
    f(m, (left + 1) / 2);
    f(m + (left + 1) / 2, left / 2);
  } else if (left > 0) {
    f(m, left);
  }
}

// 1×1 convolution over M pixels as a GEMM, output channel panels [p0, p1) only (a thread's share).
void gemm(int M, int N, int K, const float* A, int lda, const float* Bp, const float* bias, float* C, int ldc,
          const float* R, int ldr, int act, int p0, int p1) {
  for (int p = p0; p < p1; ++p) {
    const int col = 16 * p;
    const int nr = std::min(16, N - col);
    const float* B = Bp + static_cast<int64_t>(col) * K;
    row_tiles(M, nr == 16 ? 6 : 12, [&](int m, int mr) {
      const float* a = A + static_cast<int64_t>(m) * lda;
      float* c = C + static_cast<int64_t>(m) * ldc + col;
      const float* r = R ? R + static_cast<int64_t>(m) * ldr + col : nullptr;
      if (nr == 16) {
        tile_rows<16>(mr, K, a, lda, B, bias + col, c, ldc, r, ldr, act);
      } else {
        // An 8-wide panel takes 12 rows at once; 7..11 rows go in two near-equal tiles.
        const int first = (mr == 12 || mr <= 6) ? mr : (mr + 1) / 2;
        tile_rows<8>(first, K, a, lda, B, bias + col, c, ldc, r, ldr, act);
        if (first < mr)
          tile_rows<8>(mr - first, K, a + static_cast<int64_t>(first) * lda, lda, B, bias + col,
                       c + static_cast<int64_t>(first) * ldc, ldc, r ? r + static_cast<int64_t>(first) * ldr : nullptr,
                       ldr, act);
      }
    });
  }
}

inline int panels(int n) { return (n + 15) / 16; }

// The int8 tile: C = act(scale · (Σ_k a·q + corr) + bias) (+ R), K in steps of 8 (one int32 lane = 4 products;
// two such steps share one vpmaddwd, see the top of the file). K must be a multiple of 8.
template <int MR, int NR>
inline void tile_s8(int K, const uint8_t* A, int lda, const int8_t* B, const Conv& cv, int col, float* C, int ldc,
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
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0[j]), _mm256_maddubs_epi16(a1, b1[j]));
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(pairs, ones));
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
inline void tile_s8_rows(int mr, int K, const uint8_t* A, int lda, const int8_t* B, const Conv& cv, int col, float* C,
                         int ldc, const float* R, int ldr, int act) {
  switch (mr) {
    case 4: tile_s8<4, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 3: tile_s8<3, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    case 2: tile_s8<2, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
    default: tile_s8<1, NR>(K, A, lda, B, cv, col, C, ldc, R, ldr, act); break;
  }
}

void gemm_s8(int M, int N, int K, const uint8_t* A, int lda, const Conv& cv, float* C, int ldc, const float* R,
             int ldr, int act, int p0, int p1) {
  for (int p = p0; p < p1; ++p) {
    const int col = 16 * p;
    const int nr = std::min(16, N - col);
    const int8_t* B = cv.q + static_cast<int64_t>(col) * K;
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
}

// Eight int32 values clamped to 0..127, as bytes in the low 8 bytes.
inline __m128i pack_codes(__m256i v) {
  const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_min_epu8(_mm_packus_epi16(w16, w16), _mm_set1_epi8(127));
}

// The 7-bit codes of eight values, round(x / scale) + zero clamped to 0..127, in the low 8 bytes.
inline __m128i codes8(__m256 x, __m256 inv_scale, __m256i zero) {
  return pack_codes(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x, inv_scale)), zero));
}

inline void store_codes(uint8_t* q, __m256 x, __m256 inv_scale, __m256i zero) {
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), codes8(x, inv_scale, zero));
}

// The codes of eight pixels of three channel rows, interleaved as 24 bytes r0 g0 b0 r1 g1 b1 … at q.
inline void store_rgb_codes(uint8_t* q, const float* r, const float* g, const float* b, __m256 inv, __m256i zero) {
  const __m128i rg = _mm_unpacklo_epi64(codes8(_mm256_loadu_ps(r), inv, zero), codes8(_mm256_loadu_ps(g), inv, zero));
  const __m128i bb = codes8(_mm256_loadu_ps(b), inv, zero);
  // Output byte p takes pixel p / 3 of channel p % 3: red and green from rg (bytes 0–7, 8–15), blue from bb.
  const __m128i lo = _mm_or_si128(
      _mm_shuffle_epi8(rg, _mm_setr_epi8(0, 8, -1, 1, 9, -1, 2, 10, -1, 3, 11, -1, 4, 12, -1, 5)),
      _mm_shuffle_epi8(bb, _mm_setr_epi8(-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1)));
  const __m128i hi = _mm_or_si128(
      _mm_shuffle_epi8(rg, _mm_setr_epi8(13, -1, 6, 14, -1, 7, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1)),
      _mm_shuffle_epi8(bb, _mm_setr_epi8(-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, -1, -1, -1, -1, -1, -1)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), lo);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q + 16), hi);
}

// The codes of an M × K block of fp32.
void quantize_rows(const float* X, int ldx, int M, int K, uint8_t* Q, int ldq, float inv_scale, int zero) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const __m256i z = _mm256_set1_epi32(zero);
  for (int m = 0; m < M; ++m) {
    const float* x = X + static_cast<int64_t>(m) * ldx;
    uint8_t* q = Q + static_cast<int64_t>(m) * ldq;
    int k = 0;
    for (; k + 8 <= K; k += 8) store_codes(q + k, _mm256_loadu_ps(x + k), inv, z);
    for (; k < K; ++k)  // the same rounding (to nearest even) as the vector conversion
      q[k] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::nearbyint(x[k] * inv_scale)) + zero, 0, 127));
  }
}

// The codes an int8 convolution reads of an M × K input (rows lda apart), quantised into buf (rows K apart);
// nullptr for an fp32 convolution.
inline const uint8_t* input_codes(const Conv& cv, const float* A, int lda, int M, int K, uint8_t* buf) {
  if (!cv.q) return nullptr;
  quantize_rows(A, lda, M, K, buf, K, cv.inv_scale, cv.zero);
  return buf;
}

// A 1×1 convolution over M pixels, fp32 or int8 as the Conv says. An int8 one quantises A into qbuf first,
// unless the caller passes the codes (Aq) itself.
void conv1x1(const Conv& cv, int M, int N, int K, const float* A, int lda, const uint8_t* Aq, float* C, int ldc,
             const float* R, int ldr, int act, int p0, int p1, uint8_t* qbuf) {
  if (!cv.q) {
    gemm(M, N, K, A, lda, cv.w, cv.bias, C, ldc, R, ldr, act, p0, p1);
    return;
  }
  if (p0 >= p1) return;
  if (!Aq) Aq = input_codes(cv, A, lda, M, K, qbuf);
  gemm_s8(M, N, K, Aq, K, cv, C, ldc, R, ldr, act, p0, p1);
}

// Where a depthwise row goes: fp32 (f), or straight to the 7-bit codes an int8 projection reads (q), which
// spares a store, a reload and a quantisation pass. Offsets count elements (pixel · C + channel) in both.
// Scaled: the depthwise weights were divided by the codes' scale and the zero point is 0 (a ReLU / ReLU6 output),
// so the sums are the codes before rounding and clamping; the activation is left to the clamp to 0..127 (ReLU6's
// 6 lies at or above code 127, the calibrated maximum being at most 6). Four instructions fewer per vector.
// The depthwise kernels are compiled per sink mode (a branch per vector cost int8 1.3–5 %, interleaved A/B).
struct Sink {
  enum Mode : int { FP32 = 0, SCALED_CODES = 1, CODES = 2 };
  float* f;
  uint8_t* q;
  float inv_scale;
  int zero;
  bool scaled;
  int mode() const { return !q ? FP32 : scaled ? SCALED_CODES : CODES; }
  template <int MODE>
  inline void put(int64_t at, __m256 v) const {
    if constexpr (MODE == FP32) {
      _mm256_storeu_ps(f + at, v);
    } else if constexpr (MODE == SCALED_CODES) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + at), pack_codes(_mm256_cvtps_epi32(v)));
    } else {
      store_codes(q + at, v, _mm256_set1_ps(inv_scale), _mm256_set1_epi32(zero));
    }
  }
};

// NO neighbouring outputs x0 .. x0+NO−1 of a 3×3 depthwise row for channels [c0, c1) (pixels outside, channels
// inside: the group's input columns stay in L1 while it runs). Per 8 channels: NO independent accumulators
// (eight keep both FMA pipes busy despite the FMA latency), the three weights of a kernel row in registers,
// each input column loaded once and fed to every output whose window holds it. LEFT / RIGHT: the first / last
// input column is the zero padding (x0 = 0 / the row's end), skipped at compile time.
template <int S, int NO, bool LEFT, bool RIGHT, int MODE>
void depthwise_run(const float* const rows[3], int x0, int C, int c0, int c1, const float* w, const float* bias,
                   const Sink& out, int act) {
  constexpr int NI = (NO - 1) * S + 3;  // input columns the NO outputs read
  const int64_t first = static_cast<int64_t>(x0 * S - 1) * C;
  for (int c = c0; c < c1; c += 8) {
    __m256 acc[NO];
    const __m256 bv = _mm256_loadu_ps(bias + c);
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) acc[j] = bv;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ++ky) {
      const __m256 wk[3] = {_mm256_loadu_ps(w + (3 * ky) * C + c), _mm256_loadu_ps(w + (3 * ky + 1) * C + c),
                            _mm256_loadu_ps(w + (3 * ky + 2) * C + c)};
      // One pointer stepped column by column (the empty asm keeps the compiler from turning the steps back into
      // 17 precomputed offsets, which it would spill: two scalar loads per vector load).
      const float* r = rows[ky] + first + c + (LEFT ? C : 0);
#pragma GCC unroll 17
      for (int col = LEFT ? 1 : 0; col < (RIGHT ? NI - 1 : NI); ++col) {
        const __m256 v = _mm256_loadu_ps(r);
        r += C;
        asm("" : "+r"(r));
#pragma GCC unroll 8
        for (int j = 0; j < NO; ++j) {
          const int k = col - j * S;
          if (k >= 0 && k <= 2) acc[j] = _mm256_fmadd_ps(v, wk[k], acc[j]);
        }
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NO; ++j) out.put<MODE>(static_cast<int64_t>(x0 + j) * C + c, activate(acc[j], act));
  }
}

// The right padding, when a group needs it, is always its last input column.
template <int S, int NO, int MODE>
void depthwise_group(const float* const rows[3], int Wi, int x0, int C, int c0, int c1, const float* w,
                     const float* bias, const Sink& out, int act) {
  const bool left = x0 == 0, right = (x0 + NO - 1) * S + 1 >= Wi;
  if (!left && !right)
    depthwise_run<S, NO, false, false, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else if (left && !right)
    depthwise_run<S, NO, true, false, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else if (!left)
    depthwise_run<S, NO, false, true, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
  else
    depthwise_run<S, NO, true, true, MODE>(rows, x0, C, c0, c1, w, bias, out, act);
}

// One output row of a 3×3 depthwise convolution (padding 1) for channels [c0, c1). rows[0..2] are the input
// rows y·s−1, y·s, y·s+1 (a zero row where they fall outside the image), each Wi pixels of C channels. The row
// goes in groups of eight outputs, the remainder as one shorter group.
template <int S, int MODE>
void depthwise_row_s(const float* const rows[3], int Wi, int Wo, int C, const float* w, const float* bias,
                     const Sink& out, int c0, int c1, int act) {
  int x = 0;
  for (; x + 8 <= Wo; x += 8) depthwise_group<S, 8, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act);
  switch (Wo - x) {
    case 7: depthwise_group<S, 7, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 6: depthwise_group<S, 6, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 5: depthwise_group<S, 5, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 4: depthwise_group<S, 4, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 3: depthwise_group<S, 3, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 2: depthwise_group<S, 2, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    case 1: depthwise_group<S, 1, MODE>(rows, Wi, x, C, c0, c1, w, bias, out, act); break;
    default: break;
  }
}

void depthwise_row(const float* const rows[3], int Wi, int Wo, int stride, int C, const float* w, const float* bias,
                   const Sink& out, int c0, int c1, int act) {
  switch (out.mode() * 2 + (stride == 1 ? 0 : 1)) {
    case 0: depthwise_row_s<1, Sink::FP32>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 1: depthwise_row_s<2, Sink::FP32>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 2: depthwise_row_s<1, Sink::SCALED_CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 3: depthwise_row_s<2, Sink::SCALED_CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    case 4: depthwise_row_s<1, Sink::CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
    default: depthwise_row_s<2, Sink::CODES>(rows, Wi, Wo, C, w, bias, out, c0, c1, act); break;
  }
}

struct Barrier {
  std::atomic<int> count{0};
  std::atomic<int> generation{0};
  int threads = 1;
  void wait() {
    if (threads == 1) return;
    const int gen = generation.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      count.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_acq_rel);
    } else {
      while (generation.load(std::memory_order_acquire) == gen) _mm_pause();
    }
  }
};

// Work is shared out while it runs, not fixed in advance: on this shared host one vCPU is often slowed by a
// neighbour for a while, and with a fixed half each the other thread then waited at the barrier (measured: up to
// a quarter of a call). Each thread owns one contiguous segment of a region's items (rows, or channel panels) and
// takes them from the front, in order (a ring of expanded rows carries over from one to the next); a thread done
// with its own takes what is left of the others' from the back. A segment's state is one word: the region it
// belongs to (epoch, 32 bits), then its front and back (16 bits each); a state of an earlier region reads as
// the whole segment untaken, so nothing needs resetting between regions (a barrier separates them).
struct alignas(64) Segment {
  std::atomic<uint64_t> state{0};
};

constexpr int kMaxItems = 65535;  // front and back are 16-bit

// What the threads sharing one image share.
struct Team {
  explicit Team(int n) : threads(n), segments(new Segment[n]) { bar.threads = n; }
  int threads;
  Barrier bar;
  std::unique_ptr<Segment[]> segments;
};

// One thread of a team.
struct Member {
  Team& team;
  int t;
  uint32_t epoch = 0;  // regions begun so far; every thread begins the same ones
  int threads() const { return team.threads; }
  void wait() { team.bar.wait(); }
};

inline void split(int n, int t, int threads, int* lo, int* hi) {
  *lo = static_cast<int>(static_cast<int64_t>(n) * t / threads);
  *hi = static_cast<int>(static_cast<int64_t>(n) * (t + 1) / threads);
}

// One region's units [0, units) as one thread of the team sees them, the items being chunks of `per` units (the
// last may be shorter). Every thread of the team must open the region and drain it, and a barrier must come
// before the next region's items are taken.
class Share {
 public:
  Share(Member& m, int units, int per = 1)
      : m_(m), units_(units), per_(per), n_((units + per - 1) / per), epoch_(++m.epoch), seg_(m.t) {}

  // The units [*lo, *hi) of this thread's next item; false once none is left anywhere.
  bool next(int* lo, int* hi) {
    const int item = next();
    if (item < 0) return false;
    *lo = item * per_, *hi = std::min(units_, *lo + per_);
    return true;
  }

  // This thread's next item, -1 once none is left anywhere.
  int next() {
    const int T = m_.threads();
    if (T == 1) return alone_ < n_ ? alone_++ : -1;
    for (; tried_ < T; ++tried_, seg_ = (seg_ + 1) % T) {
      int lo, hi;
      split(n_, seg_, T, &lo, &hi);
      const int item = take(m_.team.segments[seg_].state, lo, hi, seg_ != m_.t);
      if (item >= 0) return item;
    }
    return -1;
  }

 private:
  int take(std::atomic<uint64_t>& state, int lo, int hi, bool from_back) const {
    uint64_t cur = state.load(std::memory_order_relaxed);
    for (;;) {
      int front = lo, back = hi;
      if (cur >> 32 == epoch_) front = static_cast<int>(cur & 0xffff), back = static_cast<int>((cur >> 16) & 0xffff);
      if (front >= back) return -1;
      const int item = from_back ? --back : front++;
      const uint64_t next = (static_cast<uint64_t>(epoch_) << 32) | (static_cast<uint64_t>(back) << 16) |
                            static_cast<uint64_t>(front);
      if (state.compare_exchange_weak(cur, next, std::memory_order_relaxed)) return item;
    }
  }

  Member& m_;
  const int units_, per_, n_;
  const uint32_t epoch_;
  int seg_, tried_ = 0;
  int alone_ = 0;  // a team of one takes the items in order, no atomics needed
};

// Channel panels in chunks: about eight per thread (one panel per item balanced no better and cost 2 % more with
// two threads, 2–4 % alone: measured), all in one for a thread alone.
inline int panel_chunk(int n, int threads) {
  return threads == 1 ? std::max(n, 1) : std::max(1, (n + 8 * threads - 1) / (8 * threads));
}

// Sizes of every buffer, from one walk over the program (the run and the scratch query share it).
struct Plan {
  int64_t act = 0;        // largest activation map (floats), two of them ping-pong
  int64_t wide = 0;       // largest whole expanded map of a small-map block (two: expansion, depthwise)
  int64_t ring = 0;       // per thread: three expanded rows + one depthwise row + one zero row
  int64_t row_buf = 0;    // per thread: stem im2col row
  int64_t pooled = 0;
  int64_t padded = 0;     // the stem's zero-padded NHWC copy of the image
  int64_t qrow = 0;       // per thread, bytes: the 7-bit codes of one int8 GEMM's input
  int64_t qwide = 0;      // bytes: the codes of a small-map block's depthwise output
};

constexpr int kFuseMinWidth = 28;  // maps at least this wide stream rows through the ring; narrower run whole

Plan make_plan(const Layer* layers, int n_layers, int H, int W) {
  Plan p;
  int h = H, w = W;
  for (int i = 0; i < n_layers; ++i) {
    const Layer& L = layers[i];
    if (L.kind == STEM) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      p.row_buf = std::max<int64_t>(p.row_buf, static_cast<int64_t>(wo) * L.cin);
      p.padded = std::max<int64_t>(p.padded, static_cast<int64_t>(h + 2) * (w + 2) * L.stem_in_chans);
      h = ho, w = wo;
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
    } else if (L.kind == BLOCK) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      if (w >= kFuseMinWidth) {
        p.ring = std::max<int64_t>(p.ring, static_cast<int64_t>(5) * w * L.cmid);
        p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(w) * std::max(L.cin, L.cmid));
      } else {
        p.wide = std::max<int64_t>(p.wide, static_cast<int64_t>(h) * w * L.cmid);
        p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(h) * w * L.cin);
        p.qwide = std::max<int64_t>(p.qwide, static_cast<int64_t>(ho) * wo * L.cmid);
      }
      p.ring = std::max<int64_t>(p.ring, static_cast<int64_t>(5) * std::min(w, kFuseMinWidth) * L.cmid);
      h = ho, w = wo;
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
    } else if (L.kind == POINTWISE) {
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
      p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(h) * w * L.cin);
    } else if (L.kind == POOL_FC) {
      p.pooled = std::max<int64_t>(p.pooled, L.cin + L.cmid);  // the pooled features, then the pre-logits
      p.qrow = std::max<int64_t>(p.qrow, std::max(L.cin, L.cmid));
    }
  }
  return p;
}

inline int64_t round_up(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte steps between buffers

struct Scratch {  // one group's views into the caller's scratch memory
  float *act0, *act1, *wide0, *wide1, *pooled, *padded;
  uint8_t* qwide;
  std::vector<float*> ring;  // per thread of the group
  std::vector<float*> row;
  std::vector<uint8_t*> qrow;
};

inline int64_t bytes_as_floats(int64_t bytes) { return (bytes + 3) / 4; }

int64_t group_floats(const Plan& p, int threads) {
  return 2 * round_up(p.act) + 2 * round_up(p.wide) + round_up(p.pooled) + round_up(p.padded) +
         round_up(bytes_as_floats(p.qwide)) +
         threads * (round_up(p.ring) + round_up(p.row_buf) + round_up(bytes_as_floats(p.qrow)));
}

Scratch carve(const Plan& p, int threads, float* base) {
  Scratch s;
  float* q = base;
  auto take = [&](int64_t n) { float* r = q; q += round_up(n); return r; };
  s.act0 = take(p.act), s.act1 = take(p.act), s.wide0 = take(p.wide), s.wide1 = take(p.wide);
  s.pooled = take(p.pooled), s.padded = take(p.padded);
  s.qwide = reinterpret_cast<uint8_t*>(take(bytes_as_floats(p.qwide)));
  for (int t = 0; t < threads; ++t) {
    s.ring.push_back(take(p.ring)), s.row.push_back(take(p.row_buf));
    s.qrow.push_back(reinterpret_cast<uint8_t*>(take(bytes_as_floats(p.qrow))));
  }
  return s;
}

// Stem: 3×3 convolution, stride s, padding 1, as a GEMM over gathered patches. The threads first copy the NCHW
// image into a padded NHWC buffer (sharing out its rows), so that each output pixel's 3×3×C patch is three
// contiguous runs of 3·C values. T = float: fp32. T = uint8_t: the image quantised to the int8 GEMM's codes (the
// padding is the zero point, i.e. 0.0) and K = 9·C rounded up to 8, the extra values meeting zero weights.
template <typename T>
void stem_pad(const Layer& L, const float* img, int H, int W, T* padded, T* col, Member& me) {
  constexpr bool kInt8 = std::is_same_v<T, uint8_t>;
  const int C = L.stem_in_chans, Wp = W + 2;
  const T pad = kInt8 ? static_cast<T>(L.out.zero) : T(0);
  Share copy(me, H + 2);
  for (int y; (y = copy.next()) >= 0;) {
    T* row = padded + static_cast<int64_t>(y) * Wp * C;
    if (y == 0 || y == H + 1) {
      std::fill(row, row + static_cast<int64_t>(Wp) * C, pad);
      continue;
    }
    std::fill(row, row + C, pad);
    std::fill(row + static_cast<int64_t>(W + 1) * C, row + static_cast<int64_t>(Wp) * C, pad);
    int x0 = 0;
    if constexpr (kInt8) {
      if (C == 3) {  // RGB: eight pixels at a time quantised and interleaved in registers
        const float* src = img + static_cast<int64_t>(y - 1) * W;
        const int64_t plane = static_cast<int64_t>(H) * W;
        const __m256 inv = _mm256_set1_ps(L.out.inv_scale);
        const __m256i zero = _mm256_set1_epi32(L.out.zero);
        for (; x0 + 8 <= W; x0 += 8)
          store_rgb_codes(row + (x0 + 1) * 3, src + x0, src + plane + x0, src + 2 * plane + x0, inv, zero);
      }
    }
    for (int ci = 0; ci < C && x0 < W; ++ci) {
      const float* src = img + (static_cast<int64_t>(ci) * H + (y - 1)) * W + x0;
      const int n = W - x0;
      if constexpr (kInt8) {  // the channel's row quantised into `col` (free until the GEMM), then spread
        quantize_rows(src, n, 1, n, col, n, L.out.inv_scale, L.out.zero);
        for (int x = 0; x < n; ++x) row[(x0 + x + 1) * C + ci] = col[x];
      } else {
        for (int x = 0; x < n; ++x) row[(x0 + x + 1) * C + ci] = src[x];
      }
    }
  }
}

// The stem's output row y (Wo pixels × cout, fp32) into dst, from the padded image; col: the thread's patch row.
template <typename T>
void stem_row(const Layer& L, const T* padded, int W, T* col, int y, int Wo, float* dst) {
  constexpr bool kInt8 = std::is_same_v<T, uint8_t>;
  const int C = L.stem_in_chans, Wp = W + 2, K = L.cin, run = 3 * C;
  for (int x = 0; x < Wo; ++x) {
    T* c = col + static_cast<int64_t>(x) * K;  // (ky, kx, ci) order, as fused.py packs the weights
    const T* src = padded + (static_cast<int64_t>(y * L.stride) * Wp + x * L.stride) * C;
    if (kInt8 && C == 3 && K == 32) {
      // Three 16-byte copies at offsets 0, 9, 18, each overwriting the previous one's surplus; the last one's
      // runs 2 bytes into the next patch (written after this one; the buffers have room past the end), and
      // bytes 27..31 keep codes that meet zero weights.
      for (int ky = 0; ky < 3; ++ky)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(c + ky * 9),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + static_cast<int64_t>(ky) * Wp * 3)));
      continue;
    }
    if (C == 3) {  // RGB: fixed-size copies the compiler inlines (a call per run costs more than the copy)
      for (int ky = 0; ky < 3; ++ky) std::memcpy(c + ky * 9, src + static_cast<int64_t>(ky) * Wp * 3, 9 * sizeof(T));
    } else {
      for (int ky = 0; ky < 3; ++ky)
        std::memcpy(c + ky * run, src + static_cast<int64_t>(ky) * Wp * C, run * sizeof(T));
    }
    std::fill(c + 3 * run, c + K, T(0));
  }
  if constexpr (kInt8)
    gemm_s8(Wo, L.cout, K, col, K, L.out, dst, L.cout, nullptr, 0, L.act_out, 0, panels(L.cout));
  else
    gemm(Wo, L.cout, K, col, K, L.out.w, L.out.bias, dst, L.cout, nullptr, 0, L.act_out, 0, panels(L.cout));
}

template <typename T>
void run_stem(const Layer& L, const float* img, int H, int W, float* out, int Ho, int Wo, T* padded, T* col,
              Member& me) {
  stem_pad(L, img, H, W, padded, col, me);
  me.wait();
  Share rows(me, Ho);
  for (int y; (y = rows.next()) >= 0;) stem_row(L, padded, W, col, y, Wo, out + static_cast<int64_t>(y) * Wo * L.cout);
}

// A block on a wide map: each thread streams its output rows through a ring of three expanded rows, made by
// produce(r, slot) (the expansion of input row r; or, for a first block without expansion or residual, the stem's
// output row r: its input is then never materialised). produced = false: the depthwise reads `in` itself.
template <typename Produce>
void run_block_rows(const Layer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* ring,
                    uint8_t* qrow, Member& me, bool produced, Produce&& produce) {
  const int E = L.cmid;
  const int64_t row_in = static_cast<int64_t>(W) * L.cin, row_e = static_cast<int64_t>(W) * E;
  float* slots = ring;                 // 3 rows of W × E
  float* dw = ring + 3 * row_e;        // one depthwise output row (Wo × E)
  float* zero = dw + row_e;            // padding row
  std::memset(zero, 0, sizeof(float) * row_e);
  int held[3] = {-1, -1, -1};  // the input row each slot holds (row r goes to slot r % 3)
  const float* rows[3];
  Share share(me, Ho);
  for (int y; (y = share.next()) >= 0;) {
    const int lo = y * L.stride - 1;
    for (int r = std::max(lo, 0); produced && r <= std::min(lo + 2, H - 1); ++r) {
      if (held[r % 3] == r) continue;
      produce(r, slots + (r % 3) * row_e);
      held[r % 3] = r;
    }
    for (int k = 0; k < 3; ++k) {
      const int r = lo + k;
      if (r < 0 || r >= H)
        rows[k] = zero;
      else
        rows[k] = produced ? slots + (r % 3) * row_e : in + r * row_in;
    }
    // An int8 projection gets the depthwise row as 7-bit codes straight away.
    const Sink sink{dw, L.out.q ? qrow : nullptr, L.out.inv_scale, L.out.zero, L.dw_codes != 0};
    depthwise_row(rows, W, Wo, L.stride, E, L.w_dw, L.b_dw, sink, 0, E, L.dw_codes ? LINEAR : L.act_mid);
    const float* res = L.residual ? in + static_cast<int64_t>(y) * row_in : nullptr;
    conv1x1(L.out, Wo, L.cout, E, dw, E, sink.q, out + static_cast<int64_t>(y) * Wo * L.cout, L.cout, res, L.cout,
            L.act_out, 0, panels(L.cout), qrow);
  }
}

// A block on a small map: whole-map GEMMs, the threads sharing out channel panels (no ring needed: it fits in
// L2): a panel's expansion and then its depthwise channels, a barrier, then the projection's panels.
void run_block_whole(const Layer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* wide0,
                     float* wide1, float* zero, uint8_t* qrow, uint8_t* qwide, Member& me) {
  const int E = L.cmid;
  const int64_t row_e = static_cast<int64_t>(W) * E;
  const float* expanded = L.has_expand ? wide0 : in;
  const uint8_t* codes = nullptr;  // an int8 expansion's input codes
  Share share(me, panels(E), panel_chunk(panels(E), me.threads()));
  for (int p0, p1; share.next(&p0, &p1);) {
    if (L.has_expand) {
      // Each thread quantises the whole (thin) input for itself, at its first panel: cheaper than a barrier.
      if (!codes) codes = input_codes(L.expand, in, L.cin, H * W, L.cin, qrow);
      conv1x1(L.expand, H * W, E, L.cin, in, L.cin, codes, wide0, E, nullptr, 0, L.act_mid, p0, p1, nullptr);
    }
    const int c0 = 16 * p0, c1 = std::min(E, 16 * p1);
    const float* rows[3];
    for (int y = 0; y < Ho; ++y) {
      for (int k = 0; k < 3; ++k) {
        const int r = y * L.stride - 1 + k;
        rows[k] = (r < 0 || r >= H) ? zero : expanded + r * row_e;
      }
      // An int8 projection reads 7-bit codes: each thread writes those of its own channels.
      const int64_t at = static_cast<int64_t>(y) * Wo * E;
      const Sink sink{wide1 + at, L.out.q ? qwide + at : nullptr, L.out.inv_scale, L.out.zero, L.dw_codes != 0};
      depthwise_row(rows, W, Wo, L.stride, E, L.w_dw, L.b_dw, sink, c0, c1, L.dw_codes ? LINEAR : L.act_mid);
    }
  }
  me.wait();
  Share projection(me, panels(L.cout), panel_chunk(panels(L.cout), me.threads()));
  for (int p0, p1; projection.next(&p0, &p1);)
    conv1x1(L.out, Ho * Wo, L.cout, E, wide1, E, L.out.q ? qwide : nullptr, out, L.cout, L.residual ? in : nullptr,
            L.cout, L.act_out, p0, p1, qrow);
}

// One image through the whole program by the T threads of a group (T = 1: one thread alone).
void run_image(const Layer* layers, int n_layers, const float* img, int H, int W, float* logits, const Scratch& s,
               Member& me) {
  const int t = me.t, T = me.threads();
  float* cur = s.act0;
  float* nxt = s.act1;
  int h = H, w = W, c = 0;
  for (int i = 0; i < n_layers; ++i) {
    const Layer& L = layers[i];
    if (L.kind == STEM) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      const Layer* B = i + 1 < n_layers ? &layers[i + 1] : nullptr;
      // A first block without expansion or residual takes the stem's rows straight into its ring (V2: 112 × 112 ×
      // 32 fp32 never written out and read back).
      const bool fuse = B && B->kind == BLOCK && !B->has_expand && !B->residual && wo >= kFuseMinWidth;
      const int bo = fuse ? (ho - 1) / B->stride + 1 : ho, bwo = fuse ? (wo - 1) / B->stride + 1 : wo;
      auto stem = [&](auto* padded, auto* col) {  // uint8_t for an int8 stem, float otherwise
        if (!fuse) {
          run_stem(L, img, h, w, cur, ho, wo, padded, col, me);
          return;
        }
        stem_pad(L, img, h, w, padded, col, me);
        me.wait();
        run_block_rows(*B, nullptr, ho, wo, cur, bo, bwo, s.ring[t], s.qrow[t], me, true,
                       [&](int r, float* slot) { stem_row(L, padded, w, col, r, wo, slot); });
      };
      if (L.out.q)
        stem(reinterpret_cast<uint8_t*>(s.padded), reinterpret_cast<uint8_t*>(s.row[t]));
      else
        stem(s.padded, s.row[t]);
      h = bo, w = bwo, c = fuse ? B->cout : L.cout;
      i += fuse;  // the fused block is done too
      me.wait();
      continue;
    }
    if (L.kind == BLOCK) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      if (w >= kFuseMinWidth) {
        const int E = L.cmid;
        run_block_rows(L, cur, h, w, nxt, ho, wo, s.ring[t], s.qrow[t], me, L.has_expand != 0,
                       [&](int r, float* slot) {
                         conv1x1(L.expand, w, E, L.cin, cur + static_cast<int64_t>(r) * w * L.cin, L.cin, nullptr,
                                 slot, E, nullptr, 0, L.act_mid, 0, panels(E), s.qrow[t]);
                       });
      } else {
        // The ring's zero row serves as padding here (sized for the widest small map).
        float* zero = s.ring[t] + 4 * static_cast<int64_t>(std::min(w, kFuseMinWidth)) * L.cmid;
        std::memset(zero, 0, sizeof(float) * static_cast<int64_t>(w) * L.cmid);
        run_block_whole(L, cur, h, w, nxt, ho, wo, s.wide0, s.wide1, zero, s.qrow[t], s.qwide, me);
      }
      h = ho, w = wo, c = L.cout;
    } else if (L.kind == POINTWISE) {
      // Each thread quantises the whole input for itself, then takes panels.
      const uint8_t* codes = input_codes(L.out, cur, L.cin, h * w, L.cin, s.qrow[t]);
      Share share(me, panels(L.cout), panel_chunk(panels(L.cout), T));
      for (int p0, p1; share.next(&p0, &p1);)
        conv1x1(L.out, h * w, L.cout, L.cin, cur, L.cin, codes, nxt, L.cout, nullptr, 0, L.act_out, p0, p1, nullptr);
      c = L.cout;
    } else if (L.kind == POOL_FC) {
      // Global average pool (each thread its channels), [V3's pre-logits 1×1 layer,] then the classifier (each
      // thread its output panels).
      int c0, c1;
      split(c / 8, t, T, &c0, &c1);
      const float inv = 1.0f / static_cast<float>(h * w);
      for (int ch = 8 * c0; ch < 8 * c1; ch += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int q = 0; q < h * w; ++q)
          acc = _mm256_add_ps(acc, _mm256_loadu_ps(cur + static_cast<int64_t>(q) * c + ch));
        _mm256_storeu_ps(s.pooled + ch, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
      }
      me.wait();
      const float* features = s.pooled;
      int n_features = L.cin;
      int p0, p1;
      if (L.has_expand) {
        float* pre = s.pooled + L.cin;
        split(panels(L.cmid), t, T, &p0, &p1);
        conv1x1(L.expand, 1, L.cmid, L.cin, s.pooled, L.cin, nullptr, pre, L.cmid, nullptr, 0, L.act_mid, p0, p1,
                s.qrow[t]);
        me.wait();
        features = pre, n_features = L.cmid;
      }
      const int n_out = (L.cout + 7) / 8 * 8;
      if (L.out.bias) {
        split(panels(n_out), t, T, &p0, &p1);
        conv1x1(L.out, 1, n_out, n_features, features, n_features, nullptr, logits, n_out, nullptr, 0, LINEAR, p0, p1,
                s.qrow[t]);
      } else if (t == 0) {
        std::memcpy(logits, features, sizeof(float) * n_features);
      }
      me.wait();
      return;
    }
    std::swap(cur, nxt);
    me.wait();
  }
}

// Worker threads that live as long as the process: starting threads costs ~90 µs per call here, more than a
// barrier per layer. After a job they spin for kSpin (back-to-back calls find them awake, as ONNX Runtime's
// do), then sleep on a condition variable.
class Pool {
 public:
  void run(int threads, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> call(call_mutex_);  // one job at a time
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int t = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, t] { loop(t); });
    }
    job_ = &fn;
    active_ = threads;
    pending_.store(threads - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    fn(0);
    while (pending_.load(std::memory_order_acquire) > 0) _mm_pause();
  }

 private:
  static constexpr auto kSpin = std::chrono::milliseconds(20);

  void loop(int t) {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        _mm_pause();
        if (++spins % 1024 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (t < active_) {
        (*job_)(t);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex call_mutex_, sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 1;
  std::vector<std::thread> workers_;
};

// Never destroyed: its threads may be asleep when the process exits. A fork()ed child has none of its parent's
// worker threads (only the forking thread is copied), so the child starts a fresh pool of its own.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool;
    pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });  // the parent's Pool is left untouched (leaked)
  });
  return *g_pool;
}

}  // namespace

extern "C" {

// Floats of scratch memory one image run by `threads` threads together uses: every activation the engine
// holds lives in it (buffers are reused layer after layer), so this bounds its live activation memory.
int64_t mn_image_floats(const Layer* layers, int n_layers, int H, int W, int threads) {
  return group_floats(make_plan(layers, n_layers, H, W), threads);
}

// Floats of scratch memory that mn_run needs for a H×W input with this many threads.
int64_t mn_scratch_floats(const Layer* layers, int n_layers, int H, int W, int threads) {
  const Plan plan = make_plan(layers, n_layers, H, W);
  return threads * group_floats(plan, 1) + group_floats(plan, threads);
}

// Run N images (NCHW, fp32) through the program; out gets N rows of out_stride floats. With at least as many
// images as threads each thread runs whole images alone (no barriers); the rest are shared by all threads.
int mn_run(const Layer* layers, int n_layers, const float* input, int N, int C, int H, int W, float* out,
           int out_stride, int threads, float* scratch) {
  if (threads < 1 || N < 0) return 1;
  if (H + 2 > kMaxItems) return 2;
  const Plan plan = make_plan(layers, n_layers, H, W);
  const int64_t image = static_cast<int64_t>(C) * H * W;
  const int alone = N / threads * threads;  // images run one per thread
  std::vector<Scratch> solo;
  float* base = scratch;
  for (int t = 0; t < threads; ++t) {
    solo.push_back(carve(plan, 1, base));
    base += group_floats(plan, 1);
  }
  const Scratch shared = carve(plan, threads, base);
  Team team(threads);
  auto work = [&](int t) {
    // Denormals flushed to zero in every thread (the caller's setting is restored below): activations of a
    // random-initialised network decay into them, and CPUs handle them tens of times slower.
    _mm_setcsr(_mm_getcsr() | 0x8040);
    Team own(1);
    Member alone_member{own, 0}, shared_member{team, t};
    for (int n = t; n < alone; n += threads)
      run_image(layers, n_layers, input + n * image, H, W, out + static_cast<int64_t>(n) * out_stride, solo[t],
                alone_member);
    for (int n = alone; n < N; ++n)
      run_image(layers, n_layers, input + n * image, H, W, out + static_cast<int64_t>(n) * out_stride, shared,
                shared_member);
  };
  const unsigned int csr = _mm_getcsr();
  pool().run(threads, work);
  _mm_setcsr(csr);
  return 0;
}

}  // extern "C"

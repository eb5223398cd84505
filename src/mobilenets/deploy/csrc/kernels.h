// The compute kernels (one file each: gemm_fp32.cpp, gemm_int8.cpp, gemm_bf16.cpp, depthwise.cpp) and the 1×1
// convolution that picks one of the three GEMMs by the weights a convolution carries (conv1x1.cpp).
#pragma once

#include <cstdint>
#include <type_traits>

#include "abi.h"

namespace mn {

// C[m, n] = act(A[m, :] · B[:, n] + bias[n]) (+ R[m, n]) over M pixels, output channel panels [p0, p1) only (a
// thread's share); Bp packed in panels of 16 columns (the last may be 8), each K-major.
void gemm_fp32(int M, int N, int K, const float* A, int lda, const float* Bp, const float* bias, float* C, int ldc,
               const float* R, int ldr, int act, int p0, int p1);

// The same with int8 weights on the input's codes A (M × K, rows lda apart): act(scale · (Σ a·q + corr) + bias).
void gemm_int8(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, float* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1);

// The same on AMX tiles (AMX builds only; gemm_int8 calls it where on_tiles says): the same integer sums and
// outputs. Out: float, or (the fp16 rows of an fp16 depthwise) _Float16, with no residual.
template <typename Out>
void gemm_int8_amx(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, Out* C, int ldc,
                   const float* R, int ldr, int act, int p0, int p1);

// The same with bf16 weights on AMX tiles, A rounded to bf16 as it goes (AMX builds only).
void gemm_bf16(int M, int N, int K, const float* A, int lda, const MnConv& cv, float* C, int ldc, const float* R,
               int ldr, int act, int p0, int p1);

// Whether gemm_int8 runs a product of M pixels on AMX tiles: where fused.py allows it for the convolution (cv.tiles:
// the amx level, at least 64 input and 64 output channels) and M >= kTileMinRows. Measured with the tile kernel
// (gemm_int8_amx.cpp) against VNNI, weights hot, one thread: 0.41–0.91 of VNNI's time at V2's products of 7–49
// rows with K and N >= 64; 1.5–2.2× VNNI's with 1–4 rows (the classifier: each B tile then feeds one C row);
// thinner K or N lose (V2's 56-px projections to 24 channels: 23 → 33 µs of thread 0's time in the engine).
constexpr int kTileMinRows = 7;
inline bool on_tiles(const MnConv& cv, int M) { return MN_ISA >= MN_ISA_AMX && cv.tiles && M >= kTileMinRows; }

// Sets up this thread's AMX tiles (a no-op below AMX builds); tiles_release gives them back.
void tiles_configure();
void tiles_release();

// The codes of an M × K block of fp32: round(x / scale) + zero clamped to 0..qmax.
void quantize_rows(const float* X, int ldx, int M, int K, uint8_t* Q, int ldq, float inv_scale, int zero, int qmax);

// The codes an int8 convolution reads of an M × K input (rows lda apart), quantised into buf (rows K apart);
// nullptr for an fp32 or bf16 convolution.
const uint8_t* input_codes(const MnConv& cv, const float* A, int lda, int M, int K, uint8_t* buf);

// A 1×1 convolution over M pixels in the precision its weights say. An int8 one quantises A into qbuf first,
// unless the caller passes the codes (Aq) itself.
void conv1x1(const MnConv& cv, int M, int N, int K, const float* A, int lda, const uint8_t* Aq, float* C, int ldc,
             const float* R, int ldr, int act, int p0, int p1, uint8_t* qbuf);

// Where a depthwise row goes: fp32 (f), or straight to the codes an int8 projection reads (q), which spares a
// store, a reload and a quantisation pass. Offsets count elements (pixel · C + channel) in both.
// Scaled: the depthwise weights were divided by the codes' scale and the zero point is 0 (a ReLU / ReLU6 output),
// so the sums are the codes before rounding and clamping; the activation is left to the clamp to 0..qmax (ReLU6's
// 6 lies at or above code qmax, the calibrated maximum being at most 6). Four instructions fewer per vector.
struct Sink {
  enum Mode : int { FP32 = 0, SCALED_CODES = 1, CODES = 2 };
  float* f;
  uint8_t* q;
  float inv_scale;
  int zero;
  int qmax;
  bool scaled;
  int mode() const { return !q ? FP32 : scaled ? SCALED_CODES : CODES; }
};

// One output row of a 3×3 depthwise convolution (padding 1) for channels [c0, c1). rows[0..2] are the input
// rows y·s−1, y·s, y·s+1 (a zero row where they fall outside the image), each Wi pixels of C channels.
void depthwise_row(const float* const rows[3], int Wi, int Wo, int stride, int C, const float* w, const float* bias,
                   const Sink& out, int c0, int c1, int act);

// The same for a k×k kernel (k = 3 or 5) at dilation d (padding d·(k−1)/2; d > 1 needs stride 1): rows[0..k−1]
// are the input rows y·s − d·(k−1)/2 + i·d; w holds k·k taps of C channels.
void depthwise_row(const float* const* rows, int kernel, int dilation, int Wi, int Wo, int stride, int C,
                   const float* w, const float* bias, const Sink& out, int c0, int c1, int act);

#if MN_ISA >= MN_ISA_AMX
// The same on fp16 rows with fp16 weights (AVX512-FP16; the int8 engine's expanded rows, fused.py's w_dw16 /
// b_dw16), into scaled codes only (Sink::SCALED_CODES: the sums are the projection's codes, clamped and rounded).
void depthwise_row(const _Float16* const* rows, int kernel, int dilation, int Wi, int Wo, int stride, int C,
                   const _Float16* w, const _Float16* bias, const Sink& out, int c0, int c1);

// An int8 1×1 convolution (or the int8 stem's GEMM) whose fp32 outputs are rounded to fp16 (nearest even) as they
// are stored, on the VNNI kernel: the rows an fp16 depthwise reads. No residual: R must be null. conv1x1 takes the
// fp32 one's arguments, so that one call serves rows of either type.
void gemm_int8(int M, int N, int K, const uint8_t* A, int lda, const MnConv& cv, _Float16* C, int ldc, int act,
               int p0, int p1);
void conv1x1(const MnConv& cv, int M, int N, int K, const float* A, int lda, const uint8_t* Aq, _Float16* C, int ldc,
             const float* R, int ldr, int act, int p0, int p1, uint8_t* qbuf);
#endif

// A block's depthwise row on its rows' type: fp32 rows with w_dw / b_dw (the block's activation, or the clamp of
// scaled codes), fp16 rows with w_dw16 / b_dw16 (AMX builds; scaled codes only).
template <typename T>
void block_depthwise(const MnLayer& L, const T* const* rows, int W, int Wo, const Sink& sink) {
  if constexpr (std::is_same_v<T, float>)
    depthwise_row(rows, L.kernel, L.dilation, W, Wo, L.stride, L.cmid, L.w_dw, L.b_dw, sink, 0, L.cmid,
                  L.dw_codes ? MN_LINEAR : L.act_mid);
  else
    depthwise_row(rows, L.kernel, L.dilation, W, Wo, L.stride, L.cmid, reinterpret_cast<const T*>(L.w_dw16),
                  reinterpret_cast<const T*>(L.b_dw16), sink, 0, L.cmid);
}

// The largest row span of a depthwise window, (k − 1) · d + 1 (a 5×5 kernel at dilation 4: V3 at output stride 8);
// a block's row ring holds that many expanded rows.
constexpr int kMaxSpan = 17;
inline int depthwise_span(const MnLayer& L) { return (L.kernel - 1) * L.dilation + 1; }

}  // namespace mn

// The engine's ABI: the structs fused.py fills in through ctypes (its _Conv / _Layer mirror them field by field)
// and the C functions it calls. fused.py checks mn_abi_version() and mn_struct_size() at load, so a library
// built from other sources is refused with a clear message instead of reading misplaced fields.
// Bump MN_ABI_VERSION with any change to these structs or to a function's signature.
#pragma once

#include <cstdint>

#define MN_ABI_VERSION 6

// ISA levels a library can be built for (fused.py compiles one library per level, -DMN_ISA=<level>, and loads
// the one asked for). Macros, not an enum: the sources test them in #if.
#define MN_ISA_AVX2 1
#define MN_ISA_AVX512 2
#define MN_ISA_AMX 3

// MN_HSWISH: V3 §5.2 h-swish; MN_HSIGMOID: the squeeze-excite gate (V3 §5.3).
enum MnAct : int32_t { MN_LINEAR = 0, MN_RELU = 1, MN_RELU6 = 2, MN_HSWISH = 3, MN_HSIGMOID = 4 };
// MN_TAP copies the current map (NHWC) into the caller's output, after the taps before it: a backbone's feature
// maps for a detection or segmentation head (no pool or classifier follows). It reads no field but kind.
enum MnKind : int32_t { MN_STEM = 1, MN_BLOCK = 2, MN_POINTWISE = 3, MN_POOL_FC = 4, MN_TAP = 5 };

// A 1×1 convolution (or the stem's im2col GEMM, or a linear layer) in one of three precisions: fp32 weights (w),
// int8 weights (q: the input is quantised on the fly), or bf16 weights (wb: the input is rounded to bf16 on the
// fly; AMX builds only). Exactly one of w, q, wb is set.
struct MnConv {
  const float* w;        // fp32 weights, [K] x [N] in panels of 16 columns (the last may be 8), each K-major
  const float* bias;     // [N rounded up to 8]
  const int8_t* q;       // int8 weights per panel of 16 (or 8) columns as [K/4][panel width][4]
  const float* scale;    // [N]: input scale × weight scale of the channel
  const int32_t* corr;   // [N]: −(input zero point) · Σ_k q[k][n]
  const uint16_t* wb;    // bf16 weights per panel of 16 columns (N padded to 16) as [K rounded up to 32 / 2][16][2]
  float inv_scale;       // int8: 1 / input scale, to quantise the input
  int32_t zero;          // int8: input zero point
  int32_t qmax;          // int8: largest input code (127 on AVX2, 255 with VNNI)
  int32_t tiles;         // int8, AMX builds: products of at least kTileMinRows pixels may run on AMX tiles
};

// One layer of the program.
struct MnLayer {
  int32_t kind;
  int32_t cin, cmid, cout;   // BLOCK: in, expanded (== cin without expansion), out. STEM: 3·3·in, -, out.
  int32_t stride;            // STEM / BLOCK depthwise stride (1 or 2)
  int32_t act_mid, act_out;  // activation after expansion+depthwise / after the output conv
  int32_t has_expand, residual;
  int32_t stem_in_chans;
  MnConv expand;             // [cin] x [cmid] (POOL_FC: the pre-logits layer)
  const float* w_dw;         // [kernel · kernel][cmid]
  const float* b_dw;         // [cmid]
  MnConv out;                // [cmid] x [cout] (STEM: [27] x [cout]; POOL_FC: [cin] x [cout])
  int32_t dw_codes;          // BLOCK with an int8 `out`: w_dw, b_dw are pre-divided by its input scale (see Sink)
  int32_t kernel;            // BLOCK: the depthwise kernel, 3 or 5 (V3 Table 1)
  int32_t dilation;          // BLOCK: the depthwise dilation (padding dilation · (kernel − 1) / 2; stride 1 if > 1)
  int32_t se_channels;       // BLOCK: squeeze-excite's reduced width, 0 without SE (V3 §5.3)
  MnConv se_reduce;          // fp32 [cmid] x [se_channels], ReLU, on the depthwise output's channel means
  MnConv se_expand;          // fp32 [se_channels] x [cmid], h-sigmoid: the gate the depthwise output is scaled by
  const uint16_t* w_dw16;    // BLOCK, int8 with dw_codes on an AMX CPU with AVX512-FP16: w_dw and b_dw in fp16, for
  const uint16_t* b_dw16;    // the depthwise on fp16 expanded rows (row-streamed blocks without SE); else null
  const float* stem_inv_scale;  // STEM, int8: per input channel, 1 / the scale of its codes (out's inv_scale and
  const int32_t* stem_zero;     // zero are unused); each channel's zero point, also the padding's code
};

// What mn_struct_size reports, in this order.
enum MnStruct : int32_t { MN_STRUCT_CONV = 0, MN_STRUCT_LAYER = 1 };

extern "C" {
int32_t mn_abi_version();
int64_t mn_struct_size(int32_t which);  // sizeof the struct, -1 for an unknown one
int32_t mn_isa();                       // the MN_ISA_* level this library was built for
int32_t mn_prepare();                   // 0, or nonzero when the OS refuses what the ISA needs (AMX tile state)
int64_t mn_image_floats(const MnLayer* layers, int n_layers, int H, int W, int threads);
int64_t mn_scratch_floats(const MnLayer* layers, int n_layers, int H, int W, int threads);
int mn_run(const MnLayer* layers, int n_layers, const float* input, int N, int C, int H, int W, float* out,
           int out_stride, int threads, float* scratch);
}

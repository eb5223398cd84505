// The memory plan: one walk over the program sizes every buffer (the run and the scratch queries share it), and
// carve() lays one group's buffers out in the caller's scratch.
#pragma once

#include <cstdint>
#include <vector>

#include "abi.h"

namespace mn {

// Sizes of every buffer, from one walk over the program (the run and the scratch query share it).
struct Plan {
  int64_t act = 0;        // largest activation map (floats), two of them ping-pong
  int64_t wide = 0;       // largest whole expanded map of a small-map block (two: expansion, depthwise)
  int64_t ring = 0;       // per thread: the depthwise span's expanded rows + one depthwise row + one zero row
  int64_t row_buf = 0;    // per thread: stem im2col row
  int64_t pooled = 0;     // the pooled features (and a squeeze-excite's means, reduced features and gate)
  int64_t padded = 0;     // the stem's zero-padded NHWC copy of the image
  int64_t qrow = 0;       // per thread, bytes: the codes of one int8 GEMM's input
  int64_t qwide = 0;      // bytes: the codes of a small-map block's depthwise output
  int64_t chain = 0;      // a thread alone: the rings of the chain streaming the first layers (chain.cpp)
};

// Maps at least this wide stream rows through the ring; narrower ones run whole. Threads sharing an image: 14
// measured faster than 28 (V2 1.0 @ 224, two threads: fp32 0.87×, int8 0.88×, bf16 0.77× the time; 7 slower again).
constexpr int kFuseMinWidth = 14;
// A thread alone chains the blocks on maps at least this wide (chain.h): all of a chain's rings are live at once,
// while the narrower blocks after it reuse one ring, so a longer chain would hold more (V2 @ 224: 1.08 MB).
constexpr int kChainMinWidth = 28;

// Whether a block on a map w wide streams rows through its ring: wide maps, any map for a thread running the image
// alone. A block with squeeze-excite streams its expansion, but keeps its depthwise output whole (V3 §5.3: the
// pool spans the map, and the projection needs the gate); threads sharing an image run it whole when its output is
// narrower (V3-Large's 13th block, 14 → 7 px with a 5 × 5 kernel: each thread's few output rows need most of the
// input rows expanded, 0.93× the time whole; a block without SE still gains from streaming there, V2's 14th 0.95×).
inline bool streams_rows(const MnLayer& L, int w, bool alone) {
  return alone || (w >= kFuseMinWidth && (!L.se_channels || (w - 1) / L.stride + 1 >= kFuseMinWidth));
}

// Whether layer i is a last 1×1 convolution whose output rows go straight into the average pool's sums (a thread
// running the image alone: Table 3 counts it fused with the pool), its h × w map never whole.
inline bool pools_rows(const MnLayer* layers, int n_layers, int i, bool alone) {
  return alone && layers[i].kind == MN_POINTWISE && i + 1 < n_layers && layers[i + 1].kind == MN_POOL_FC;
}

// solo: the plan of a thread running an image alone, which streams the first layers as a chain (chain.h) and
// every later block without squeeze-excite through its row ring; otherwise that of threads sharing an image.
Plan make_plan(const MnLayer* layers, int n_layers, int H, int W, bool solo);

struct Scratch {  // one group's views into the caller's scratch memory
  float *act0, *act1, *wide0, *wide1, *pooled, *padded, *chain;
  uint8_t* qwide;
  std::vector<float*> ring;  // per thread of the group
  std::vector<float*> row;
  std::vector<uint8_t*> qrow;
};

// Floats of scratch one group of `threads` threads uses.
int64_t group_floats(const Plan& p, int threads);

// One group's buffers, from base on.
Scratch carve(const Plan& p, int threads, float* base);

}  // namespace mn

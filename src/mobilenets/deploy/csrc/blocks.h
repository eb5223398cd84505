// The three ways a block runs (V2 §5.1, the hardware argument: an inverted residual block's wide expansion never
// has to be materialised whole). On wide maps each thread keeps a ring of expanded rows (RowWindow), computes one
// depthwise output row from them and projects it straight away (run_block_rows), so the t-times-wider tensor lives
// only in the core's cache. Squeeze-and-excite (V3 §5.3) streams only halfway (run_block_se): its pool needs the
// whole depthwise output before the projection may start, so that output is kept whole while the expansion still
// streams. Small maps (whose expansion fits in L2 anyway) run whole-map GEMMs with the threads sharing out channel
// panels (run_block_whole, in blocks.cpp), and so do SE blocks whose output is narrower than kFuseMinWidth when
// threads share the image (plan.h: streams_rows). At 224 px the largest depthwise outputs kept whole are
// V3-Large's 5th block's (28 × 28 × 120) and V3-Small's 1st (56 × 56 × 16).
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "abi.h"
#include "kernels.h"
#include "rows.h"
#include "simd.h"
#include "threads.h"

namespace mn {

// The expanded rows a block's depthwise window reads, for the output rows one thread takes: a ring of as many
// expanded rows as the window spans ((k − 1)·d + 1, three for a 3×3 kernel), made by produce(r, slot) (the
// expansion of input row r; or, for a first block without expansion or residual, the stem's output row r: its
// input is then never materialised) when first needed. produced = false: the depthwise reads `in` itself (fp32
// only). T: the rows' type, float or fp16 (an int8 block with fp16 depthwise weights, AMX builds).
template <typename Produce, typename T = float>
class RowWindow {
 public:
  RowWindow(const MnLayer& L, const float* in, int H, int W, float* ring, bool produced, Produce& produce)
      : L_(L), in_(in), H_(H), produced_(produced), produce_(produce), row_in_(static_cast<int64_t>(W) * L.cin),
        slots_(reinterpret_cast<T*>(ring), static_cast<int64_t>(W) * L.cmid, depthwise_span(L)),
        zero_(reinterpret_cast<T*>(ring) + depthwise_span(L) * static_cast<int64_t>(W) * L.cmid),
        dw(reinterpret_cast<float*>(zero_ + static_cast<int64_t>(W) * L.cmid)) {
    std::memset(zero_, 0, sizeof(T) * W * L.cmid);  // all-zero bits: 0.0 in fp32 and in fp16 alike
  }

  // rows[0..k) of output row y's window, their expanded rows made first.
  void rows(int y, const T** rows) {
    window_rows(L_, y, H_, zero_, rows, [&](int r) -> const T* {
      if constexpr (std::is_same_v<T, float>) {
        if (!produced_) return in_ + r * row_in_;
      }
      return slots_.get(r, produce_);
    });
  }

 private:
  const MnLayer& L_;
  const float* in_;
  const int H_;
  const bool produced_;
  Produce& produce_;
  const int64_t row_in_;
  RowRing<T> slots_;  // span rows of W × E
  T* const zero_;     // the padding row

 public:
  float* const dw;  // one depthwise output row (Wo × E, fp32)
};

// A block on a wide map without squeeze-excite: each thread streams its output rows through its window and
// projects each depthwise row straight away, so the t-times-wider tensor lives only in the core's cache. T = fp16
// (AMX builds): the expanded rows are fp16 and the depthwise runs on them with w_dw16 / b_dw16 into the
// projection's scaled codes (produced rows only; fused.py sets w_dw16 only where dw_codes is set).
template <typename T = float, typename Produce>
void run_block_rows(const MnLayer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* ring,
                    uint8_t* qrow, Member& me, bool produced, Produce&& produce) {
  const int E = L.cmid;
  const int64_t row_in = static_cast<int64_t>(W) * L.cin;
  RowWindow<Produce, T> window(L, in, H, W, ring, produced, produce);
  const T* rows[5];
  Share share(me, Ho);
  for (int y; (y = share.next()) >= 0;) {
    window.rows(y, rows);
    // An int8 projection gets the depthwise row as codes straight away.
    const Sink sink{window.dw, L.out.q ? qrow : nullptr, L.out.inv_scale, L.out.zero, L.out.qmax, L.dw_codes != 0};
    block_depthwise(L, rows, W, Wo, sink);
    const float* res = L.residual ? in + static_cast<int64_t>(y) * row_in : nullptr;
    conv1x1(L.out, Wo, L.cout, E, window.dw, E, sink.q, out + static_cast<int64_t>(y) * Wo * L.cout, L.cout, res,
            L.cout, L.act_out, 0, panels(L.cout), qrow);
  }
}

// Squeeze-excite (V3 §5.3) fits in a thread's cache when its two FCs hold at most this many weights together:
// then every thread computes the whole gate for itself, and the block needs no barrier between the pool and the
// projection (V3-Large's 28-px blocks: 3,456 and 7,680 weights). Larger FCs are shared out, a barrier after each.
constexpr int64_t kPrivateGateWeights = 16384;

// scale · the sums over M pixels (rows E apart) of x's channels [c0, c1), into out: a squeeze-excite pool's means,
// or (scale 1, exact) a row's channel sums.
void channel_sums(const float* x, int64_t M, int E, int c0, int c1, float scale, float* out);

// The gate of a squeeze-excite block from the channel means `mean` (E floats): the reduction (ReLU) and the
// expansion (h-sigmoid), two one-pixel fp32 GEMMs, into gate. shared: the threads share the output panels out
// (squeezed and gate are the team's buffers, a barrier between the GEMMs; each thread has made the gate's panels
// split() gives it); otherwise this thread makes it all.
void se_gate(const MnLayer& L, const float* mean, float* squeezed, float* gate, bool shared, Member& me);

// M pixels of E channels (rows E apart) scaled by gate (E): into the codes of an int8 projection, quantised the
// ordinary way (the depthwise's pre-scaled codes cannot serve: the gate comes between), or in place.
void scale_channels(const MnLayer& L, float* x, int64_t M, const float* gate, int c0, int c1, uint8_t* codes);

// A block with squeeze-excite on a wide map: the expansion streams through each thread's window as in
// run_block_rows, but the pool spans the map, so the depthwise rows are kept whole (dw, Ho × Wo × E) and each
// row's channel sums go to sums (Ho × E: the means add them in row order, whichever thread made a row). After a
// barrier the gate (se_gate), then each thread projects rows, each scaled by the gate first. se: the team's
// squeezed features and gate (R + E floats) for a shared gate.
template <typename Produce>
void run_block_se(const MnLayer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* ring,
                  float* dw, float* sums, float* se, uint8_t* qrow, Member& me, Produce&& produce) {
  const int E = L.cmid;
  const int64_t row_in = static_cast<int64_t>(W) * L.cin, row_dw = static_cast<int64_t>(Wo) * E;
  {
    RowWindow<Produce> window(L, in, H, W, ring, L.has_expand != 0, produce);
    const float* rows[5];
    Share share(me, Ho);
    for (int y; (y = share.next()) >= 0;) {
      window.rows(y, rows);
      float* d = dw + y * row_dw;
      depthwise_row(rows, L.kernel, L.dilation, W, Wo, L.stride, E, L.w_dw, L.b_dw, Sink{d, nullptr, 0, 0, 0, false},
                    0, E, L.act_mid);
      channel_sums(d, Wo, E, 0, E, 1.0f, sums + int64_t{y} * E);
    }
  }
  me.wait();
  // The means, by every thread for itself (Ho × E additions), in its ring (free now).
  float* mean = ring;
  channel_sums(sums, Ho, E, 0, E, 1.0f / static_cast<float>(Ho * Wo), mean);
  const bool shared = static_cast<int64_t>(2) * E * L.se_channels > kPrivateGateWeights && me.threads() > 1;
  float* squeezed = shared ? se : mean + E;
  float* gate = squeezed + L.se_channels;
  se_gate(L, mean, squeezed, gate, shared, me);
  if (shared) me.wait();
  Share share(me, Ho);
  for (int y; (y = share.next()) >= 0;) {
    float* d = dw + y * row_dw;
    scale_channels(L, d, Wo, gate, 0, E, L.out.q ? qrow : nullptr);
    const float* res = L.residual ? in + static_cast<int64_t>(y) * row_in : nullptr;
    conv1x1(L.out, Wo, L.cout, E, d, E, L.out.q ? qrow : nullptr, out + static_cast<int64_t>(y) * Wo * L.cout,
            L.cout, res, L.cout, L.act_out, 0, panels(L.cout), qrow);
  }
}

// A block on a small map (an SE block too, see above): whole-map GEMMs, the threads sharing out channel
// panels (no ring needed: a small map fits in L2): a panel's expansion and then its depthwise channels, a barrier,
// [squeeze-excite,] then the projection's panels. se: the group's squeeze-excite buffer (means, reduced, gate).
void run_block_whole(const MnLayer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* wide0,
                     float* wide1, float* zero, uint8_t* qrow, uint8_t* qwide, float* se, Member& me);

}  // namespace mn

// The graph walk: one image through the whole program, block by block, by the threads of a team.
//
// Why it exists (V2 §5.1, the hardware argument): an inverted residual block's wide expansion never has to be
// materialised whole. For large feature maps each thread keeps a ring of three expanded rows, computes one
// depthwise output row from them and projects it straight away, so the t-times-wider tensor lives only in
// the core's cache. Small maps (whose expansion fits in L2 anyway) run layer by layer with the threads
// sharing out channel panels. One parallel region covers the whole network; threads meet at a spin barrier
// after each block instead of a thread-pool dispatch per operator, and take rows and panels as they go (see
// Share) rather than a fixed share each. A thread running an image alone goes further (chain.cpp): the stem and
// the wide blocks stream rows from one block into the next, and every later block streams through its ring.
//
// Squeeze-and-excite (V3 §5.3) streams only halfway: its pool needs the whole depthwise output of the block before
// the projection may start. On wide maps an SE block streams its expansion through the ring like any other, keeps
// only its depthwise output whole (with each row's channel sums), and after one barrier every thread makes the
// gate (or, for large FCs, the threads share it out) and projects rows, scaling each by the gate first
// (run_block_se). Small maps run whole: depthwise → pool → barrier → the two FCs → scale → barrier → projection.
// At 224 px the largest whole map this leaves is the depthwise output of V3-Large's 5th block (28 × 28 × 120) or
// of V3-Small's 1st (56 × 56 × 16).
#include "graph.h"

#include <algorithm>
#include <cstring>

#include "chain.h"
#include "kernels.h"
#include "simd.h"
#include "stem.h"

namespace mn {
namespace {

template <typename T>
void run_stem(const MnLayer& L, const float* img, int H, int W, float* out, int Ho, int Wo, T* padded, T* col,
              Member& me) {
  stem_pad(L, img, H, W, padded, col, me);
  me.wait();
  Share rows(me, Ho);
  for (int y; (y = rows.next()) >= 0;) stem_row(L, padded, W, col, y, Wo, out + static_cast<int64_t>(y) * Wo * L.cout);
}

// The expanded rows a block's depthwise window reads, for the output rows one thread takes: a ring of as many
// expanded rows as the window spans ((k − 1)·d + 1, three for a 3×3 kernel), made by produce(r, slot) (the
// expansion of input row r; or, for a first block without expansion or residual, the stem's output row r: its
// input is then never materialised) when first needed. produced = false: the depthwise reads `in` itself.
template <typename Produce>
class RowWindow {
 public:
  RowWindow(const MnLayer& L, const float* in, int H, int W, float* ring, bool produced, Produce& produce)
      : L_(L), in_(in), H_(H), span_(depthwise_span(L)), produced_(produced), produce_(produce),
        row_in_(static_cast<int64_t>(W) * L.cin), row_e_(static_cast<int64_t>(W) * L.cmid), slots_(ring),
        dw(ring + span_ * row_e_), zero_(dw + row_e_) {
    std::memset(zero_, 0, sizeof(float) * row_e_);
    std::fill(held_, held_ + span_, -1);
  }

  // rows[0..k) of output row y's window, their expanded rows made first.
  void rows(int y, const float** rows) {
    const int K = L_.kernel, D = L_.dilation, lo = y * L_.stride - D * (K - 1) / 2;
    for (int r = std::max(lo, 0); produced_ && r <= std::min(lo + span_ - 1, H_ - 1); ++r) {
      if (held_[r % span_] == r) continue;
      produce_(r, slots_ + (r % span_) * row_e_);
      held_[r % span_] = r;
    }
    for (int k = 0; k < K; ++k) {
      const int r = lo + k * D;
      if (r < 0 || r >= H_)
        rows[k] = zero_;
      else
        rows[k] = produced_ ? slots_ + (r % span_) * row_e_ : in_ + r * row_in_;
    }
  }

 private:
  const MnLayer& L_;
  const float* in_;
  const int H_, span_;
  const bool produced_;
  Produce& produce_;
  const int64_t row_in_, row_e_;
  float* slots_;  // span rows of W × E, row r in slot r % span
  int held_[kMaxSpan];  // the input row each slot holds

 public:
  float* const dw;  // one depthwise output row (Wo × E)

 private:
  float* const zero_;  // the padding row
};

// A block on a wide map without squeeze-excite: each thread streams its output rows through its window and
// projects each depthwise row straight away, so the t-times-wider tensor lives only in the core's cache.
template <typename Produce>
void run_block_rows(const MnLayer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* ring,
                    uint8_t* qrow, Member& me, bool produced, Produce&& produce) {
  const int E = L.cmid;
  const int64_t row_in = static_cast<int64_t>(W) * L.cin;
  RowWindow<Produce> window(L, in, H, W, ring, produced, produce);
  const float* rows[5];
  Share share(me, Ho);
  for (int y; (y = share.next()) >= 0;) {
    window.rows(y, rows);
    // An int8 projection gets the depthwise row as 7-bit codes straight away.
    const Sink sink{window.dw, L.out.q ? qrow : nullptr, L.out.inv_scale, L.out.zero, L.out.qmax, L.dw_codes != 0};
    depthwise_row(rows, L.kernel, L.dilation, W, Wo, L.stride, E, L.w_dw, L.b_dw, sink, 0, E,
                  L.dw_codes ? MN_LINEAR : L.act_mid);
    const float* res = L.residual ? in + static_cast<int64_t>(y) * row_in : nullptr;
    conv1x1(L.out, Wo, L.cout, E, window.dw, E, sink.q, out + static_cast<int64_t>(y) * Wo * L.cout, L.cout, res,
            L.cout, L.act_out, 0, panels(L.cout), qrow);
  }
}

// Squeeze-excite (V3 §5.3) fits in a thread's cache when its two FCs hold at most this many weights together:
// then every thread computes the whole gate for itself, and the block needs no barrier between the pool and the
// projection (V3-Large's 28-px blocks: 3,456 and 7,680 weights). Larger FCs are shared out, a barrier after each.
constexpr int64_t kPrivateGateWeights = 16384;

// The gate of a squeeze-excite block from the channel means `mean` (E floats): the reduction (ReLU) and the
// expansion (h-sigmoid), two one-pixel fp32 GEMMs, into gate. shared: the threads share the output panels out
// (squeezed and gate are the team's buffers, a barrier between the GEMMs; each thread has made the gate's panels
// split() gives it); otherwise this thread makes it all.
void se_gate(const MnLayer& L, const float* mean, float* squeezed, float* gate, bool shared, Member& me) {
  const int E = L.cmid, R = L.se_channels, T = shared ? me.threads() : 1, t = shared ? me.t : 0;
  int p0, p1;
  split(panels(R), t, T, &p0, &p1);
  conv1x1(L.se_reduce, 1, R, E, mean, E, nullptr, squeezed, R, nullptr, 0, MN_RELU, p0, p1, nullptr);
  if (shared) me.wait();
  split(panels(E), t, T, &p0, &p1);
  conv1x1(L.se_expand, 1, E, R, squeezed, R, nullptr, gate, E, nullptr, 0, MN_HSIGMOID, p0, p1, nullptr);
}

// M pixels of E channels (rows E apart) scaled by gate (E): into the codes of an int8 projection, quantised the
// ordinary way (the depthwise's pre-scaled codes cannot serve: the gate comes between), or in place.
void scale_channels(const MnLayer& L, float* x, int64_t M, const float* gate, int c0, int c1, uint8_t* codes) {
  const int E = L.cmid;
  const __m256 inv = _mm256_set1_ps(L.out.inv_scale);
  const __m256i zero = _mm256_set1_epi32(L.out.zero);
  for (int64_t q = 0; q < M; ++q) {
    float* p = x + q * E;
    for (int c = c0; c < c1; c += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + c), _mm256_loadu_ps(gate + c));
      if (codes)
        store_codes(codes + q * E + c, v, inv, zero, L.out.qmax);
      else
        _mm256_storeu_ps(p + c, v);
    }
  }
}

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
      for (int c = 0; c < E; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int q = 0; q < Wo; ++q) acc = _mm256_add_ps(acc, _mm256_loadu_ps(d + int64_t{q} * E + c));
        _mm256_storeu_ps(sums + int64_t{y} * E + c, acc);
      }
    }
  }
  me.wait();
  // The means, by every thread for itself (Ho × E additions), in its ring (free now).
  float* mean = ring;
  const __m256 inv = _mm256_set1_ps(1.0f / static_cast<float>(Ho * Wo));
  for (int c = 0; c < E; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int y = 0; y < Ho; ++y) acc = _mm256_add_ps(acc, _mm256_loadu_ps(sums + int64_t{y} * E + c));
    _mm256_storeu_ps(mean + c, _mm256_mul_ps(acc, inv));
  }
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

// Squeeze-excite on a block's whole depthwise output dw (M pixels × E), whose channel means the threads have left
// in se[0, E) (each pooled the channels it computed): the gate, its two GEMMs shared out, then each thread scales
// the channels whose gate it computed. The caller waits after it.
void squeeze_excite(const MnLayer& L, float* dw, int M, float* se, uint8_t* codes, Member& me) {
  const int E = L.cmid, R = L.se_channels;
  float* squeezed = se + E;
  float* gate = squeezed + R;
  me.wait();
  se_gate(L, se, squeezed, gate, true, me);
  int p0, p1;
  split(panels(E), me.t, me.threads(), &p0, &p1);
  scale_channels(L, dw, M, gate, 16 * p0, std::min(E, 16 * p1), codes);
}

// The channel means of dw (M pixels × E) for channels [c0, c1) into mean.
void channel_means(const float* dw, int M, int E, int c0, int c1, float* mean) {
  const __m256 inv = _mm256_set1_ps(1.0f / static_cast<float>(M));
  for (int c = c0; c < c1; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t q = 0; q < M; ++q) acc = _mm256_add_ps(acc, _mm256_loadu_ps(dw + q * E + c));
    _mm256_storeu_ps(mean + c, _mm256_mul_ps(acc, inv));
  }
}

// A block on a small map, or any block with squeeze-excite: whole-map GEMMs, the threads sharing out channel
// panels (no ring needed: a small map fits in L2): a panel's expansion and then its depthwise channels, a barrier,
// [squeeze-excite,] then the projection's panels. se: the group's squeeze-excite buffer (means, reduced, gate).
void run_block_whole(const MnLayer& L, const float* in, int H, int W, float* out, int Ho, int Wo, float* wide0,
                     float* wide1, float* zero, uint8_t* qrow, uint8_t* qwide, float* se, Member& me) {
  const int E = L.cmid, K = L.kernel, D = L.dilation;
  const int64_t row_e = static_cast<int64_t>(W) * E;
  const float* expanded = L.has_expand ? wide0 : in;
  const uint8_t* codes = nullptr;  // an int8 expansion's input codes
  // With squeeze-excite the depthwise output stays fp32 until it is scaled.
  uint8_t* dw_q = L.out.q && !L.se_channels ? qwide : nullptr;
  Share share(me, panels(E), panel_chunk(panels(E), me.threads()));
  for (int p0, p1; share.next(&p0, &p1);) {
    if (L.has_expand) {
      // Each thread quantises the whole (thin) input for itself, at its first panel: cheaper than a barrier.
      if (!codes) codes = input_codes(L.expand, in, L.cin, H * W, L.cin, qrow);
      conv1x1(L.expand, H * W, E, L.cin, in, L.cin, codes, wide0, E, nullptr, 0, L.act_mid, p0, p1, nullptr);
    }
    const int c0 = 16 * p0, c1 = std::min(E, 16 * p1);
    const float* rows[5];
    for (int y = 0; y < Ho; ++y) {
      for (int k = 0; k < K; ++k) {
        const int r = y * L.stride - D * (K - 1) / 2 + k * D;
        rows[k] = (r < 0 || r >= H) ? zero : expanded + r * row_e;
      }
      // An int8 projection reads 7-bit codes: each thread writes those of its own channels.
      const int64_t at = static_cast<int64_t>(y) * Wo * E;
      const Sink sink{wide1 + at, dw_q ? dw_q + at : nullptr, L.out.inv_scale, L.out.zero, L.out.qmax,
                      L.dw_codes != 0};
      depthwise_row(rows, K, D, W, Wo, L.stride, E, L.w_dw, L.b_dw, sink, c0, c1,
                    L.dw_codes ? MN_LINEAR : L.act_mid);
    }
    if (L.se_channels) channel_means(wide1, Ho * Wo, E, c0, c1, se);
  }
  if (L.se_channels) squeeze_excite(L, wide1, Ho * Wo, se, L.out.q ? qwide : nullptr, me);
  me.wait();
  Share projection(me, panels(L.cout), panel_chunk(panels(L.cout), me.threads()));
  for (int p0, p1; projection.next(&p0, &p1);)
    conv1x1(L.out, Ho * Wo, L.cout, E, wide1, E, L.out.q ? qwide : nullptr, out, L.cout, L.residual ? in : nullptr,
            L.cout, L.act_out, p0, p1, qrow);
}

// A feature tap: the h × w × c map (NHWC) copied out, the threads sharing its rows. The barrier after it keeps the
// map alive until every row is copied (the layer after the last tap, or the next image, overwrites it).
void copy_tap(const float* map, int h, int w, int c, float* out, Member& me) {
  const int64_t row = static_cast<int64_t>(w) * c;
  Share rows(me, h);
  for (int y; (y = rows.next()) >= 0;) std::memcpy(out + y * row, map + y * row, sizeof(float) * row);
  me.wait();
}

}  // namespace

void run_image(const MnLayer* layers, int n_layers, const float* img, int H, int W, float* logits, const Scratch& s,
               Member& me) {
  const int t = me.t, T = me.threads();
  float* cur = s.act0;
  float* nxt = s.act1;
  int h = H, w = W, c = 0;
  int i = 0;
  int64_t tapped = 0;  // floats of `logits` the taps so far have written
  bool pooled = false;  // the pool's sums are made already (a thread alone, the head fused with the pool)
  if (T == 1 && (i = chain_length(layers, n_layers, H, W, kChainMinWidth)) > 0) {  // alone: stream the wide layers
    const MapSize m = run_chain(layers, i, img, H, W, cur, s.chain);
    h = m.h, w = m.w, c = m.c;
  }
  for (; i < n_layers; ++i) {
    const MnLayer& L = layers[i];
    if (L.kind == MN_TAP) {
      copy_tap(cur, h, w, c, logits + tapped, me);
      tapped += static_cast<int64_t>(h) * w * c;
      continue;  // the map stays current: the next layer reads it
    }
    if (L.kind == MN_STEM) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      const MnLayer* B = i + 1 < n_layers ? &layers[i + 1] : nullptr;
      // A first block without expansion or residual takes the stem's rows straight into its ring (V2: 112 × 112 ×
      // 32 fp32 never written out and read back).
      const bool fuse = B && B->kind == MN_BLOCK && !B->has_expand && !B->residual && !B->se_channels &&
                        streams_rows(*B, wo, false);
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
    if (L.kind == MN_BLOCK) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      if (streams_rows(L, w, T == 1)) {  // alone, every block streams (the memory bound)
        const int E = L.cmid;
        auto expand = [&](int r, float* slot) {
          conv1x1(L.expand, w, E, L.cin, cur + static_cast<int64_t>(r) * w * L.cin, L.cin, nullptr, slot, E, nullptr,
                  0, L.act_mid, 0, panels(E), s.qrow[t]);
        };
        if (L.se_channels)
          run_block_se(L, cur, h, w, nxt, ho, wo, s.ring[t], s.wide1, s.pooled + E + L.se_channels, s.pooled,
                       s.qrow[t], me, expand);
        else
          run_block_rows(L, cur, h, w, nxt, ho, wo, s.ring[t], s.qrow[t], me, L.has_expand != 0, expand);
      } else {
        // The ring's first row serves as padding here (make_plan sizes it for every whole-map block).
        float* zero = s.ring[t];
        std::memset(zero, 0, sizeof(float) * static_cast<int64_t>(w) * L.cmid);
        run_block_whole(L, cur, h, w, nxt, ho, wo, s.wide0, s.wide1, zero, s.qrow[t], s.qwide, s.pooled, me);
      }
      h = ho, w = wo, c = L.cout;
    } else if (pools_rows(layers, n_layers, i, T == 1)) {
      // Alone, the last 1×1 convolution is fused with the average pool (as Table 3 counts it): each output row
      // is added to the pool's sums straight away, pixel by pixel in the order the whole-map pool adds them, and
      // the h × w × cout map is never whole.
      float* row = s.ring[t];
      std::fill(s.pooled, s.pooled + L.cout, 0.0f);
      for (int y = 0; y < h; ++y) {
        conv1x1(L.out, w, L.cout, L.cin, cur + static_cast<int64_t>(y) * w * L.cin, L.cin, nullptr, row, L.cout,
                nullptr, 0, L.act_out, 0, panels(L.cout), s.qrow[t]);
        for (int q = 0; q < w; ++q)
          for (int ch = 0; ch < L.cout; ch += 8)
            _mm256_storeu_ps(s.pooled + ch, _mm256_add_ps(_mm256_loadu_ps(s.pooled + ch),
                                                          _mm256_loadu_ps(row + int64_t{q} * L.cout + ch)));
      }
      pooled = true;
      c = L.cout;
    } else if (L.kind == MN_POINTWISE) {
      // Each thread quantises the whole input for itself, then takes panels.
      const uint8_t* codes = input_codes(L.out, cur, L.cin, h * w, L.cin, s.qrow[t]);
      Share share(me, panels(L.cout), panel_chunk(panels(L.cout), T));
      for (int p0, p1; share.next(&p0, &p1);)
        conv1x1(L.out, h * w, L.cout, L.cin, cur, L.cin, codes, nxt, L.cout, nullptr, 0, L.act_out, p0, p1, nullptr);
      c = L.cout;
    } else if (L.kind == MN_POOL_FC) {
      // Global average pool (each thread its channels), [V3's pre-logits 1×1 layer,] then the classifier (each
      // thread its output panels).
      int c0, c1;
      split(c / 8, t, T, &c0, &c1);
      const float inv = 1.0f / static_cast<float>(h * w);
      for (int ch = 8 * c0; ch < 8 * c1; ch += 8) {
        __m256 acc = _mm256_setzero_ps();
        if (pooled)  // the sums made with the head's rows
          acc = _mm256_loadu_ps(s.pooled + ch);
        else
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
        conv1x1(L.out, 1, n_out, n_features, features, n_features, nullptr, logits, n_out, nullptr, 0, MN_LINEAR, p0, p1,
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
}  // namespace mn

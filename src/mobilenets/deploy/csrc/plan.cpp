// The memory plan (plan.h).
#include "plan.h"

#include <algorithm>

#include "chain.h"
#include "kernels.h"

namespace mn {

Plan make_plan(const MnLayer* layers, int n_layers, int H, int W, bool solo) {
  Plan p;
  int h = H, w = W;
  const int chained = solo ? chain_length(layers, n_layers, H, W, kChainMinWidth) : 0;
  if (chained) {
    const MapSize m = chain_output(layers, chained, H, W);
    p.chain = chain_floats(layers, chained, H, W);
    h = m.h, w = m.w;
    p.act = static_cast<int64_t>(h) * w * m.c;
  }
  for (int i = chained; i < n_layers; ++i) {
    const MnLayer& L = layers[i];
    if (L.kind == MN_STEM) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      p.row_buf = std::max<int64_t>(p.row_buf, static_cast<int64_t>(wo) * L.cin);
      p.padded = std::max<int64_t>(p.padded, static_cast<int64_t>(h + 2) * (w + 2) * L.stem_in_chans);
      h = ho, w = wo;
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
    } else if (L.kind == MN_BLOCK) {
      const int ho = (h - 1) / L.stride + 1, wo = (w - 1) / L.stride + 1;
      if (streams_rows(L, w, solo)) {  // the ring: span expanded rows, the depthwise row, the zero row
        p.ring = std::max<int64_t>(p.ring, static_cast<int64_t>(depthwise_span(L) + 2) * w * L.cmid);
        p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(w) * std::max(L.cin, L.cmid));
        if (L.se_channels) {  // the whole depthwise output; the gate's buffers and the rows' channel sums
          p.wide = std::max<int64_t>(p.wide, static_cast<int64_t>(ho) * wo * L.cmid);
          p.pooled = std::max<int64_t>(p.pooled, L.se_channels + L.cmid + static_cast<int64_t>(ho) * L.cmid);
        }
      } else {  // whole maps; the ring's first row is the zero row
        // wide0 the expansion (a block without one reads its input), wide1 the depthwise output.
        if (L.has_expand) p.wide = std::max<int64_t>(p.wide, static_cast<int64_t>(h) * w * L.cmid);
        p.wide = std::max<int64_t>(p.wide, static_cast<int64_t>(ho) * wo * L.cmid);
        p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(h) * w * L.cin);
        p.qwide = std::max<int64_t>(p.qwide, static_cast<int64_t>(ho) * wo * L.cmid);
        p.ring = std::max<int64_t>(p.ring, static_cast<int64_t>(w) * L.cmid);
        p.pooled = std::max<int64_t>(p.pooled, 2 * L.cmid + L.se_channels);
      }
      h = ho, w = wo;
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
    } else if (pools_rows(layers, n_layers, i, solo)) {
      p.ring = std::max<int64_t>(p.ring, static_cast<int64_t>(w) * L.cout);  // one row, added to the pool's sums
      p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(w) * L.cin);
    } else if (L.kind == MN_POINTWISE) {
      p.act = std::max<int64_t>(p.act, static_cast<int64_t>(h) * w * L.cout);
      p.qrow = std::max<int64_t>(p.qrow, static_cast<int64_t>(h) * w * L.cin);
    } else if (L.kind == MN_POOL_FC) {
      p.pooled = std::max<int64_t>(p.pooled, L.cin + L.cmid);  // the pooled features, then the pre-logits
      p.qrow = std::max<int64_t>(p.qrow, std::max(L.cin, L.cmid));
    }
  }
  return p;
}

inline int64_t round_up(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte steps between buffers

inline int64_t bytes_as_floats(int64_t bytes) { return (bytes + 3) / 4; }

int64_t group_floats(const Plan& p, int threads) {
  return 2 * round_up(p.act) + 2 * round_up(p.wide) + round_up(p.pooled) + round_up(p.padded) +
         round_up(bytes_as_floats(p.qwide)) + round_up(p.chain) +
         threads * (round_up(p.ring) + round_up(p.row_buf) + round_up(bytes_as_floats(p.qrow)));
}

Scratch carve(const Plan& p, int threads, float* base) {
  Scratch s;
  float* q = base;
  auto take = [&](int64_t n) { float* r = q; q += round_up(n); return r; };
  s.act0 = take(p.act), s.act1 = take(p.act), s.wide0 = take(p.wide), s.wide1 = take(p.wide);
  s.pooled = take(p.pooled), s.padded = take(p.padded);
  s.qwide = reinterpret_cast<uint8_t*>(take(bytes_as_floats(p.qwide)));
  s.chain = take(p.chain);
  for (int t = 0; t < threads; ++t) {
    s.ring.push_back(take(p.ring)), s.row.push_back(take(p.row_buf));
    s.qrow.push_back(reinterpret_cast<uint8_t*>(take(bytes_as_floats(p.qrow))));
  }
  return s;
}
}  // namespace mn

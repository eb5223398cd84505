// The graph walk: one image through the whole program, layer by layer, by the threads of a team; how each block
// runs (row rings, squeeze-excite, whole maps) is in blocks.h. One parallel region covers the whole network; threads
// meet at a spin barrier after each block instead of a thread-pool dispatch per operator, and take rows and panels
// as they go (see Share) rather than a fixed share each. A thread running an image alone goes further (chain.cpp):
// the stem and the wide blocks stream rows from one block into the next, and every later block streams through its
// ring.
#include "graph.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "blocks.h"
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
        auto rows = [&](int r, auto* slot) { stem_row(L, padded, w, col, r, wo, slot); };  // fp32 or fp16 rows
#if MN_ISA >= MN_ISA_AMX
        if constexpr (std::is_same_v<std::remove_pointer_t<decltype(padded)>, uint8_t>) {
          if (B->w_dw16) {  // an int8 stem's rows in fp16 for the block's fp16 depthwise
            run_block_rows<_Float16>(*B, nullptr, ho, wo, cur, bo, bwo, s.ring[t], s.qrow[t], me, true, rows);
            return;
          }
        }
#endif
        run_block_rows(*B, nullptr, ho, wo, cur, bo, bwo, s.ring[t], s.qrow[t], me, true, rows);
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
        auto expand = [&](int r, auto* slot) {  // fp32 or (fp16 depthwise) fp16 rows
          conv1x1(L.expand, w, E, L.cin, cur + static_cast<int64_t>(r) * w * L.cin, L.cin, nullptr, slot, E, nullptr,
                  0, L.act_mid, 0, panels(E), s.qrow[t]);
        };
        if (L.se_channels)
          run_block_se(L, cur, h, w, nxt, ho, wo, s.ring[t], s.wide1, s.pooled + E + L.se_channels, s.pooled,
                       s.qrow[t], me, expand);
#if MN_ISA >= MN_ISA_AMX
        else if (L.w_dw16 && L.has_expand)  // fp16 expanded rows for the fp16 depthwise
          run_block_rows<_Float16>(L, cur, h, w, nxt, ho, wo, s.ring[t], s.qrow[t], me, true, expand);
#endif
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

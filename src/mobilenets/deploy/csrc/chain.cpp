// Row streaming across block boundaries (V2 §5.1, Table 3): a thread that runs an image alone never writes out
// the large early feature maps. The stem and the blocks on wide maps form a chain of stages; each keeps only a
// ring of its last three output rows (a block with an expansion also a ring of three expanded rows), and a stage
// computes a row when the next stage asks for it. The network's peak activation memory is then the sum of
// these rings (a few rows per layer) instead of two whole 112 × 112 maps: for V2 at 224 the chain's rings hold
// ~0.75 MB fp32 where the whole maps took 3.2 MB. Each row is still computed exactly once and by the same
// kernels as the other paths, so the outputs are bit-identical to them.
//
// Only a thread alone streams this way: threads sharing an image would each need the rows above and below
// their own at every stage (a halo that grows with the chain's depth) or a barrier per row.
#include "chain.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "rows.h"
#include "simd.h"
#include "stem.h"

namespace mn {
namespace {

constexpr int kRing = 3;  // rows a stage keeps: a 3×3 window, whose last row is asked for first at stride 1

// One stage of the chain: the stem or a block, with the rings it owns.
struct Stage {
  const MnLayer* L = nullptr;
  int H = 0, W = 0;    // input map
  int Ho = 0, Wo = 0;  // output map
  int C = 0;           // output channels
  int ring_rows = kRing;  // the last stage keeps its whole output map
  float* out = nullptr;
  RowRing<float> expanded;  // a block with an expansion: three expanded rows (W × cmid each)
#if MN_ISA >= MN_ISA_AMX
  RowRing<_Float16> expanded16;  // instead, for a block with fp16 depthwise weights: in fp16
#endif
  int done = 0;      // output rows [0, done) are made
  const float* row(int y) const { return out + static_cast<int64_t>(y % ring_rows) * Wo * C; }
};

// The stages and the buffers they share (each used only between two calls into another stage).
struct Chain {
  std::vector<Stage> stages;
  float* band = nullptr;    // the stem's three padded input rows (fp32, or int8 codes)
  float* col = nullptr;     // the stem's patch row
  float* dw = nullptr;      // one depthwise output row
  float* zero = nullptr;    // the padding row above and below a map
  int64_t zero_floats = 0;  // its length: the widest expanded row
  uint8_t* qrow = nullptr;  // an int8 convolution's input codes
  int64_t floats = 0;       // scratch taken (when laid out from nullptr: only counted)
};

int64_t rounded(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte steps between buffers

// The chain's stages and buffers for an H × W image, laid out from base (nullptr: sizes only); the last stage
// writes its whole output map to out.
Chain lay_out(const MnLayer* layers, int n_chain, int H, int W, float* base, float* out) {
  Chain c;
  auto take = [&](int64_t n) {
    float* at = base ? base + c.floats : nullptr;
    c.floats += rounded(n);
    return at;
  };
  int h = H, w = W;
  int64_t dw = 0, qrow = 0;
  for (int i = 0; i < n_chain; ++i) {
    const MnLayer& L = layers[i];
    Stage s;
    s.L = &L, s.H = h, s.W = w, s.Ho = (h - 1) / L.stride + 1, s.Wo = (w - 1) / L.stride + 1, s.C = L.cout;
    if (i == n_chain - 1) {
      s.ring_rows = s.Ho, s.out = out;
    } else {
      s.out = take(static_cast<int64_t>(kRing) * s.Wo * s.C);
    }
    if (L.kind == MN_STEM) {
      // 3 padded rows (W + 2 pixels), +16 floats: the int8 patch copy reads 16 bytes at a time past a row's end.
      c.band = take(3 * static_cast<int64_t>(w + 2) * L.stem_in_chans + 16);
      c.col = take(static_cast<int64_t>(s.Wo) * L.cin + 16);
      qrow = std::max<int64_t>(qrow, static_cast<int64_t>(s.Wo) * L.cin);
    } else {
      if (L.has_expand) {
        float* ring = take(static_cast<int64_t>(kRing) * w * L.cmid);
        s.expanded = RowRing<float>(ring, int64_t{w} * L.cmid, kRing);
#if MN_ISA >= MN_ISA_AMX
        s.expanded16 = RowRing<_Float16>(reinterpret_cast<_Float16*>(ring), int64_t{w} * L.cmid, kRing);
#endif
      }
      dw = std::max<int64_t>(dw, static_cast<int64_t>(s.Wo) * L.cmid);
      c.zero_floats = std::max<int64_t>(c.zero_floats, static_cast<int64_t>(w) * L.cmid);
      qrow = std::max<int64_t>(qrow, static_cast<int64_t>(w) * std::max(L.cin, L.cmid));
    }
    c.stages.push_back(s);
    h = s.Ho, w = s.Wo;
  }
  c.dw = take(dw), c.zero = take(c.zero_floats);
  c.qrow = reinterpret_cast<uint8_t*>(take((qrow + 3) / 4));
  return c;
}

const float* pull(Chain& c, int k, int y, const float* img);

// The stem's output row y: its three padded input rows gathered into the band, then one patch-row GEMM.
template <typename T>
void stem_row_from_image(Chain& c, const Stage& s, int y, const float* img, float* dst) {
  const MnLayer& L = *s.L;
  T* band = reinterpret_cast<T*>(c.band);
  T* col = reinterpret_cast<T*>(c.col);
  const int64_t padded_row = static_cast<int64_t>(s.W + 2) * L.stem_in_chans;
  for (int k = 0; k < 3; ++k) stem_pad_row(L, img, s.H, s.W, y * L.stride + k, band + k * padded_row, col);
  stem_row(L, band, s.W, col, 0, s.Wo, dst);
}

// A block's output row y, from the rows of stage k − 1 it needs (asked for in increasing order).
void block_row(Chain& c, int k, int y, const float* img, float* dst) {
  Stage& s = c.stages[k];
  const MnLayer& L = *s.L;
  const int E = L.cmid;
  // The window's rows are made first; the shortcut's row y is among the rows they asked for (stride 1: rows
  // y − 1 .. y + 1), so pulling it computes nothing, and the shared dw / qrow buffers are not touched by another
  // stage between the depthwise and the projection that reads them.
  const Sink sink{c.dw, L.out.q ? c.qrow : nullptr, L.out.inv_scale, L.out.zero, L.out.qmax, L.dw_codes != 0};
  const float* res = nullptr;
  auto expand = [&](int r, auto* slot) {
    conv1x1(L.expand, s.W, E, L.cin, pull(c, k - 1, r, img), L.cin, nullptr, slot, E, nullptr, 0, L.act_mid, 0,
            panels(E), c.qrow);
  };
  // The window over a ring of rows of type T (fp32, or fp16 for the fp16 depthwise), then the depthwise.
  auto stream = [&](auto& ring, const auto* zero) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(zero)>>;
    const T* rows[3];
    window_rows(L, y, s.H, zero, rows, [&](int r) -> const T* {
      if constexpr (std::is_same_v<T, float>) {
        // Without an expansion the previous stage's ring, which holds rows r − 2 .. r, is this window.
        if (!L.has_expand) return pull(c, k - 1, r, img);
      }
      return ring.get(r, expand);
    });
    res = L.residual ? pull(c, k - 1, y, img) : nullptr;
    block_depthwise(L, rows, s.W, s.Wo, sink);
  };
#if MN_ISA >= MN_ISA_AMX
  if (L.w_dw16 && L.has_expand)
    stream(s.expanded16, reinterpret_cast<const _Float16*>(c.zero));
  else
#endif
    stream(s.expanded, c.zero);
  conv1x1(L.out, s.Wo, L.cout, E, c.dw, E, sink.q, dst, L.cout, res, L.cout, L.act_out, 0, panels(L.cout), c.qrow);
}

// Row y of stage k's output, made (with every earlier row of it) if not yet. Valid until the stage makes three
// more rows; a stage is asked for rows in increasing order, at most three rows back.
const float* pull(Chain& c, int k, int y, const float* img) {
  Stage& s = c.stages[k];
  for (; s.done <= y; ++s.done) {
    float* dst = s.out + static_cast<int64_t>(s.done % s.ring_rows) * s.Wo * s.C;
    if (s.L->kind == MN_STEM) {
      if (s.L->out.q)
        stem_row_from_image<uint8_t>(c, s, s.done, img, dst);
      else
        stem_row_from_image<float>(c, s, s.done, img, dst);
    } else {
      block_row(c, k, s.done, img, dst);
    }
  }
  return s.row(y);
}

}  // namespace

int chain_length(const MnLayer* layers, int n_layers, int H, int W, int min_width) {
  if (n_layers == 0 || layers[0].kind != MN_STEM) return 0;
  int w = (W - 1) / layers[0].stride + 1;
  int n = 1;
  // 3×3 undilated blocks without squeeze-excite (whose pool needs the whole depthwise output before projecting).
  auto chains = [](const MnLayer& L) {
    return L.kind == MN_BLOCK && L.kernel == 3 && L.dilation == 1 && !L.se_channels;
  };
  for (; n < n_layers && chains(layers[n]) && w >= min_width; ++n) w = (w - 1) / layers[n].stride + 1;
  return n;
}

MapSize chain_output(const MnLayer* layers, int n_chain, int H, int W) {
  MapSize m{H, W, 0};
  for (int i = 0; i < n_chain; ++i) {
    m.h = (m.h - 1) / layers[i].stride + 1, m.w = (m.w - 1) / layers[i].stride + 1, m.c = layers[i].cout;
  }
  return m;
}

int64_t chain_floats(const MnLayer* layers, int n_chain, int H, int W) {
  return n_chain ? lay_out(layers, n_chain, H, W, nullptr, nullptr).floats : 0;
}

MapSize run_chain(const MnLayer* layers, int n_chain, const float* img, int H, int W, float* out, float* scratch) {
  Chain c = lay_out(layers, n_chain, H, W, scratch, out);
  std::memset(c.zero, 0, sizeof(float) * c.zero_floats);
  const Stage& last = c.stages.back();
  pull(c, n_chain - 1, last.Ho - 1, img);
  return {last.Ho, last.Wo, last.C};
}

}  // namespace mn

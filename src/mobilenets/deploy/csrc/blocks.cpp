// The block paths that are not templates (blocks.h): squeeze-excite's gate and scaling, and whole-map blocks.
#include "blocks.h"

namespace mn {
namespace {

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

}  // namespace

void channel_sums(const float* x, int64_t M, int E, int c0, int c1, float scale, float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int c = c0; c < c1; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t q = 0; q < M; ++q) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + q * E + c));
    _mm256_storeu_ps(out + c, _mm256_mul_ps(acc, s));
  }
}

void se_gate(const MnLayer& L, const float* mean, float* squeezed, float* gate, bool shared, Member& me) {
  const int E = L.cmid, R = L.se_channels, T = shared ? me.threads() : 1, t = shared ? me.t : 0;
  int p0, p1;
  split(panels(R), t, T, &p0, &p1);
  conv1x1(L.se_reduce, 1, R, E, mean, E, nullptr, squeezed, R, nullptr, 0, MN_RELU, p0, p1, nullptr);
  if (shared) me.wait();
  split(panels(E), t, T, &p0, &p1);
  conv1x1(L.se_expand, 1, E, R, squeezed, R, nullptr, gate, E, nullptr, 0, MN_HSIGMOID, p0, p1, nullptr);
}

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
      // An int8 projection reads codes: each thread writes those of its own channels.
      const int64_t at = static_cast<int64_t>(y) * Wo * E;
      const Sink sink{wide1 + at, dw_q ? dw_q + at : nullptr, L.out.inv_scale, L.out.zero, L.out.qmax,
                      L.dw_codes != 0};
      depthwise_row(rows, K, D, W, Wo, L.stride, E, L.w_dw, L.b_dw, sink, c0, c1,
                    L.dw_codes ? MN_LINEAR : L.act_mid);
    }
    if (L.se_channels) channel_sums(wide1, Ho * Wo, E, c0, c1, 1.0f / static_cast<float>(Ho * Wo), se);
  }
  if (L.se_channels) squeeze_excite(L, wide1, Ho * Wo, se, L.out.q ? qwide : nullptr, me);
  me.wait();
  Share projection(me, panels(L.cout), panel_chunk(panels(L.cout), me.threads()));
  for (int p0, p1; projection.next(&p0, &p1);)
    conv1x1(L.out, Ho * Wo, L.cout, E, wide1, E, L.out.q ? qwide : nullptr, out, L.cout, L.residual ? in : nullptr,
            L.cout, L.act_out, p0, p1, qrow);
}

}  // namespace mn

// The stem (stem.h).
#include "stem.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels.h"
#include "simd.h"

namespace mn {

// Stem: 3×3 convolution, stride s, padding 1, as a GEMM over gathered patches. The threads first copy the NCHW
// image into a padded NHWC buffer (sharing out its rows), so that each output pixel's 3×3×C patch is three
// contiguous runs of 3·C values. T = float: fp32. T = uint8_t: the image quantised to the int8 GEMM's codes, each
// channel on its own grid (stem_inv_scale, stem_zero; the padding is each channel's zero point, i.e. 0.0), and
// K = 9·C rounded up to 8, the extra values meeting zero weights.
template <typename T>
void stem_pad_row(const MnLayer& L, const float* img, int H, int W, int y, T* row, T* col) {
  constexpr bool kInt8 = std::is_same_v<T, uint8_t>;
  const int C = L.stem_in_chans, Wp = W + 2;
  const auto pad_pixels = [&](int64_t from, int64_t to) {  // pixels [from, to) of the row: 0.0 in every channel
    for (int64_t p = from; p < to; ++p)
      for (int ci = 0; ci < C; ++ci) row[p * C + ci] = kInt8 ? static_cast<T>(L.stem_zero[ci]) : T(0);
  };
  if (y == 0 || y == H + 1) {
    pad_pixels(0, Wp);
    return;
  }
  pad_pixels(0, 1);
  pad_pixels(W + 1, Wp);
  int x0 = 0;
  if constexpr (kInt8) {
    if (C == 3) {  // RGB: eight pixels at a time quantised and interleaved in registers
      const float* src = img + static_cast<int64_t>(y - 1) * W;
      const int64_t plane = static_cast<int64_t>(H) * W;
      __m256 inv[3];
      __m256i zero[3];
      for (int ci = 0; ci < 3; ++ci)
        inv[ci] = _mm256_set1_ps(L.stem_inv_scale[ci]), zero[ci] = _mm256_set1_epi32(L.stem_zero[ci]);
      for (; x0 + 8 <= W; x0 += 8)
        store_rgb_codes(row + (x0 + 1) * 3, src + x0, src + plane + x0, src + 2 * plane + x0, inv, zero, L.out.qmax);
    }
  }
  for (int ci = 0; ci < C && x0 < W; ++ci) {
    const float* src = img + (static_cast<int64_t>(ci) * H + (y - 1)) * W + x0;
    const int n = W - x0;
    if constexpr (kInt8) {  // the channel's row quantised into `col` (free until the GEMM), then spread
      quantize_rows(src, n, 1, n, col, n, L.stem_inv_scale[ci], L.stem_zero[ci], L.out.qmax);
      for (int x = 0; x < n; ++x) row[(x0 + x + 1) * C + ci] = col[x];
    } else {
      for (int x = 0; x < n; ++x) row[(x0 + x + 1) * C + ci] = src[x];
    }
  }
}

template <typename T>
void stem_pad(const MnLayer& L, const float* img, int H, int W, T* padded, T* col, Member& me) {
  const int64_t row = static_cast<int64_t>(W + 2) * L.stem_in_chans;
  Share copy(me, H + 2);
  for (int y; (y = copy.next()) >= 0;) stem_pad_row(L, img, H, W, y, padded + y * row, col);
}

// The stem's output row y (Wo pixels × cout, fp32) into dst, from the padded image; col: the thread's patch row.
template <typename T, typename Out>
void stem_row(const MnLayer& L, const T* padded, int W, T* col, int y, int Wo, Out* dst) {
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
  if constexpr (!std::is_same_v<Out, float>)
    gemm_int8(Wo, L.cout, K, col, K, L.out, dst, L.cout, L.act_out, 0, panels(L.cout));
  else if constexpr (kInt8)
    gemm_int8(Wo, L.cout, K, col, K, L.out, dst, L.cout, nullptr, 0, L.act_out, 0, panels(L.cout));
  else
    gemm_fp32(Wo, L.cout, K, col, K, L.out.w, L.out.bias, dst, L.cout, nullptr, 0, L.act_out, 0, panels(L.cout));
}


template void stem_pad_row<float>(const MnLayer&, const float*, int, int, int, float*, float*);
template void stem_pad_row<uint8_t>(const MnLayer&, const float*, int, int, int, uint8_t*, uint8_t*);
template void stem_pad<float>(const MnLayer&, const float*, int, int, float*, float*, Member&);
template void stem_pad<uint8_t>(const MnLayer&, const float*, int, int, uint8_t*, uint8_t*, Member&);
template void stem_row<float, float>(const MnLayer&, const float*, int, float*, int, int, float*);
template void stem_row<uint8_t, float>(const MnLayer&, const uint8_t*, int, uint8_t*, int, int, float*);
#if MN_ISA >= MN_ISA_AMX
template void stem_row<uint8_t, _Float16>(const MnLayer&, const uint8_t*, int, uint8_t*, int, int, _Float16*);
#endif

}  // namespace mn

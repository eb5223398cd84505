// The rows a depthwise window reads, for the two row-streaming paths (blocks.h: threads sharing an image; chain.cpp:
// a thread alone): a ring of made rows, and the window of one output row over its input rows.
#pragma once

#include <algorithm>
#include <cstdint>

#include "abi.h"
#include "kernels.h"

namespace mn {

// A ring of `span` rows of T (float, or fp16 for an int8 depthwise on AMX builds; row r in slot r % span), each
// made once, when first asked for, by make(r, slot).
template <typename T = float>
class RowRing {
 public:
  RowRing() = default;
  RowRing(T* slots, int64_t row_elements, int span) : slots_(slots), row_(row_elements), span_(span) {
    std::fill(held_, held_ + kMaxSpan, -1);
  }

  template <typename Make>
  const T* get(int r, Make&& make) {
    const int i = r % span_;
    T* slot = slots_ + i * row_;
    if (held_[i] != r) {
      make(r, slot);
      held_[i] = r;
    }
    return slot;
  }

 private:
  T* slots_ = nullptr;
  int64_t row_ = 0;
  int span_ = 1;
  int held_[kMaxSpan] = {};  // the row each slot holds, −1 for none
};

// rows[0..k) of output row y's window over an H-row input (rows y·s − d·(k − 1)/2 + i·d; `zero` where they fall
// outside the map). fetch(r) gives input row r; it is called for every row of the window's span in increasing
// order (a ring of `span` rows keeps them all), the rows between a dilated window's taps included.
template <typename T, typename Fetch>
void window_rows(const MnLayer& L, int y, int H, const T* zero, const T** rows, Fetch&& fetch) {
  const int K = L.kernel, D = L.dilation, lo = y * L.stride - D * (K - 1) / 2;
  const T* span[kMaxSpan];
  for (int r = std::max(lo, 0); r <= std::min(lo + depthwise_span(L) - 1, H - 1); ++r) span[r - lo] = fetch(r);
  for (int k = 0; k < K; ++k) {
    const int r = lo + k * D;
    rows[k] = r < 0 || r >= H ? zero : span[r - lo];
  }
}

}  // namespace mn

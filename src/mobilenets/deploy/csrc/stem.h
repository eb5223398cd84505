// The stem: a 3×3 convolution, stride 2, padding 1, as a GEMM over gathered patches (fp32 or int8).
#pragma once

#include <cstdint>

#include "abi.h"
#include "threads.h"

namespace mn {

// The threads copy the NCHW image into a padded NHWC buffer (sharing out its rows), so that each output pixel's
// 3×3×C patch is three contiguous runs of 3·C values. T = float: fp32. T = uint8_t: the image quantised to the
// int8 GEMM's codes (the padding is the zero point, i.e. 0.0).
template <typename T>
void stem_pad(const MnLayer& L, const float* img, int H, int W, T* padded, T* col, Member& me);

// Row y (0 .. H + 1) of that padded copy alone, into row ((W + 2) · C values); col: scratch for an int8 stem.
template <typename T>
void stem_pad_row(const MnLayer& L, const float* img, int H, int W, int y, T* row, T* col);

// The stem's output row y (Wo pixels × cout, fp32; for an int8 stem on AMX builds also fp16, the rows an fp16
// depthwise reads) into dst, from the padded image; col: the thread's patch row.
template <typename T, typename Out>
void stem_row(const MnLayer& L, const T* padded, int W, T* col, int y, int Wo, Out* dst);

}  // namespace mn

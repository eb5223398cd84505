// Row streaming across block boundaries for a thread that runs an image alone (V2 §5.1).
#pragma once

#include <cstdint>

#include "abi.h"

namespace mn {

// The layers at the start of the program that one thread streams row by row: the stem and the blocks after it
// whose input maps are at least min_width wide. 0 when the program does not start with a stem.
int chain_length(const MnLayer* layers, int n_layers, int H, int W, int min_width);

// The chain's output map (the last chained layer's): its height, width and channels.
struct MapSize {
  int h = 0, w = 0, c = 0;
};
MapSize chain_output(const MnLayer* layers, int n_chain, int H, int W);

// Floats of scratch the chain's rings use for an H × W image (its output map not included).
int64_t chain_floats(const MnLayer* layers, int n_chain, int H, int W);

// The image through the first n_chain layers by one thread; out gets the last one's whole output map (NHWC), whose
// size it returns. scratch: chain_floats(...) floats.
MapSize run_chain(const MnLayer* layers, int n_chain, const float* img, int H, int W, float* out, float* scratch);

}  // namespace mn

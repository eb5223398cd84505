// The graph walk (graph.cpp).
#pragma once

#include "abi.h"
#include "plan.h"
#include "threads.h"

namespace mn {

// One image through the whole program by the threads of me's team (a team of one: one thread alone), its
// buffers in s; logits gets the classifier's output (or the pooled features; for a program of MN_TAP layers,
// the tapped maps one after another, each NHWC).
void run_image(const MnLayer* layers, int n_layers, const float* img, int H, int W, float* logits, const Scratch& s,
               Member& me);

}  // namespace mn

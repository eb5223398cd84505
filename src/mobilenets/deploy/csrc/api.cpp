// The C API fused.py calls through ctypes (declared in abi.h).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "abi.h"
#include "graph.h"
#include "kernels.h"
#include "plan.h"
#include "threads.h"

using namespace mn;

extern "C" {

int32_t mn_abi_version() { return MN_ABI_VERSION; }

int64_t mn_struct_size(int32_t which) {
  switch (which) {
    case MN_STRUCT_CONV: return sizeof(MnConv);
    case MN_STRUCT_LAYER: return sizeof(MnLayer);
    default: return -1;
  }
}

int32_t mn_isa() { return MN_ISA; }

// Linux hands out the AMX tile state (8 KB per thread's context) only to a process that asks for it first.
int32_t mn_prepare() {
#if MN_ISA >= MN_ISA_AMX
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? 0 : 1;
#else
  return 0;
#endif
}

// Floats of scratch memory one image run by `threads` threads together uses: every activation the engine
// holds lives in it (buffers are reused layer after layer), so this bounds its live activation memory.
int64_t mn_image_floats(const MnLayer* layers, int n_layers, int H, int W, int threads) {
  return group_floats(make_plan(layers, n_layers, H, W, threads == 1), threads);
}

// Floats of scratch memory that mn_run needs for a H×W input with this many threads.
int64_t mn_scratch_floats(const MnLayer* layers, int n_layers, int H, int W, int threads) {
  const Plan solo = make_plan(layers, n_layers, H, W, true);
  const Plan team = threads == 1 ? solo : make_plan(layers, n_layers, H, W, false);
  // AMX int8 tiles read whole 16-row tiles of their input codes in place: up to 15 rows of the widest input past
  // the last buffer, which this slack keeps inside the allocation (those rows feed C rows never stored).
  int64_t widest = 0;
  for (int i = 0; i < n_layers; ++i)
    widest = std::max<int64_t>(widest, std::max({layers[i].cin, layers[i].cmid, layers[i].cout}));
  return threads * group_floats(solo, 1) + group_floats(team, threads) + 16 * widest / 4 + 16;
}

// Run N images (NCHW, fp32) through the program; out gets N rows of out_stride floats. With at least as many
// images as threads each thread runs whole images alone (no barriers); the rest are shared by all threads.
int mn_run(const MnLayer* layers, int n_layers, const float* input, int N, int C, int H, int W, float* out,
           int out_stride, int threads, float* scratch) {
  if (threads < 1 || N < 0) return 1;
  if (H + 2 > kMaxItems) return 2;
  bool tiles = false;  // AMX tiles are configured per thread, and only when a layer uses them (bf16, or int8 on AMX)
  for (int i = 0; i < n_layers; ++i) {
    const MnLayer& L = layers[i];
    // fused.py refuses these first; a wrong layer list must not overrun the ring.
    if (L.kind == MN_BLOCK && ((L.kernel != 3 && L.kernel != 5) || L.dilation < 1 || depthwise_span(L) > kMaxSpan ||
                               (L.dilation > 1 && L.stride != 1)))
      return 3;
    tiles |= L.expand.wb || L.out.wb || (MN_ISA >= MN_ISA_AMX && (L.expand.q || L.out.q));
  }
  const Plan solo_plan = make_plan(layers, n_layers, H, W, true);
  const Plan team_plan = threads == 1 ? solo_plan : make_plan(layers, n_layers, H, W, false);
  const int64_t image = static_cast<int64_t>(C) * H * W;
  const int alone = N / threads * threads;  // images run one per thread
  std::vector<Scratch> solo;
  float* base = scratch;
  for (int t = 0; t < threads; ++t) {
    solo.push_back(carve(solo_plan, 1, base));
    base += group_floats(solo_plan, 1);
  }
  const Scratch shared = carve(team_plan, threads, base);
  Team team(threads);
  auto work = [&](int t) {
    // Denormals flushed to zero in every thread (the caller's setting is restored below): activations of a
    // random-initialised network decay into them, and CPUs handle them tens of times slower.
    _mm_setcsr(_mm_getcsr() | 0x8040);
    if (tiles) tiles_configure();
    Team own(1);
    Member alone_member{own, 0}, shared_member{team, t};
    for (int n = t; n < alone; n += threads)
      run_image(layers, n_layers, input + n * image, H, W, out + static_cast<int64_t>(n) * out_stride, solo[t],
                alone_member);
    for (int n = alone; n < N; ++n)
      run_image(layers, n_layers, input + n * image, H, W, out + static_cast<int64_t>(n) * out_stride, shared,
                shared_member);
    if (tiles) tiles_release();
  };
  const unsigned int csr = _mm_getcsr();
  pool_run(threads, work);
  _mm_setcsr(csr);
  return 0;
}

}  // extern "C"
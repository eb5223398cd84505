// How the threads share the work: a persistent pool that runs one job on T threads, a spin barrier per block,
// and Share, which hands out a region's rows or channel panels as the threads go.
#pragma once

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

namespace mn {

// A spin wait that gives the core away now and then: when the host runs more threads than it has cores (other
// processes, or more engine threads than cores), the thread we wait for may be queued behind us on our own core,
// and pure spinning would burn our whole time slice before it runs (measured: 2-thread calls of 100+ ms at a load
// average of 12 on 2 cores). A few hundred pauses first, so that a quiet host pays no system call.
inline void relax(int& spins) {
  if (++spins < 256) {
    _mm_pause();
  } else {
    sched_yield();
    spins = 0;
  }
}

struct Barrier {
  std::atomic<int> count{0};
  std::atomic<int> generation{0};
  int threads = 1;
  void wait() {
    if (threads == 1) return;
    const int gen = generation.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      count.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_acq_rel);
    } else {
      for (int spins = 0; generation.load(std::memory_order_acquire) == gen;) relax(spins);
    }
  }
};

// Work is shared out while it runs, not fixed in advance: on this shared host one vCPU is often slowed by a
// neighbour for a while, and with a fixed half each the other thread then waited at the barrier (measured: up to
// a quarter of a call). Each thread owns one contiguous segment of a region's items (rows, or channel panels) and
// takes them from the front, in order (a ring of expanded rows carries over from one to the next); a thread done
// with its own takes what is left of the others' from the back. A segment's state is one word: the region it
// belongs to (epoch, 32 bits), then its front and back (16 bits each); a state of an earlier region reads as
// the whole segment untaken, so nothing needs resetting between regions (a barrier separates them).
struct alignas(64) Segment {
  std::atomic<uint64_t> state{0};
};

constexpr int kMaxItems = 65535;  // front and back are 16-bit

// What the threads sharing one image share.
struct Team {
  explicit Team(int n) : threads(n), segments(new Segment[n]) { bar.threads = n; }
  int threads;
  Barrier bar;
  std::unique_ptr<Segment[]> segments;
};

// One thread of a team.
struct Member {
  Team& team;
  int t;
  uint32_t epoch = 0;  // regions begun so far; every thread begins the same ones
  int threads() const { return team.threads; }
  void wait() { team.bar.wait(); }
};

inline void split(int n, int t, int threads, int* lo, int* hi) {
  *lo = static_cast<int>(static_cast<int64_t>(n) * t / threads);
  *hi = static_cast<int>(static_cast<int64_t>(n) * (t + 1) / threads);
}

// One region's units [0, units) as one thread of the team sees them, the items being chunks of `per` units (the
// last may be shorter). Every thread of the team must open the region and drain it, and a barrier must come
// before the next region's items are taken.
class Share {
 public:
  Share(Member& m, int units, int per = 1)
      : m_(m), units_(units), per_(per), n_((units + per - 1) / per), epoch_(++m.epoch), seg_(m.t) {}

  // The units [*lo, *hi) of this thread's next item; false once none is left anywhere.
  bool next(int* lo, int* hi) {
    const int item = next();
    if (item < 0) return false;
    *lo = item * per_, *hi = std::min(units_, *lo + per_);
    return true;
  }

  // This thread's next item, -1 once none is left anywhere.
  int next() {
    const int T = m_.threads();
    if (T == 1) return alone_ < n_ ? alone_++ : -1;
    for (; tried_ < T; ++tried_, seg_ = (seg_ + 1) % T) {
      int lo, hi;
      split(n_, seg_, T, &lo, &hi);
      const int item = take(m_.team.segments[seg_].state, lo, hi, seg_ != m_.t);
      if (item >= 0) return item;
    }
    return -1;
  }

 private:
  int take(std::atomic<uint64_t>& state, int lo, int hi, bool from_back) const {
    uint64_t cur = state.load(std::memory_order_relaxed);
    for (;;) {
      int front = lo, back = hi;
      if (cur >> 32 == epoch_) front = static_cast<int>(cur & 0xffff), back = static_cast<int>((cur >> 16) & 0xffff);
      if (front >= back) return -1;
      const int item = from_back ? --back : front++;
      const uint64_t next = (static_cast<uint64_t>(epoch_) << 32) | (static_cast<uint64_t>(back) << 16) |
                            static_cast<uint64_t>(front);
      if (state.compare_exchange_weak(cur, next, std::memory_order_relaxed)) return item;
    }
  }

  Member& m_;
  const int units_, per_, n_;
  const uint32_t epoch_;
  int seg_, tried_ = 0;
  int alone_ = 0;  // a team of one takes the items in order, no atomics needed
};

// Channel panels in chunks: about eight per thread (one panel per item balanced no better and cost 2 % more with
// two threads, 2–4 % alone: measured), all in one for a thread alone.
inline int panel_chunk(int n, int threads) {
  return threads == 1 ? std::max(n, 1) : std::max(1, (n + 8 * threads - 1) / (8 * threads));
}

// Runs fn(0 .. threads−1) on the calling thread and threads − 1 workers that live as long as the process, and
// returns when every call has returned.
void pool_run(int threads, const std::function<void(int)>& fn);

}  // namespace mn

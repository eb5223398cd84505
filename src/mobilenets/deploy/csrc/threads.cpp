// The worker pool (threads.h).
#include "threads.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <thread>
#include <vector>

namespace mn {
namespace {

// Worker threads that live as long as the process: starting threads costs ~90 µs per call here, more than a
// barrier per layer. After a job they spin for kSpin (back-to-back calls find them awake, as ONNX Runtime's
// do), then sleep on a condition variable.
class Pool {
 public:
  void run(int threads, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> call(call_mutex_);  // one job at a time
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int t = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, t] { loop(t); });
    }
    job_ = &fn;
    active_ = threads;
    pending_.store(threads - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    fn(0);
    for (int spins = 0; pending_.load(std::memory_order_acquire) > 0;) relax(spins);
  }

 private:
  static constexpr auto kSpin = std::chrono::milliseconds(20);

  void loop(int t) {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        _mm_pause();
        if (++spins % 256 != 0) continue;
        if (std::chrono::steady_clock::now() - start > kSpin) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        } else {
          sched_yield();  // see relax() in threads.h
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (t < active_) {
        (*job_)(t);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex call_mutex_, sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 1;
  std::vector<std::thread> workers_;
};

// Never destroyed: its threads may be asleep when the process exits. A fork()ed child has none of its parent's
// worker threads (only the forking thread is copied), so the child starts a fresh pool of its own.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool;
    pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });  // the parent's Pool is left untouched (leaked)
  });
  return *g_pool;
}

}  // namespace

void pool_run(int threads, const std::function<void(int)>& fn) { pool().run(threads, fn); }

}  // namespace mn

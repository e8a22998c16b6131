// chatapp's own parallel loops, and the core they leave a drawing UI.
//
// Every parallel loop of chatapp's kernels runs through parallel_rows: at::parallel_for on
// torch's thread count, or, while a UI is lent a core (lend_threads), on that many threads fewer.
// Each chunk of every such loop computes outputs of its own (rows of a product, attention heads,
// pieces of a sum added in a fixed order afterwards, groups of 16 values for a vector function),
// so the numbers do not depend on how many threads run it. torch's own operations keep torch's
// thread count: only these loops lend. The count is one per process where the compiler makes an
// inline variable one symbol across libraries (GCC), else one per library; each library's
// lend_threads op sets its own, so setting both (chatapp.engine.core_lending) is right either way.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace chatapp_rows {

// Threads chatapp's loops leave unused (0: none), set from Python between decode steps.
inline std::atomic<int64_t> threads_lent{0};

inline void lend_threads(int64_t lent) { threads_lent.store(std::max<int64_t>(0, lent), std::memory_order_relaxed); }

// at::parallel_for(begin, end, grain, f), on threads_lent threads fewer than torch's (at least one).
template <class F>
void parallel_rows(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t lent = threads_lent.load(std::memory_order_relaxed);
  if (lent == 0) {
    at::parallel_for(begin, end, grain, f);
    return;
  }
  const int all = at::get_num_threads();  // the calling thread's own count (set up as torch sets it up)
  omp_set_num_threads(std::max<int64_t>(1, all - lent));
  try {
    at::parallel_for(begin, end, grain, f);
  } catch (...) {
    omp_set_num_threads(all);
    throw;
  }
  omp_set_num_threads(all);
}

// How many threads a loop of chatapp's runs on now, on the calling thread: the team size one
// such loop had, measured (for tests).
inline int64_t row_threads() {
  std::atomic<int64_t> most{1};
  parallel_rows(0, 64, 1, [&](int64_t, int64_t) {
    const int64_t team = omp_in_parallel() ? omp_get_num_threads() : 1;
    int64_t seen = most.load();
    while (team > seen && !most.compare_exchange_weak(seen, team)) {
    }
  });
  return most.load();
}

// Binds thread i of the calling thread's OpenMP team of torch's thread count (the team chatapp's
// loops run on; thread 0 is the calling thread, and a loop lent away leaves out the last one) to
// CPU cpus[i % size] alone. Returns each thread's Linux thread id, or -1 where it was not bound
// (always off Linux). chatapp.engine.core_lending frees them again from Python.
inline std::vector<int64_t> bind_threads(const std::vector<int64_t>& cpus) {
  const int all = at::get_num_threads();
  std::vector<int64_t> bound(all, -1);
#ifdef __linux__
  if (cpus.empty()) return bound;
#pragma omp parallel num_threads(all)
  {
    const int i = omp_get_thread_num();
    const int64_t cpu = cpus[static_cast<size_t>(i) % cpus.size()];
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu >= 0 && cpu < CPU_SETSIZE) {
      CPU_SET(cpu, &set);
      if (sched_setaffinity(0, sizeof set, &set) == 0) bound[i] = syscall(SYS_gettid);
    }
  }
#endif
  return bound;
}

}  // namespace chatapp_rows

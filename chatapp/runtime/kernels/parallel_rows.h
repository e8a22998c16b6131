// chatapp's own parallel loops, and the core they leave a drawing UI.
//
// Every parallel loop of chatapp's kernels runs through parallel_rows: at::parallel_for on
// torch's thread count, or, while a UI is lent a core (lend_threads), on that many threads fewer.
// Each chunk of every such loop computes outputs of its own (rows of a product, attention heads,
// pieces of a sum added in a fixed order afterwards), so the numbers do not depend on how many
// threads run it. torch's own operations keep torch's thread count: only these loops lend.
// Each library that includes this has its own count (the int4 kernel's, the block kernel's).
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace chatapp_rows {

// Threads chatapp's loops leave unused (0: none), set from Python between decode steps.
inline std::atomic<int64_t> threads_lent{0};

// How many threads chatapp's loops run on now, on the calling thread.
inline int64_t row_threads() {
  return std::max<int64_t>(1, at::get_num_threads() - threads_lent.load(std::memory_order_relaxed));
}

inline void lend_threads(int64_t lent) { threads_lent.store(std::max<int64_t>(0, lent), std::memory_order_relaxed); }

// at::parallel_for(begin, end, grain, f) on row_threads() threads.
template <class F>
void parallel_rows(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t lent = threads_lent.load(std::memory_order_relaxed);
  if (lent == 0) {
    at::parallel_for(begin, end, grain, f);
    return;
  }
  const int all = omp_get_max_threads();  // the calling thread's own count: its next regions only
  omp_set_num_threads(std::max<int64_t>(1, all - lent));
  try {
    at::parallel_for(begin, end, grain, f);
  } catch (...) {
    omp_set_num_threads(all);
    throw;
  }
  omp_set_num_threads(all);
}

}  // namespace chatapp_rows

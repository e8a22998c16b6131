// The vocabulary passes of chatapp's LM head (chatapp.lm_head), each a single pass over a row of
// V float32 numbers, shared by the head's step operators and its whole choice (lm_head_steps.cpp):
// - best_of: the k highest of a vector of scores, highest first, ties at equal scores broken by
//   the lower index, as chatapp.lm_head.top_k_reference defines them; it compares 16 scores at
//   a time (one vector compare) with the k-th best so far, where torch.topk (a partial sort, on
//   one thread) took about 1 ms for a 262,144-token vocabulary;
// - nonzero_ids: the ids of a distribution's nonzero probabilities, ascending (torch.nonzero's
//   answer, which took about 0.4 ms there), 16 probabilities a vector compare;
// - raw_numbers: the raw distribution's log-normaliser, entropy and a token's rank, in two
//   passes (a log-softmax, its exponential, their dot and a comparison took about 0.65 ms there);
// - all_finite: whether a row holds neither NaN nor an infinity.
// Everything sits in an unnamed namespace, as in block_dot.h.

#pragma once

#include "block_dot.h"
#include "vector_exp.h"

#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t CHUNK = 16;  // scores compared at a time

// Whether any of the 16 values at `v` is above `threshold` (`above`) or differs from it.
template <bool above>
inline bool any_of_16(const float* v, float threshold) {
#if defined(__AVX512F__)
  const __m512 t = _mm512_set1_ps(threshold);
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(v), t, above ? _CMP_GT_OQ : _CMP_NEQ_UQ) != 0;
#elif defined(__AVX2__)
  const __m256 t = _mm256_set1_ps(threshold);
  constexpr int op = above ? _CMP_GT_OQ : _CMP_NEQ_UQ;
  const __m256 hits = _mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(v), t, op), _mm256_cmp_ps(_mm256_loadu_ps(v + 8), t, op));
  return _mm256_movemask_ps(hits) != 0;
#else
  bool any = false;
  for (int64_t j = 0; j < CHUNK; ++j) any |= above ? v[j] > threshold : v[j] != threshold;
  return any;
#endif
}

struct Entry {
  float score;
  int64_t index;
};

// a before b: the higher score, or the lower index at equal scores.
inline bool better(const Entry& a, const Entry& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// The k best of the n scores at s (0 <= k <= n), best first.
std::vector<Entry> best_of(const float* s, int64_t n, int64_t k) {
  // a heap of the k best so far whose front is the worst of them (std::*_heap with `better`)
  std::vector<Entry> heap;
  if (k <= 0) return heap;
  heap.reserve(k);
  for (int64_t i = 0; i < k; ++i) {
    heap.push_back({s[i], i});
    std::push_heap(heap.begin(), heap.end(), better);
  }
  float worst = heap.front().score;  // a later score enters only when higher (its index is larger)
  for (int64_t i = k; i < n; i += CHUNK) {
    const int64_t stop = std::min(n, i + CHUNK);
    bool any = false;
    if (stop - i == CHUNK) {
      any = any_of_16<true>(s + i, worst);
    } else {
      for (int64_t j = i; j < stop; ++j) any |= s[j] > worst;
    }
    if (!any) continue;
    for (int64_t j = i; j < stop; ++j) {
      if (s[j] > worst) {
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = {s[j], j};
        std::push_heap(heap.begin(), heap.end(), better);
        worst = heap.front().score;
      }
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  return heap;
}

// The ids of the nonzero ones of the n probabilities at p, ascending.
std::vector<int64_t> nonzero_ids(const float* p, int64_t n) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; i += CHUNK) {
    const int64_t stop = std::min(n, i + CHUNK);
    bool any = false;
    if (stop - i == CHUNK) {
      any = any_of_16<false>(p + i, 0.f);
    } else {
      for (int64_t j = i; j < stop; ++j) any |= p[j] != 0.f;
    }
    if (!any) continue;
    for (int64_t j = i; j < stop; ++j)
      if (p[j] != 0.f) ids.push_back(j);
  }
  return ids;
}

// Whether none of the n values at x is NaN or infinite (x * 0 is 0 for exactly the others).
bool all_finite(const float* x, int64_t n) {
  float lanes[CHUNK] = {};
  int64_t i = 0;
  for (; i + CHUNK <= n; i += CHUNK)
    for (int64_t j = 0; j < CHUNK; ++j) lanes[j] += x[i + j] * 0.f;
  float total = 0.f;
  for (; i < n; ++i) total += x[i] * 0.f;
  for (int64_t j = 0; j < CHUNK; ++j) total += lanes[j];
  return total == 0.f;
}

constexpr int64_t SUMMARY_CHUNK = 16384;  // logits a thread sums at a time

struct RawNumbers {
  double log_z;    // log sum e^x: the log-softmax's normaliser
  double entropy;  // in nats
  int64_t above;   // logits above x[token] (0 without a token)
};

// The raw distribution's numbers of the n logits at x, in two passes: m = max x, then
// S = sum e^(x - m), T = sum e^(x - m) (x - m) (summed in float64) and the count of logits above
// x[token]: log S + m, log S - T / S and that count (0 when token < 0). An exponent below -87
// counts as -87 (e^-87 = 1.6e-38, nothing a float32 probability can show).
RawNumbers raw_numbers(const float* x, int64_t n, int64_t token) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 vm = _mm512_set1_ps(m);
  for (; i + CHUNK <= n; i += CHUNK) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
  m = _mm512_reduce_max_ps(vm);
#endif
  for (; i < n; ++i) m = std::max(m, x[i]);
  const float pivot = token >= 0 ? x[token] : std::numeric_limits<float>::infinity();
  const int64_t chunks = (n + SUMMARY_CHUNK - 1) / SUMMARY_CHUNK;
  std::vector<double> sums(chunks), tilts(chunks);
  std::vector<int64_t> above(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * SUMMARY_CHUNK, stop = std::min(n, start + SUMMARY_CHUNK);
      double s = 0, t = 0;
      int64_t count = 0, j = start;
#if defined(__AVX512F__)
      __m512d vs = _mm512_setzero_pd(), vt = _mm512_setzero_pd();
      const __m512 vmax = _mm512_set1_ps(m), floor = _mm512_set1_ps(-87.f), vp = _mm512_set1_ps(pivot);
      for (; j + CHUNK <= stop; j += CHUNK) {
        const __m512 v = _mm512_loadu_ps(x + j);
        const __m512 d = _mm512_max_ps(_mm512_sub_ps(v, vmax), floor);
        const __m512 e = exp16(d), ed = _mm512_mul_ps(e, d);
        // summed in float64, eight lanes a half
        vs = _mm512_add_pd(vs, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        vs = _mm512_add_pd(vs, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
        vt = _mm512_add_pd(vt, _mm512_cvtps_pd(_mm512_castps512_ps256(ed)));
        vt = _mm512_add_pd(vt, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ed), 1))));
        count += __builtin_popcount(_mm512_cmp_ps_mask(v, vp, _CMP_GT_OQ));
      }
      s = _mm512_reduce_add_pd(vs);
      t = _mm512_reduce_add_pd(vt);
#endif
      for (; j < stop; ++j) {
        const float d = std::max(x[j] - m, -87.f), e = std::exp(d);
        s += e;
        t += double(e * d);
        count += x[j] > pivot;
      }
      sums[c] = s;
      tilts[c] = t;
      above[c] = count;
    }
  });
  double s = 0, t = 0;
  int64_t count = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    s += sums[c];
    t += tilts[c];
    count += above[c];
  }
  return {std::log(s) + m, std::log(s) - t / s, count};
}

}  // namespace

// Two steps of chatapp's LM head (chatapp.lm_head), each a single pass over the vocabulary:
// - top_k: the k highest of a vector of scores, highest first, ties at equal scores broken by
//   the lower index, as chatapp.lm_head.top_k_reference defines them; it compares 16 scores at
//   a time (one vector compare) with the k-th best so far, where torch.topk (a partial sort, on
//   one thread) took about 1 ms for a 262,144-token vocabulary;
// - kept_ids: the ids of a distribution's nonzero probabilities, ascending (torch.nonzero's
//   answer, which took about 0.4 ms there), 16 probabilities a vector compare.

#include "block_dot.h"

#include <tuple>

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

std::tuple<at::Tensor, at::Tensor> top_k(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.dim() == 1 && scores.scalar_type() == at::kFloat, "top_k: scores must be one float32 row");
  const at::Tensor row = scores.contiguous();
  const int64_t n = row.numel();
  TORCH_CHECK(k > 0 && k <= n, "top_k: k must be between 1 and the number of scores");
  const float* s = row.data_ptr<float>();
  // a heap of the k best so far whose front is the worst of them (std::*_heap with `better`)
  std::vector<Entry> heap;
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
  at::Tensor values = at::empty({k}, row.options());
  at::Tensor indices = at::empty({k}, row.options().dtype(at::kLong));
  float* vp = values.data_ptr<float>();
  int64_t* ip = indices.data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j) {
    vp[j] = heap[j].score;
    ip[j] = heap[j].index;
  }
  return {values, indices};
}

at::Tensor kept_ids(const at::Tensor& probabilities) {
  TORCH_CHECK(probabilities.dim() == 1 && probabilities.scalar_type() == at::kFloat,
              "kept_ids: probabilities must be one float32 row");
  const at::Tensor row = probabilities.contiguous();
  const float* p = row.data_ptr<float>();
  const int64_t n = row.numel();
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
  at::Tensor out = at::empty({(int64_t)ids.size()}, row.options().dtype(at::kLong));
  std::copy(ids.begin(), ids.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(BLOCKS_NAMESPACE, lib) {
  lib.def("top_k(Tensor scores, int k) -> (Tensor, Tensor)", &top_k);
  lib.def("kept_ids(Tensor probabilities) -> Tensor", &kept_ids);
}

// chatapp's LM head (chatapp.lm_head) in C++, shared by the block kernel's operators
// (lm_head_steps.cpp, block_linear.cpp) and the int4 kernel's whole decode step (int4_vnni.cpp).
//
// Its vocabulary passes, each a single pass over a row of V float32 numbers:
// - best_of: the k highest of a vector of scores, highest first, ties at equal scores broken by
//   the lower index, as chatapp.lm_head.top_k_reference defines them; it compares 16 scores at
//   a time (one vector compare) with the k-th best so far, where torch.topk (a partial sort, on
//   one thread) took about 1 ms for a 262,144-token vocabulary;
// - nonzero_ids: the ids of a distribution's nonzero probabilities, ascending (torch.nonzero's
//   answer, which took about 0.4 ms there), 16 probabilities a vector compare;
// - raw_numbers: the raw distribution's log-normaliser, entropy and a token's rank, in two
//   passes (a log-softmax, its exponential, their dot and a comparison took about 0.65 ms there);
// - all_finite: whether a row holds neither NaN nor an infinity.
//
// exact_logits: an int4 LM head's best rows recomputed in float32 from the file's blocks.
//
// choose_token: the whole choice of one token from its logits, chatapp.lm_head.choose_token's
// steps in their order, each the same operation (the passes above where the Python steps use
// them, torch's own operators for the rest: softmax, multinomial, topk, exp), so the numbers and
// the draws are the Python steps' (tests/test_native_choice.py holds the two together):
//   repetition penalty on the raw logits (transformers' RepetitionPenaltyLogitsProcessor)
//   -> temperature (0: all probability on the argmax) -> top-k -> top-p -> min-p (transformers'
//   TopPLogitsWarper and MinPLogitsWarper, over the top-k's tokens: the rest are out already)
//   -> softmax -> one torch.multinomial draw from the seeded generator, over the kept tokens
//   when they are under a quarter of the vocabulary -> the raw distribution's numbers and the
//   best candidates (chatapp.lm_head.describe_choice).
//
// Everything sits in an unnamed namespace, as in block_dot.h.

#pragma once

#include "block_dot.h"
#include "vector_exp.h"

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
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
  chatapp_rows::parallel_rows(0, chunks, 1, [&](int64_t begin, int64_t end) {
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

constexpr int64_t COMPACT_SAMPLING_RATIO = 4;  // chatapp.lm_head.COMPACT_SAMPLING_RATIO

at::Tensor checked_row(const at::Tensor& row, const char* what) {
  TORCH_CHECK(row.dim() == 1 && row.scalar_type() == at::kFloat && row.device().is_cpu(), what, " must be one float32 row");
  return row.contiguous();
}

std::tuple<at::Tensor, at::Tensor> top_k(const at::Tensor& scores, int64_t k) {
  const at::Tensor row = checked_row(scores, "top_k: scores");
  TORCH_CHECK(k > 0 && k <= row.numel(), "top_k: k must be between 1 and the number of scores");
  const std::vector<Entry> best = best_of(row.data_ptr<float>(), row.numel(), k);
  at::Tensor values = at::empty({k}, row.options());
  at::Tensor indices = at::empty({k}, row.options().dtype(at::kLong));
  float* vp = values.data_ptr<float>();
  int64_t* ip = indices.data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j) {
    vp[j] = best[j].score;
    ip[j] = best[j].index;
  }
  return {values, indices};
}

at::Tensor long_tensor(const std::vector<int64_t>& values) {
  at::Tensor out = at::empty({(int64_t)values.size()}, at::TensorOptions().dtype(at::kLong));
  std::copy(values.begin(), values.end(), out.data_ptr<int64_t>());
  return out;
}


// chatapp.lm_head.raw_numbers as the Python step computes it on this build: the vocabulary pass
// where the engine uses it (the AVX512 build), else torch's float32 log-sum-exp.
RawNumbers raw_numbers_of(const at::Tensor& logits, int64_t token) {
#if defined(__AVX512F__)
  return raw_numbers(logits.data_ptr<float>(), logits.numel(), token);
#else
  const at::Tensor log_z = at::logsumexp(logits, -1);
  const at::Tensor log_raw = logits - log_z;
  const double entropy = (-at::dot(log_raw.exp(), log_raw)).item<double>();
  const int64_t above = at::count_nonzero(logits > logits[token]).item<int64_t>();
  return {log_z.item<double>(), entropy, above};
#endif
}

// transformers' TopPLogitsWarper and MinPLogitsWarper (min_tokens_to_keep 1) on scores (1, S).
at::Tensor filtered(at::Tensor scores, double top_p, double min_p) {
  const double filter_value = -std::numeric_limits<double>::infinity();
  if (top_p < 1.0) {
    const auto [sorted_logits, sorted_indices] = at::sort(scores, -1, /*descending=*/false);
    const at::Tensor cumulative = sorted_logits.softmax(-1).cumsum(-1);
    at::Tensor remove = cumulative <= (1 - top_p);
    remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);
    scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), filter_value);
  }
  if (min_p > 0.0) {
    const at::Tensor probs = at::softmax(scores, -1);
    at::Tensor remove = probs < min_p * probs.amax(-1, /*keepdim=*/true);
    remove.scatter_(-1, std::get<1>(at::topk(probs, 1, -1)), false);
    scores = scores.masked_fill(remove, filter_value);
  }
  return scores;
}

// scores (1, V) / temperature as torch divides float32 numbers by a number (each quotient rounded
// once, in float32), on the calling thread: torch's division would run on all of torch's threads,
// one of which a drawing UI may have been lent (parallel_rows.h).
at::Tensor divided(const at::Tensor& scores, double temperature) {
  const at::Tensor in = scores.contiguous();
  at::Tensor out = at::empty_like(in);
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float t = static_cast<float>(temperature);
  for (int64_t i = 0, n = in.numel(); i < n; ++i) y[i] = x[i] / t;
  return out;
}

// One token chosen from raw logits (V,) float32, as chatapp.lm_head.choose_token chooses it with
// these settings (top_p 1: off; min_p 0: off; penalty 1 or no previous ids: off), with the
// draw from `generator`. Returns float64 numbers: the token's raw rank (1-based), the raw
// entropy in bits, then the ids, sampled probabilities and raw probabilities of the token and
// the best min(top_n, V) candidates (chatapp.lm_head.packed_numbers' order); and the kept tokens' ids
// (ascending) and probabilities. All three are empty when a logit is NaN or infinite.
std::tuple<at::Tensor, at::Tensor, at::Tensor> choose_token(const at::Tensor& logits, double temperature, int64_t k,
                                                            double top_p, double min_p, double penalty,
                                                            const at::Tensor& previous_ids,
                                                            std::optional<at::Generator> generator, int64_t top_n) {
  const at::Tensor raw = checked_row(logits, "choose_token: logits");
  const int64_t vocab = raw.numel();
  TORCH_CHECK(vocab > 0 && top_n >= 0 && temperature >= 0, "choose_token: bad settings");
  const auto floats = raw.options();
  if (!all_finite(raw.data_ptr<float>(), vocab))
    return {at::empty({0}, floats.dtype(at::kDouble)), at::empty({0}, floats.dtype(at::kLong)), at::empty({0}, floats)};
  // the repetition penalty acts on the raw logits, before temperature
  at::Tensor scores = raw.unsqueeze(0);  // (1, V)
  if (penalty != 1.0 && previous_ids.numel() > 0) {
    const at::Tensor ids = previous_ids.reshape({1, -1}).to(at::kLong).clamp_max(vocab);
    const at::Tensor padded = at::constant_pad_nd(scores, {0, 1});
    at::Tensor score = at::gather(padded, 1, ids);
    score = at::where(score < 0, score * penalty, score / penalty);
    scores = padded.scatter(1, ids, score).narrow(1, 0, vocab);
  }
  at::Tensor kept, kept_probs;  // the kept tokens, ascending, and their probabilities
  at::Tensor probabilities;     // (V,): the whole distribution, where it is made
  if (temperature == 0) {  // greedy: all probability on the argmax
    kept = scores.argmax(-1);
    kept_probs = at::ones({1}, floats);
  } else {
    const at::Tensor scaled = divided(scores, temperature);  // (1, V)
    const bool filters = top_p < 1.0 || min_p > 0.0;
    if (0 < k && k < vocab) {  // the top-k: the k highest scaled logits, ties to the lower id
      auto [values, ids] = top_k(scaled[0], k);
      at::Tensor probs = at::softmax(filters ? filtered(values.unsqueeze(0), top_p, min_p) : values.unsqueeze(0), -1)[0];
      const at::Tensor order = at::argsort(ids);  // ascending ids: torch.nonzero's order
      ids = ids.index_select(0, order);
      probs = probs.index_select(0, order);
      const at::Tensor nonzero = probs != 0;
      kept = ids.masked_select(nonzero);
      kept_probs = probs.masked_select(nonzero);
    } else {
      probabilities = at::softmax(filters ? filtered(scaled, top_p, min_p) : scaled, -1)[0];
      kept = long_tensor(nonzero_ids(probabilities.data_ptr<float>(), vocab));
      kept_probs = probabilities.index_select(0, kept);
    }
  }
  const auto whole = [&]() {  // the (V,) distribution, zero outside the kept tokens
    if (!probabilities.defined()) probabilities = at::zeros({vocab}, floats).index_copy_(0, kept, kept_probs);
    return probabilities;
  };
  // one draw with torch.multinomial from the seeded generator
  const int64_t support = kept.numel();
  at::Tensor token;
  if (support * COMPACT_SAMPLING_RATIO < vocab) {
    token = kept.index_select(0, at::multinomial(kept_probs, 1, false, generator));
  } else {
    token = at::multinomial(whole(), 1, false, generator);
  }
  const int64_t token_id = token.item<int64_t>();
  // the step's numbers: the raw distribution's, then the best candidates, kept tokens first
  const RawNumbers numbers = raw_numbers_of(raw, token_id);
  const int64_t n = std::min(top_n, vocab);
  const at::Tensor log_z = at::scalar_tensor(numbers.log_z, floats.dtype(at::kDouble));
  at::Tensor top;
  if (support >= n) {
    top = kept.index_select(0, std::get<1>(at::topk(kept_probs, n)));
  } else {  // filtered-out tokens after the kept ones, by raw probability
    const at::Tensor raw_probs = at::exp(raw.to(at::kDouble) - log_z).to(at::kFloat);
    top = std::get<1>(at::topk(at::where(whole() > 0, whole(), raw_probs - 1.0), n));
  }
  const at::Tensor ids = at::cat({token, top});  // (n + 1,)
  const at::Tensor sampled = support >= n ? kept_probs.index_select(0, at::searchsorted(kept, ids)) : whole().index_select(0, ids);
  const at::Tensor raw_probs = at::exp(raw.index_select(0, ids).to(at::kDouble) - log_z).to(at::kFloat);
  const at::Tensor head = at::tensor({double(numbers.above + 1), numbers.entropy / std::log(2.0)}, floats.dtype(at::kDouble));
  const at::Tensor packed = at::cat({head, ids.to(at::kDouble), sampled.to(at::kDouble), raw_probs.to(at::kDouble)});
  return {packed, kept, kept_probs};
}

// An LM head's exact rows (chatapp.runtime.quantize.OutputHead): logits[i] = w_i . hidden in
// float32, w_i the dequantized row i, for the `top` highest logits (best_of's choice: ties to the
// lower id) and the rows `always`, in place; the other logits stay as they are.
void exact_logits(const at::Tensor& logits, const at::Tensor& hidden, int64_t top, const at::Tensor& always,
                  const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& low, int64_t bits, int64_t block) {
  const Layout l = layout_of(codes, scale, low, block, bits);
  const int64_t vocab = logits.numel(), k = l.k;
  TORCH_CHECK(logits.dim() == 1 && logits.scalar_type() == at::kFloat && logits.is_contiguous() && vocab <= codes.size(0),
              "exact_logits: logits must be one contiguous float32 row, at most one a weight row");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.is_contiguous() && hidden.numel() == k,
              "exact_logits: hidden must be one contiguous float32 vector of the weight's width");
  TORCH_CHECK(top >= 0 && top <= vocab, "exact_logits: top out of range");
  float* out = logits.data_ptr<float>();
  std::vector<int64_t> ids;
  for (const Entry& entry : best_of(out, vocab, top)) ids.push_back(entry.index);
  const at::Tensor extra = always.reshape({-1}).to(at::kLong).contiguous();
  for (int64_t i = 0; i < extra.numel(); ++i) {
    const int64_t id = extra.data_ptr<int64_t>()[i];
    TORCH_CHECK(id >= 0 && id < vocab, "exact_logits: row ", id, " out of range");
    ids.push_back(id);
  }
  const float* x = hidden.data_ptr<float>();
  std::vector<float> exact(ids.size());
  chatapp_rows::parallel_rows(0, (int64_t)ids.size(), 64, [&](int64_t begin, int64_t end) {
    RowScales scales(l);
    std::vector<float> row(k);
    for (int64_t i = begin; i < end; ++i) {
      dequantized_row(l, bits, block, scales, ids[i], row.data());
      exact[i] = dot(row.data(), x, k);
    }
  });
  for (size_t i = 0; i < ids.size(); ++i) out[ids[i]] = exact[i];
}

}  // namespace

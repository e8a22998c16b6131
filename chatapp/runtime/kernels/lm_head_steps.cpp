// chatapp's LM head (chatapp.lm_head) on the kernel: its vocabulary passes as operators
// (top_k, kept_ids, raw_summary: lm_head_steps.h), and choose_token, the whole choice of one
// token from its logits in one call.
//
// choose_token runs chatapp.lm_head.choose_token's steps in their order, each the same operation
// (the vocabulary passes of lm_head_steps.h where the Python steps use them, torch's own
// operators for the rest: softmax, multinomial, topk, exp), so the numbers and the draws are the
// Python steps' (tests/test_native_choice.py holds the two together):
//   repetition penalty on the raw logits (transformers' RepetitionPenaltyLogitsProcessor)
//   -> temperature (0: all probability on the argmax) -> top-k -> top-p -> min-p (transformers'
//   TopPLogitsWarper and MinPLogitsWarper, over the top-k's tokens: the rest are out already)
//   -> softmax -> one torch.multinomial draw from the seeded generator, over the kept tokens
//   when they are under a quarter of the vocabulary -> the raw distribution's numbers and the
//   best candidates (chatapp.lm_head.describe_choice).

#include "lm_head_steps.h"

#include <optional>
#include <tuple>

namespace {

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

at::Tensor kept_ids(const at::Tensor& probabilities) {
  const at::Tensor row = checked_row(probabilities, "kept_ids: probabilities");
  return long_tensor(nonzero_ids(row.data_ptr<float>(), row.numel()));
}

// float64 (3,): log-normaliser, entropy in nats, logits above `token`'s (chatapp.lm_head.raw_numbers).
at::Tensor raw_summary(const at::Tensor& logits, int64_t token) {
  const at::Tensor row = checked_row(logits, "raw_summary: logits");
  TORCH_CHECK(row.numel() > 0 && token < row.numel(), "raw_summary: token out of range");
  const RawNumbers numbers = raw_numbers(row.data_ptr<float>(), row.numel(), token);
  at::Tensor out = at::empty({3}, row.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  o[0] = numbers.log_z;
  o[1] = numbers.entropy;
  o[2] = double(numbers.above);
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

// One token chosen from raw logits (V,) float32, as chatapp.lm_head.choose_token chooses it with
// these settings (top_p 1: off; min_p 0: off; penalty 1 or no previous ids: off), with the
// draw from `generator`. Returns float64 numbers: the token's raw rank (1-based), the raw
// entropy in bits, then the ids, sampled probabilities and raw probabilities of the token and
// the best min(top_n, V) candidates (chatapp.lm_head._to_host's order); and the kept tokens' ids
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
    const at::Tensor scaled = (scores / temperature).contiguous();  // (1, V)
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(BLOCKS_NAMESPACE, lib) {
  lib.def("top_k(Tensor scores, int k) -> (Tensor, Tensor)", &top_k);
  lib.def("raw_summary(Tensor logits, int token) -> Tensor", &raw_summary);
  lib.def("kept_ids(Tensor probabilities) -> Tensor", &kept_ids);
  lib.def("choose_token(Tensor logits, float temperature, int k, float top_p, float min_p, float penalty, "
          "Tensor previous_ids, Generator? generator, int top_n) -> (Tensor, Tensor, Tensor)",
          &choose_token);
}

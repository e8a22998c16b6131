// The block kernel's LM-head operators (lm_head_steps.h): top_k, kept_ids, raw_summary and
// choose_token, for chatapp.lm_head.use_kernels; and lend_threads, row_threads and bind_threads,
// the threads its loops leave a drawing UI and the cores they run on (parallel_rows.h).

#include "lm_head_steps.h"

#include <optional>
#include <tuple>

namespace {

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

void lend_threads(int64_t lent) { chatapp_rows::lend_threads(lent); }
int64_t row_threads() { return chatapp_rows::row_threads(); }
std::vector<int64_t> bind_threads(std::vector<int64_t> cpus) { return chatapp_rows::bind_threads(cpus); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(BLOCKS_NAMESPACE, lib) {
  lib.def("lend_threads(int lent) -> ()", &lend_threads);  // parallel_rows.h
  lib.def("row_threads() -> int", &row_threads);
  lib.def("bind_threads(int[] cpus) -> int[]", &bind_threads);
  lib.def("top_k(Tensor scores, int k) -> (Tensor, Tensor)", &top_k);
  lib.def("raw_summary(Tensor logits, int token) -> Tensor", &raw_summary);
  lib.def("kept_ids(Tensor probabilities) -> Tensor", &kept_ids);
  lib.def("choose_token(Tensor logits, float temperature, int k, float top_p, float min_p, float penalty, "
          "Tensor previous_ids, Generator? generator, int top_n) -> (Tensor, Tensor, Tensor)",
          &choose_token);
}

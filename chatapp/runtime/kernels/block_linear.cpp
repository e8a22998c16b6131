// chatapp's block kernel: a linear layer computed straight from GGUF's block quantization.
//
// The weight is held as `chatapp.runtime.block_linear.ScaledBlocks` lays it out: codes (4-bit,
// two a byte; 5-bit signed, 20 bytes a block of 32; or one signed byte each; see
// `chatapp.runtime.block_weights`) and each block's scale and minimum as the file has them (see
// `Layout` in block_dot.h: float16 numbers, a K-quant's packed float16 and small integers, or
// float32), converted exactly to float32 before use; weight k of a block is
// `code[k] * scale + minimum`. Every product and sum is float32, so the outputs are those of a
// float32 matrix product with the exactly dequantized weights, but for the order in which the
// sums are rounded.
//
// Written as plain loops of fixed length that the compiler vectorizes for whatever it is told
// to target (`-mavx512f`, `-mavx2`, NEON, or none): one source, one build per instruction set,
// each registering its operators under its own namespace (BLOCKS_NAMESPACE), so a process can
// hold two builds side by side (the tests compare them).
#include "block_dot.h"
#include "lm_head_steps.h"

namespace {

at::Tensor block_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& low,
                        int64_t bits, int64_t block) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  const at::Tensor xc = x.contiguous();
  const int64_t rows_x = xc.size(0), k = xc.size(1), n = codes.size(0);
  const Layout l = layout_of(codes, scale, low, block, bits);
  TORCH_CHECK(l.k == k, "x has ", k, " columns, the weight ", l.k);
  const float* xp = xc.data_ptr<float>();
  // (M, K / block): each block's sum of x
  const std::vector<float> xsum = !l.has_low() ? std::vector<float>() : block_sums(xp, rows_x * l.blocks, block);
  at::Tensor y = at::empty({rows_x, n}, xc.options());
  const float* sp = xsum.data();
  float* yp = y.data_ptr<float>();
  DISPATCH(bits, block, run_linear<BITS, B>(l, xp, sp, yp, rows_x, n))
  return y;
}

at::Tensor block_dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& low, int64_t bits,
                            int64_t block) {
  const Layout l = layout_of(codes, scale, low, block, bits);
  const int64_t n = codes.size(0);
  at::Tensor out = at::empty({n, l.k}, at::TensorOptions().dtype(at::kFloat));
  DISPATCH(bits, block, run_dequantize<BITS, B>(l, out.data_ptr<float>(), n))
  return out;
}

at::Tensor block_rows(const at::Tensor& ids, const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& low,
                      int64_t bits, int64_t block) {
  // The rows `ids` of the dequantized weight (an embedding lookup), without the rest.
  const Layout l = layout_of(codes, scale, low, block, bits);
  const int64_t count = ids.numel(), k = l.k;
  const at::Tensor flat = ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t* idp = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(idp[i] >= 0 && idp[i] < codes.size(0), "row ", idp[i], " out of range");
  at::Tensor out = at::empty({count, k}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  RowScales scales(l);
  for (int64_t i = 0; i < count; ++i) dequantized_row(l, bits, block, scales, idp[i], op + i * k);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(BLOCKS_NAMESPACE, lib) {
  lib.def("block_linear(Tensor x, Tensor codes, Tensor scale, Tensor low, int bits, int block) -> Tensor",
          &block_linear);
  lib.def("block_dequantize(Tensor codes, Tensor scale, Tensor low, int bits, int block) -> Tensor", &block_dequantize);
  lib.def("block_rows(Tensor ids, Tensor codes, Tensor scale, Tensor low, int bits, int block) -> Tensor", &block_rows);
  lib.def("exact_logits(Tensor(a!) logits, Tensor hidden, int top, Tensor always, Tensor codes, Tensor scale, Tensor low, "
          "int bits, int block) -> ()", &exact_logits);
}

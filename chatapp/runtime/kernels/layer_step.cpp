// chatapp's decode step: one token through every decoder layer in one call, for the layers that
// chatapp.runtime.layered_decoder describes (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3) when each
// linear weight is in the block layout (block_dot.h) or a float32 matrix.
//
// The same mathematics as LayeredDecoder's layer in torch operations (its parity tests hold the
// two together), in float32, with no dispatch between the operations: a Gemma 3 270M layer
// is about 40 torch operations, and their overhead was most of a decode step.
//
// The layers are described in three flat lists, LAYER_TENSORS tensors, LAYER_INTS integers and
// LAYER_FLOATS numbers a layer, in the order chatapp.runtime.layer_step writes them:
//   tensors: the six norms' weights (input, post-attention, pre-MLP, post-MLP, q, k; an empty
//            tensor where the layer has none), then LINEAR_SLOTS linears of four tensors each
//            (codes or float32 matrix, scale, minimum, bias; empty where absent): q|k|v in up to
//            three slots, o, gate|up in up to two slots, down;
//   ints:    each linear slot's bits (4, 5 or 8: block codes; 32: a float32 matrix; 0: no slot)
//            and block size, then the sliding window (0: none) and the rotary table's index;
//   floats:  the six norms' epsilons, the attention soft-cap (0: none) and the attention scale.
// cos and sin are the rotary tables at `position`, a row for each table the layers use (Gemma 3:
// local and global), computed by the model's own rotary module.

#include "attention.h"
#include "block_dot.h"
#include "lm_head_steps.h"
#include "vector_exp.h"

#include <array>
#include <cmath>
#include <cstring>

namespace {

constexpr int64_t NORMS = 6;
constexpr int64_t LINEAR_SLOTS = 7;
constexpr int64_t LAYER_TENSORS = NORMS + 4 * LINEAR_SLOTS;
constexpr int64_t LAYER_INTS = 2 * LINEAR_SLOTS + 2;
constexpr int64_t LAYER_FLOATS = NORMS + 2;
enum NormSlot { INPUT_NORM, POST_ATTENTION_NORM, PRE_MLP_NORM, POST_MLP_NORM, Q_NORM, K_NORM };
enum LinearSlot { QKV = 0, O = 3, GATE_UP = 4, DOWN = 6 };
enum Activation { SILU = 0, GELU_TANH = 1, GELU = 2 };

struct Norm {
  const float* weight = nullptr;  // null: the layer has no such norm
  float eps = 0.f;
  int64_t size = 0;
};

struct Linear {
  int64_t bits = 0;  // 0: no slot
  int64_t block = 0;
  int64_t n = 0, k = 0;
  Layout blocks{};
  const float* matrix = nullptr;  // bits 32: (n, k) float32
  const float* bias = nullptr;
};

Norm norm_of(const at::Tensor& weight, double eps) {
  Norm norm;
  if (weight.numel() == 0) return norm;
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous(), "decode_layers: norms must be float32");
  norm.weight = weight.data_ptr<float>();
  norm.eps = (float)eps;
  norm.size = weight.numel();
  return norm;
}

Linear linear_of(const at::Tensor* t, int64_t bits, int64_t block) {
  Linear w;
  w.bits = bits;
  w.block = block;
  if (bits == 0) return w;
  if (bits == 32) {
    TORCH_CHECK(t[0].scalar_type() == at::kFloat && t[0].is_contiguous() && t[0].dim() == 2,
                "decode_layers: a float linear must be a contiguous float32 matrix");
    w.matrix = t[0].data_ptr<float>();
    w.n = t[0].size(0);
    w.k = t[0].size(1);
  } else {
    w.blocks = layout_of(t[0], t[1], t[2], block, bits);
    w.n = t[0].size(0);
    w.k = w.blocks.k;
  }
  if (t[3].numel()) {
    TORCH_CHECK(t[3].scalar_type() == at::kFloat && t[3].numel() == w.n, "decode_layers: a bias must be float32, one a row");
    w.bias = t[3].data_ptr<float>();
  }
  return w;
}

// y (n) = W x (k), plus the bias.
void apply(const Linear& w, const float* x, float* y) {
  if (w.bits == 32) {
    chatapp_rows::parallel_rows(0, w.n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) y[row] = dot(w.matrix + row * w.k, x, w.k);
    });
  } else {
    const std::vector<float> sums = !w.blocks.has_low() ? std::vector<float>() : block_sums(x, w.blocks.blocks, w.block);
    const int64_t bits = w.bits, block = w.block;
    DISPATCH(bits, block, run_linear<BITS, B>(w.blocks, x, sums.data(), y, 1, w.n))
  }
  if (w.bias != nullptr)
    for (int64_t i = 0; i < w.n; ++i) y[i] += w.bias[i];
}

using Slots = std::array<Linear, LINEAR_SLOTS>;

// The slots `first..first+count` one after another: their outputs side by side in y.
void apply_slots(const Slots& slots, int64_t first, int64_t count, const float* x, float* y) {
  int64_t width = 0;
  for (int64_t s = first; s < first + count; ++s) {
    if (slots[s].bits == 0) continue;
    apply(slots[s], x, y + width);
    width += slots[s].n;
  }
}

int64_t slots_width(const Slots& slots, int64_t first, int64_t count) {
  int64_t width = 0;
  for (int64_t s = first; s < first + count; ++s) width += slots[s].n;
  return width;
}

// out = x / sqrt(mean(x^2) + eps) * weight, for `size` values (out may be x).
void rms_norm(const Norm& norm, const float* x, float* out) {
  const float scale = 1.0f / std::sqrt(dot(x, x, norm.size) / (float)norm.size + norm.eps);
  for (int64_t i = 0; i < norm.size; ++i) out[i] = x[i] * scale * norm.weight[i];
}

float activation(int64_t kind, float g) {
  if (kind == GELU_TANH) {
    const float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
    return 0.5f * g * (1.0f + std::tanh(inner));
  }
  if (kind == GELU) return 0.5f * g * (1.0f + std::erf(g * 0.7071067811865476f));
  return g / (1.0f + std::exp(-g));
}

#if defined(__AVX512F__)
// act(g) for 16 gate values: silu g / (1 + e^-g), and GELU's tanh form as the same sigmoid,
// 0.5 g (1 + tanh(u)) = g / (1 + e^(-2u)) (within a few float32 roundings of torch's formulas).
inline __m512 activation16(int64_t kind, __m512 g) {
  __m512 z = g;
  if (kind == GELU_TANH) {
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
    z = _mm512_mul_ps(_mm512_set1_ps(2.0f * 0.7978845608028654f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, g));
  }
  const __m512 denominator = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), z)));
  return _mm512_div_ps(g, denominator);
}
#endif

// gate[i] = act(gate[i]) * up[i] for `count` values (the scalar `activation` where no vector form is built).
void activate(int64_t kind, float* __restrict gate, const float* __restrict up, int64_t count) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if (kind != GELU)
    for (; i + 16 <= count; i += 16)
      _mm512_storeu_ps(gate + i, _mm512_mul_ps(activation16(kind, _mm512_loadu_ps(gate + i)), _mm512_loadu_ps(up + i)));
#endif
  for (; i < count; ++i) gate[i] = activation(kind, gate[i]) * up[i];
}

at::Tensor decode_layers(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::TensorList tensors,
                         at::IntArrayRef ints, at::ArrayRef<double> floats, at::TensorList caches, int64_t position,
                         int64_t heads, int64_t kv_heads, int64_t act) {
  const int64_t layers = (int64_t)caches.size(), d = x.numel();
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "decode_layers: x must be one float32 row");
  TORCH_CHECK((int64_t)tensors.size() == layers * LAYER_TENSORS && (int64_t)ints.size() == layers * LAYER_INTS &&
              (int64_t)floats.size() == layers * LAYER_FLOATS, "decode_layers: the layers' lists do not match the caches");
  TORCH_CHECK(layers > 0 && heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "decode_layers: bad head counts");
  const int64_t head_dim = caches[0].size(3), capacity = caches[0].size(2), half = head_dim / 2;
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == head_dim && cos.scalar_type() == at::kFloat &&
              sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(),
              "decode_layers: cos and sin must be (tables, head_dim) float32");
  TORCH_CHECK(position >= 0 && position < capacity, "decode_layers: position beyond the cache");
  const int64_t group = heads / kv_heads, q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  at::Tensor outputs = at::empty({layers, d}, x.options());
  std::vector<float> residual(x.data_ptr<float>(), x.data_ptr<float>() + d), h(d), out(d);
  std::vector<float> qkv(q_width + 2 * kv_width), attended(q_width), rotated(head_dim), inner, scores;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const at::Tensor* t = tensors.data() + layer * LAYER_TENSORS;
    const int64_t* in = ints.data() + layer * LAYER_INTS;
    const double* fl = floats.data() + layer * LAYER_FLOATS;
    Norm norms[NORMS];
    for (int64_t i = 0; i < NORMS; ++i) norms[i] = norm_of(t[i], fl[i]);
    Slots slots;
    for (int64_t s = 0; s < LINEAR_SLOTS; ++s) slots[s] = linear_of(t + NORMS + 4 * s, in[2 * s], in[2 * s + 1]);
    const int64_t window = in[2 * LINEAR_SLOTS], table = in[2 * LINEAR_SLOTS + 1];
    const float softcap = (float)fl[NORMS], scaling = (float)fl[NORMS + 1];
    const at::Tensor& cache = caches[layer];  // (2, kv_heads, capacity, head_dim)
    TORCH_CHECK(cache.scalar_type() == at::kFloat && cache.is_contiguous() && cache.size(0) == 2 &&
                cache.size(1) == kv_heads && cache.size(2) == capacity && cache.size(3) == head_dim,
                "decode_layers: every cache must be (2, kv_heads, capacity, head_dim) float32");
    TORCH_CHECK(table >= 0 && table < cos.size(0), "decode_layers: no such rotary table");
    TORCH_CHECK(slots_width(slots, QKV, 3) == q_width + 2 * kv_width && slots[O].n == d && slots[DOWN].n == d &&
                slots[QKV].k == d && slots[O].k == q_width && norms[INPUT_NORM].size == d,
                "decode_layers: weight shapes do not match the model's");
    const int64_t inner_width = slots_width(slots, GATE_UP, 2) / 2;
    TORCH_CHECK(slots[DOWN].k == inner_width, "decode_layers: the MLP's shapes do not match");
    // attention: norm, q|k|v, q/k norms, rotary, this token's keys and values into the cache
    rms_norm(norms[INPUT_NORM], residual.data(), h.data());
    apply_slots(slots, QKV, 3, h.data(), qkv.data());
    const float* cs = cos.data_ptr<float>() + table * head_dim;
    const float* sn = sin.data_ptr<float>() + table * head_dim;
    for (int64_t head = 0; head < heads + kv_heads; ++head) {
      float* v = qkv.data() + head * head_dim;
      const Norm& norm = norms[head < heads ? Q_NORM : K_NORM];
      if (norm.weight != nullptr) rms_norm(norm, v, v);
      for (int64_t i = 0; i < head_dim; ++i) rotated[i] = i < half ? -v[i + half] : v[i - half];
      for (int64_t i = 0; i < head_dim; ++i) v[i] = v[i] * cs[i] + rotated[i] * sn[i];
    }
    float* keys_all = cache.data_ptr<float>();
    float* values_all = keys_all + kv_heads * capacity * head_dim;
    for (int64_t g = 0; g < kv_heads; ++g) {
      std::memcpy(keys_all + (g * capacity + position) * head_dim, qkv.data() + q_width + g * head_dim, head_dim * sizeof(float));
      std::memcpy(values_all + (g * capacity + position) * head_dim, qkv.data() + q_width + kv_width + g * head_dim,
                  head_dim * sizeof(float));
    }
    // each head attends to positions first..position: softmax(scaling * q.k, soft-capped) . v
    const int64_t first = window > 0 ? std::max<int64_t>(0, position - window + 1) : 0, length = position + 1 - first;
    scores.resize(heads * length);
    chatapp_rows::parallel_rows(0, heads, length >= kShareAttentionFrom ? 1 : heads, [&](int64_t begin, int64_t end) {
      for (int64_t head = begin; head < end; ++head) {
        const int64_t g = head / group;
        const float* q = qkv.data() + head * head_dim;
        const float* keys = keys_all + (g * capacity + first) * head_dim;
        const float* values = values_all + (g * capacity + first) * head_dim;
        attend(q, keys, values, length, head_dim, scaling, softcap, scores.data() + head * length,
               attended.data() + head * head_dim);
      }
    });
    apply(slots[O], attended.data(), out.data());
    // the residual stream, then the MLP: down(act(gate) * up)
    const bool sandwich = norms[PRE_MLP_NORM].weight != nullptr;
    if (sandwich) {
      rms_norm(norms[POST_ATTENTION_NORM], out.data(), out.data());
      for (int64_t i = 0; i < d; ++i) residual[i] += out[i];
      rms_norm(norms[PRE_MLP_NORM], residual.data(), h.data());
    } else {
      for (int64_t i = 0; i < d; ++i) residual[i] += out[i];
      rms_norm(norms[POST_ATTENTION_NORM], residual.data(), h.data());
    }
    inner.resize(2 * inner_width);
    apply_slots(slots, GATE_UP, 2, h.data(), inner.data());
    // in groups of 16 values, the vector form's width: which values take the scalar tail (the
    // last group's) does not depend on how many threads share them
    chatapp_rows::parallel_rows(0, (inner_width + 15) / 16, 16, [&](int64_t begin, int64_t end) {
      const int64_t first = 16 * begin, last = std::min(inner_width, 16 * end);
      activate(act, inner.data() + first, inner.data() + inner_width + first, last - first);
    });
    apply(slots[DOWN], inner.data(), out.data());
    if (norms[POST_MLP_NORM].weight != nullptr) rms_norm(norms[POST_MLP_NORM], out.data(), out.data());
    for (int64_t i = 0; i < d; ++i) residual[i] += out[i];
    std::memcpy(outputs.data_ptr<float>() + layer * d, residual.data(), d * sizeof(float));
  }
  return outputs;
}

// One decode step with its token chosen, in one call: the token's row of the embedding (the
// file's blocks, times `embedding_scale` where it is not 0), decode_layers, the model's final
// norm (`final_norm`: its weight twice, computed as chatapp.runtime.layer_loop.rms_norm does),
// the LM head (`head`: the file's blocks and a bias or an empty tensor, as the block kernel's
// block_linear computes one row, the bias added; no tensors: the step ends with the context
// vector, its first three results empty, for the int4 kernel's choose_from_head), the final soft-cap (Gemma 2's)
// where `softcap` is not 0, then choose_token with these settings. The same
// operations in the same order as the Python step (LayeredDecoder.decode_one, then
// chatapp.lm_head.choose_token on the block kernel), so the same numbers. Returns
// choose_token's three tensors and the context vector (d,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_step(
    int64_t token, at::TensorList embedding, at::IntArrayRef embedding_format, double embedding_scale,
    const at::Tensor& cos, const at::Tensor& sin, at::TensorList tensors, at::IntArrayRef ints,
    at::ArrayRef<double> floats, at::TensorList caches, int64_t position, int64_t heads, int64_t kv_heads, int64_t act,
    const at::Tensor& final_norm, double final_eps, at::TensorList head, at::IntArrayRef head_format, double softcap,
    double temperature, int64_t k, double top_p, double min_p, double penalty, const at::Tensor& previous_ids,
    std::optional<at::Generator> generator, int64_t top_n) {
  TORCH_CHECK(embedding.size() == 3 && embedding_format.size() == 2 && (head.size() == 4 || head.empty()) &&
              head_format.size() == 2, "decode_step: the embedding or the head is incomplete");
  const int64_t bits = embedding_format[0], block = embedding_format[1];
  const Layout rows = layout_of(embedding[0], embedding[1], embedding[2], block, bits);
  TORCH_CHECK(token >= 0 && token < embedding[0].size(0), "decode_step: token ", token, " out of range");
  at::Tensor x = at::empty({rows.k}, final_norm.options().dtype(at::kFloat));
  float* xp = x.data_ptr<float>();
  RowScales scales(rows);
  dequantized_row(rows, bits, block, scales, token, xp);
  if (embedding_scale != 0) {
    const float factor = (float)embedding_scale;
    for (int64_t i = 0; i < rows.k; ++i) xp[i] *= factor;
  }
  const at::Tensor last = decode_layers(x, cos, sin, tensors, ints, floats, caches, position, heads, kv_heads, act)[-1];
  const int64_t d = last.numel();
  const at::Tensor hidden = at::layer_norm(at::cat({last, -last}, -1), {2 * d}, final_norm, {}, final_eps).narrow(-1, 0, d).contiguous();
  if (head.empty()) {  // the context vector only: another kernel's head chooses
    const at::Tensor none = at::empty({0}, hidden.options());
    return {none, none, none, hidden};
  }
  const Linear lm_head = linear_of(head.data(), head_format[0], head_format[1]);  // codes, scale, low, bias
  at::Tensor logits = at::empty({lm_head.n}, hidden.options());
  apply(lm_head, hidden.data_ptr<float>(), logits.data_ptr<float>());
  if (softcap != 0) logits = at::tanh(logits / softcap) * softcap;
  const auto [numbers, kept, kept_probs] =
      choose_token(logits, temperature, k, top_p, min_p, penalty, previous_ids, generator, top_n);
  return {numbers, kept, kept_probs, hidden};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(BLOCKS_NAMESPACE, lib) {
  lib.def("decode_layers(Tensor x, Tensor cos, Tensor sin, Tensor[] tensors, int[] ints, float[] floats, "
          "Tensor(a!)[] caches, int position, int heads, int kv_heads, int act) -> Tensor",
          &decode_layers);
  lib.def("decode_step(int token, Tensor[] embedding, int[] embedding_format, float embedding_scale, Tensor cos, "
          "Tensor sin, Tensor[] tensors, int[] ints, float[] floats, Tensor(a!)[] caches, int position, int heads, "
          "int kv_heads, int act, Tensor final_norm, float final_eps, Tensor[] head, int[] head_format, float softcap, "
          "float temperature, int k, float top_p, float min_p, float penalty, Tensor previous_ids, Generator? generator, "
          "int top_n) -> (Tensor, Tensor, Tensor, Tensor)",
          &decode_step);
}

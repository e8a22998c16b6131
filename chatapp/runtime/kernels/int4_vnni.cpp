// chatapp::int4_linear: y = x @ W^T for W in 4-bit blocks of 32 along K
// (w = scale * (q - 8) + zero, scale and zero in bfloat16, as torch's int4 kernel has them),
// with x rounded to int16 per block of 32 and the products summed by AVX512-VNNI integer dot
// products; and chatapp::decode_layers, a whole decode step of a Llama-family model's layers in
// one call (a prefill's products from 8 tokens run on AMX-INT8 tiles where the CPU has them:
// amx_int4.h). Built at run time by chatapp.int4_kernel, which also defines the ops' schemas and
// lays out the weights (see there for the layouts).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_int4.h"
#include "attention.h"
#include "lm_head_steps.h"
#include "vector_exp.h"

namespace {

constexpr int64_t kGroup = 32;  // weights per block

// One row of x (K floats) as int16 codes per block of 32 (scale = max |x| / 32767: about 15
// significant bits, finer than bfloat16's 8), in the order the weight bytes come in: for each
// pair of blocks A, B: A[0..16) B[0..16), then A[16..32) B[16..32). Also each block's scale and
// the exact sum of its values.
void quantize_row(const float* x, int64_t k, int16_t* codes, float* scales, float* sums) {
  const int64_t blocks = k / kGroup;
  for (int64_t block = 0; block < blocks; ++block) {
    const float* values = x + block * kGroup;
    const __m512 lo = _mm512_loadu_ps(values), hi = _mm512_loadu_ps(values + 16);
    const float largest = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    scales[block] = largest / 32767.0f;
    sums[block] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
    const __m512 inverse = _mm512_set1_ps(largest > 0.0f ? 32767.0f / largest : 0.0f);
    int16_t* out = codes + (block / 2) * 64 + (block % 2) * 16;
    _mm256_storeu_si256((__m256i*)out, _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inverse))));
    _mm256_storeu_si256((__m256i*)(out + 32), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inverse))));
  }
}

inline __m128 bf16x4_to_float(__m128i v) {  // the low four bfloat16 of v
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(v), 16));
}

inline __m512 bf16x16_to_float(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// The integer dot products of one pair of blocks: 16 int32 lanes, 0..7 block A's, 8..15 B's.
inline __m512i pair_dots(const uint8_t* w, __m512i xlo, __m512i xhi) {
  const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)w));  // A's 16 bytes, B's 16
  const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi16(0x0F));
  const __m512i hi = _mm512_srli_epi16(v, 4);
  return _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
}

// The offsets of one row as 16 lanes to add before the reduction: sum of zero * xsum - 8 * sum of scale * xsum.
inline __m512 row_offsets(const uint16_t* wscales, const uint16_t* wzeros, const float* xsums, int64_t blocks) {
  __m512 zsum = _mm512_setzero_ps(), ssum = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= blocks; g += 16) {
    const __m512 xs = _mm512_loadu_ps(xsums + g);
    zsum = _mm512_fmadd_ps(bf16x16_to_float(_mm256_loadu_si256((const __m256i*)(wzeros + g))), xs, zsum);
    ssum = _mm512_fmadd_ps(bf16x16_to_float(_mm256_loadu_si256((const __m256i*)(wscales + g))), xs, ssum);
  }
  if (g < blocks) {
    const __mmask16 mask = (__mmask16)((1u << (blocks - g)) - 1);
    const __m512 xs = _mm512_maskz_loadu_ps(mask, xsums + g);
    zsum = _mm512_fmadd_ps(bf16x16_to_float(_mm256_maskz_loadu_epi16(mask, wzeros + g)), xs, zsum);
    ssum = _mm512_fmadd_ps(bf16x16_to_float(_mm256_maskz_loadu_epi16(mask, wscales + g)), xs, ssum);
  }
  return _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), ssum, zsum);
}

// The sums of the 16 lanes of each of four vectors, as four floats.
inline __m128 sum_lanes4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
  const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
  const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
  const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
  return _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
}

// Four consecutive outputs (rows `row_bytes` and `blocks` scales apart), each the sum over blocks
// of scale * xscale * dot(q, xq) + (zero - 8 scale) * xsum; the four share the loads of x and
// the final reduction, and their independent sums keep the CPU's pipelines full.
inline __m128 dot_rows4(const uint8_t* w, int64_t row_bytes, const uint16_t* wscales, const uint16_t* wzeros,
                        const int16_t* xq, const float* xscales, const float* xsums, int64_t blocks) {
  const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i second = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  __m512 acc[4];
  for (int r = 0; r < 4; ++r) acc[r] = row_offsets(wscales + r * blocks, wzeros + r * blocks, xsums, blocks);
  int64_t b = 0;
  for (; b + 4 <= blocks; b += 4) {
    const __m128 x4 = _mm_loadu_ps(xscales + b);
    const __m512i xlo0 = _mm512_loadu_si512(xq + kGroup * b), xhi0 = _mm512_loadu_si512(xq + kGroup * b + 32);
    const __m512i xlo1 = _mm512_loadu_si512(xq + kGroup * b + 64), xhi1 = _mm512_loadu_si512(xq + kGroup * b + 96);
    for (int r = 0; r < 4; ++r) {
      const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(bf16x4_to_float(_mm_loadl_epi64((const __m128i*)(wscales + r * blocks + b))), x4));
      const uint8_t* row = w + r * row_bytes + 16 * b;
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pair_dots(row, xlo0, xhi0)), _mm512_permutexvar_ps(first, s), acc[r]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pair_dots(row + 32, xlo1, xhi1)), _mm512_permutexvar_ps(second, s), acc[r]);
    }
  }
  if (b < blocks) {  // a final pair (masked loads: nothing past a row is read)
    const __m128 x2 = _mm_maskz_loadu_ps(0x3, xscales + b);
    const __m512i xlo = _mm512_loadu_si512(xq + kGroup * b), xhi = _mm512_loadu_si512(xq + kGroup * b + 32);
    for (int r = 0; r < 4; ++r) {
      const __m128 ws = bf16x4_to_float(_mm_maskz_loadu_epi16(0x3, wscales + r * blocks + b));
      const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(ws, x2));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pair_dots(w + r * row_bytes + 16 * b, xlo, xhi)), _mm512_permutexvar_ps(first, s), acc[r]);
    }
  }
  return sum_lanes4(acc[0], acc[1], acc[2], acc[3]);
}

struct Int4Weight {
  const uint8_t* codes;
  const uint16_t* scales;
  const uint16_t* zeros;
  int64_t n, k;
};

Int4Weight int4_weight(const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& zeros, int64_t k) {
  const int64_t n = weight.size(0), blocks = k / kGroup;
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.dim() == 2 && weight.is_contiguous() && weight.size(1) == k / 2,
              "int4 weight must be contiguous uint8 (N, K/2)");
  TORCH_CHECK(k % (2 * kGroup) == 0 && n % 4 == 0, "int4 weight: K must be a multiple of 64, N of 4");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 && scales.is_contiguous() &&
              zeros.is_contiguous() && scales.size(0) == n && scales.size(1) == blocks && zeros.size(0) == n &&
              zeros.size(1) == blocks,
              "int4 scales and zeros must be contiguous bfloat16 (N, K/32)");
  return {weight.data_ptr<uint8_t>(), (const uint16_t*)scales.data_ptr<at::BFloat16>(),
          (const uint16_t*)zeros.data_ptr<at::BFloat16>(), n, k};
}

// Rows ahead of the four in use whose codes, scales and zeros are asked for (prefetcht0): the
// hardware prefetcher alone keeps too few of a product's streams in flight when the weights
// come from L3 or memory, as a decode step's do.
constexpr int64_t kPrefetchRows = 32;

// Ask for rows [row, row + 4) of w ahead of their use, where row < end.
inline void prefetch_rows(const Int4Weight& w, int64_t row, int64_t end) {
  if (row >= end) return;
  const int64_t blocks = w.k / kGroup;
  const char* codes = reinterpret_cast<const char*>(w.codes + row * (w.k / 2));
  for (int64_t at = 0; at < 4 * (w.k / 2); at += 64) prefetch_line(codes + at);
  const char* scales = reinterpret_cast<const char*>(w.scales + row * blocks);
  const char* zeros = reinterpret_cast<const char*>(w.zeros + row * blocks);
  for (int64_t at = 0; at < 4 * blocks * 2; at += 64) {
    prefetch_line(scales + at);
    prefetch_line(zeros + at);
  }
}

// out[r, j] (+)= x[r] . w[j] for rows r of x (M, K), on all threads.
void int4_matmul(const float* x, int64_t m, const Int4Weight& w, float* out, bool accumulate) {
  const int64_t k = w.k, blocks = k / kGroup;
  std::vector<int16_t> xq(m * k);
  std::vector<float> xscales(m * blocks), xsums(m * blocks);
  for (int64_t r = 0; r < m; ++r) quantize_row(x + r * k, k, xq.data() + r * k, xscales.data() + r * blocks, xsums.data() + r * blocks);
  chatapp_rows::parallel_rows(0, w.n / 4, 8, [&](int64_t begin, int64_t end) {  // in groups of four rows
    for (int64_t ahead = 0; ahead < kPrefetchRows; ahead += 4) prefetch_rows(w, 4 * begin + ahead, 4 * end);
    for (int64_t r = 0; r < m; ++r) {
      const int16_t* xr = xq.data() + r * k;
      float* o = out + r * w.n;
      for (int64_t j = 4 * begin; j < 4 * end; j += 4) {
        if (r == 0) prefetch_rows(w, j + kPrefetchRows, 4 * end);
        __m128 y = dot_rows4(w.codes + j * (k / 2), k / 2, w.scales + j * blocks, w.zeros + j * blocks, xr,
                             xscales.data() + r * blocks, xsums.data() + r * blocks, blocks);
        if (accumulate) y = _mm_add_ps(y, _mm_loadu_ps(o + j));
        _mm_storeu_ps(o + j, y);
      }
    }
  });
}

// w as float32 (N, K): scale * (q - 8) + zero per block, exactly as int4_linear reads it.
at::Tensor dequantized(const Int4Weight& w) {
  const int64_t blocks = w.k / kGroup;
  at::Tensor out = at::empty({w.n, w.k}, at::kFloat);
  float* o = out.data_ptr<float>();
  chatapp_rows::parallel_rows(0, w.n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const uint8_t* row = w.codes + j * (w.k / 2);
      for (int64_t b = 0; b < blocks; ++b) {
        uint32_t sbits = (uint32_t)w.scales[j * blocks + b] << 16, zbits = (uint32_t)w.zeros[j * blocks + b] << 16;
        float scale, zero;
        std::memcpy(&scale, &sbits, 4);
        std::memcpy(&zero, &zbits, 4);
        // byte i: code i in its low nibble, code 16 + i in its high one
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + b * 16)));
        const __m512 s = _mm512_set1_ps(scale), offset = _mm512_set1_ps(zero - 8.0f * scale);
        float* values = o + j * w.k + b * kGroup;
        _mm512_storeu_ps(values, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15))), s, offset));
        _mm512_storeu_ps(values + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), s, offset));
      }
    }
  });
  return out;
}

// Tokens from which a prefill's products off the tiles run as float32 matrix products over the
// dequantized weight (one dequantization for all of them, then torch's blocked GEMM) rather than
// int4_matmul.
constexpr int64_t kMatrixProductFrom = 20;

// Tokens from which a prefill's products run on AMX-INT8 tiles (amx_int4.h) where the CPU and the
// OS allow: laying a weight out for the tiles costs about as much as int4_matmul's 6 tokens
// (measured on the default model's four products: 8 tokens 0.36 against 0.46 ms, 4 tokens 0.32
// against 0.24).
constexpr int64_t kTilesFrom = 8;

// Whether a prefill's products from kTilesFrom tokens run on the tiles, rather than as
// int4_matmul's or (from kMatrixProductFrom) float32 products of the dequantized weight.
std::atomic<bool> prefill_tiles_wanted{true};

bool tiles_for(const Int4Weight& w) {
  return prefill_tiles_wanted.load(std::memory_order_relaxed) && w.n % amx::kTileRows == 0 && amx::ready();
}

// out (M, N) (+)= x (M, K) @ w^T: int4_matmul, or for many rows the tiles' product or the
// dequantized weight's.
void int4_product(const float* x, int64_t m, const Int4Weight& w, float* out, bool accumulate) {
  if (m >= kTilesFrom && tiles_for(w)) return amx::int4_product(x, m, w.codes, w.scales, w.zeros, w.n, w.k, out, accumulate);
  if (m < kMatrixProductFrom) return int4_matmul(x, m, w, out, accumulate);
  const at::Tensor xs = at::from_blob(const_cast<float*>(x), {m, w.k}, at::kFloat);
  at::Tensor result = at::from_blob(out, {m, w.n}, at::kFloat);
  const at::Tensor weight = dequantized(w);
  if (accumulate) result.addmm_(xs, weight.t());
  else at::mm_out(result, xs, weight.t());
}

// int4_linear as a prefill of x's rows computes it (int4_product).
at::Tensor int4_prefill_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                               const at::Tensor& zeros) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "int4_prefill_linear: x must be float32 (M, K)");
  const Int4Weight w = int4_weight(weight, scales, zeros, x.size(1));
  const at::Tensor xf = x.contiguous();
  at::Tensor out = at::empty({x.size(0), w.n}, x.options());
  int4_product(xf.data_ptr<float>(), x.size(0), w, out.data_ptr<float>(), false);
  return out;
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& zeros) {
  TORCH_CHECK(x.dim() == 2, "int4_linear: x must be (M, K)");
  const Int4Weight w = int4_weight(weight, scales, zeros, x.size(1));
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({x.size(0), w.n}, x.options().dtype(at::kFloat));
  int4_matmul(xf.data_ptr<float>(), x.size(0), w, out.data_ptr<float>(), false);
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

// e^x in place (softmax after subtracting the largest score, silu of any sign via e^-|z|):
// `exp16`, shared with the block kernel's decode step.
void exp_inplace(float* v, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) _mm512_storeu_ps(v + i, exp16(_mm512_loadu_ps(v + i)));
  if (i < count) {
    const __mmask16 mask = (__mmask16)((1u << (count - i)) - 1);
    _mm512_mask_storeu_ps(v + i, mask, exp16(_mm512_maskz_loadu_ps(mask, v + i)));
  }
}

float dot_f32(const float* a, const float* b, int64_t count) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < count) {
    const __mmask16 mask = (__mmask16)((1u << (count - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// out = x / sqrt(mean(x^2) + eps) * weight
void rms_norm(const float* x, const float* weight, int64_t d, float eps, float* out) {
  const float scale = 1.0f / std::sqrt(dot_f32(x, x, d) / d + eps);
  for (int64_t i = 0; i < d; ++i) out[i] = x[i] * scale * weight[i];
}

// out row t = x row t / sqrt(mean(x row t ^2) + eps) * weight, for `rows` rows of d
void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t d, float eps, float* out) {
  for (int64_t t = 0; t < rows; ++t) rms_norm(x + t * d, weight, d, eps, out + t * d);
}

// Every layer of a Llama-family model whose linear layers are all int4 in this kernel's layout
// (q|k|v fused, o, gate|up fused, down: three tensors each in `weights`), for T tokens at
// positions `position`..`position + T - 1`: the same mathematics as
// chatapp.layer_loop.run_layers, with no dispatch between the operations. One token is a decode
// step; several are a prefill, each product reading a weight's rows once for all T tokens
// (int4_matmul keeps four rows in L1 while it runs every token through them). x (T, d) float32
// is the embedded tokens, updated in place into the final residuals; their keys and values are
// written into `cache` (layers, 2, kv_heads, capacity, head_dim) float32, and each token attends
// to the cache up to its own position (causal); cos and sin (T, head_dim) are the rotary angles
// of the T positions; norms holds each layer's two RMS norm weights (at least d values each).
void decode_layers(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::TensorList norms,
                   at::TensorList weights, const at::Tensor& cache, int64_t position, int64_t heads, int64_t kv_heads,
                   double eps) {
  const int64_t layers = cache.size(0), head_dim = cache.size(4), capacity = cache.size(3), d = x.size(-1);
  const int64_t count = d > 0 ? x.numel() / d : 0;
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && count >= 1 && x.numel() == count * d,
              "decode_layers: x must be contiguous float32 rows");
  TORCH_CHECK(cache.scalar_type() == at::kFloat && cache.is_contiguous() && cache.size(1) == 2 && cache.size(2) == kv_heads,
              "decode_layers: cache must be contiguous float32 (layers, 2, kv_heads, capacity, head_dim)");
  TORCH_CHECK(position >= 0 && position + count <= capacity, "decode_layers: positions beyond the cache");
  TORCH_CHECK((int64_t)weights.size() == 12 * layers && (int64_t)norms.size() == 2 * layers, "decode_layers: weights or norms missing");
  TORCH_CHECK(heads % kv_heads == 0 && head_dim % 2 == 0 && cos.numel() == count * head_dim && sin.numel() == count * head_dim,
              "decode_layers: bad shapes");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(),
              "decode_layers: cos and sin must be contiguous float32");
  const float* cs = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  float* residual = x.data_ptr<float>();
  float* kv = cache.data_ptr<float>();
  const int64_t qkv_width = (heads + 2 * kv_heads) * head_dim, group = heads / kv_heads, half = head_dim / 2;
  const int64_t longest = position + count;
  const float attention_scale = 1.0f / std::sqrt((float)head_dim);
  std::vector<float> h(count * d), qkv(count * qkv_width), attended(count * heads * head_dim), rotated(head_dim);
  std::vector<float> scores(count == 1 ? heads * longest : 0);  // a decode step's (a prefill's attention is torch's)
  std::vector<float> hidden, gate;  // gate|up products, and e^-|gate|
  for (int64_t layer = 0; layer < layers; ++layer) {
    const at::Tensor* w = weights.data() + 12 * layer;
    const Int4Weight wqkv = int4_weight(w[0], w[1], w[2], d);
    const Int4Weight wo = int4_weight(w[3], w[4], w[5], heads * head_dim);
    const Int4Weight wgu = int4_weight(w[6], w[7], w[8], d);
    const Int4Weight wdown = int4_weight(w[9], w[10], w[11], wgu.n / 2);
    TORCH_CHECK(wqkv.n == qkv_width && wo.n == d && wdown.n == d && norms[2 * layer].numel() >= d, "decode_layers: weight shapes");
    // attention
    rms_norm_rows(residual, norms[2 * layer].data_ptr<float>(), count, d, (float)eps, h.data());
    int4_product(h.data(), count, wqkv, qkv.data(), false);
    float* layer_cache = kv + layer * 2 * kv_heads * capacity * head_dim;
    for (int64_t t = 0; t < count; ++t) {
      const float* c = cs + t * head_dim;
      const float* s = sn + t * head_dim;
      float* row = qkv.data() + t * qkv_width;
      for (int64_t head = 0; head < heads + kv_heads; ++head) {  // rotary embeddings on q and k
        float* v = row + head * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) rotated[i] = i < half ? -v[i + half] : v[i - half];
        for (int64_t i = 0; i < head_dim; ++i) v[i] = v[i] * c[i] + rotated[i] * s[i];
      }
      for (int64_t g = 0; g < kv_heads; ++g) {
        std::memcpy(layer_cache + (g * capacity + position + t) * head_dim, row + (heads + g) * head_dim, head_dim * sizeof(float));
        std::memcpy(layer_cache + ((kv_heads + g) * capacity + position + t) * head_dim,
                    row + (heads + kv_heads + g) * head_dim, head_dim * sizeof(float));
      }
    }
    if (count == 1) {
      chatapp_rows::parallel_rows(0, heads, longest >= kShareAttentionFrom ? 1 : heads, [&](int64_t begin, int64_t end) {
        for (int64_t head = begin; head < end; ++head) {
          const int64_t g = head / group;
          attend(qkv.data() + head * head_dim, layer_cache + g * capacity * head_dim,
                 layer_cache + (kv_heads + g) * capacity * head_dim, longest, head_dim, attention_scale, 0.f,
                 scores.data() + head * longest, attended.data() + head * head_dim);
        }
      });
    } else {  // a prefill: torch's fused attention, queries and keys in tiles (as run_layers calls it)
      const at::Tensor rows = at::from_blob(qkv.data(), {count, heads + 2 * kv_heads, head_dim}, x.options());
      const at::Tensor queries = rows.narrow(1, 0, heads).transpose(0, 1).unsqueeze(0);  // (1, H, T, hd)
      const at::Tensor layer_kv = cache.select(0, layer).narrow(2, 0, longest);  // (2, KVH, end, hd)
      std::optional<at::Tensor> mask;
      if (position > 0) {  // the new tokens see the whole cache and each other causally
        const at::Tensor token_positions = at::arange(position, longest, x.options().dtype(at::kLong)).unsqueeze(1);
        mask = at::arange(longest, x.options().dtype(at::kLong)).unsqueeze(0) <= token_positions;  // (T, end)
      }
      const at::Tensor out = at::scaled_dot_product_attention(queries, layer_kv.narrow(0, 0, 1), layer_kv.narrow(0, 1, 1), mask,
                                                              0.0, position == 0, std::nullopt, heads != kv_heads);
      at::from_blob(attended.data(), {count, heads, head_dim}, x.options()).copy_(out.select(0, 0).transpose(0, 1));
    }
    int4_product(attended.data(), count, wo, residual, true);
    // MLP
    rms_norm_rows(residual, norms[2 * layer + 1].data_ptr<float>(), count, d, (float)eps, h.data());
    const int64_t inner = wgu.n / 2;
    hidden.resize(count * wgu.n);
    int4_product(h.data(), count, wgu, hidden.data(), false);
    gate.resize(inner);  // silu(g) = g / (1 + e^-g)
    for (int64_t t = 0; t < count; ++t) {
      float* row = hidden.data() + t * wgu.n;
      float* product = hidden.data() + t * inner;  // rows packed to (T, inner) in place: row t's start is not past them
      for (int64_t i = 0; i < inner; ++i) gate[i] = -std::fabs(row[i]);
      exp_inplace(gate.data(), inner);  // e^-|g|
      for (int64_t i = 0; i < inner; ++i) {
        const float g = row[i], e = gate[i];
        const float sigmoid = g >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
        product[i] = g * sigmoid * row[inner + i];
      }
    }
    int4_product(hidden.data(), count, wdown, residual, true);
  }
#if defined(__GLIBC__)
  // A prefill's dequantized weights and activations (megabytes each, freed) would stay in the C
  // heap's free lists, resident for the rest of the session: give them back (well under 1 ms).
  if (count >= kMatrixProductFrom) malloc_trim(0);
#endif
}

// The LM head's choice of the next token from a context vector `hidden` (d,): the head's 4-bit
// pass (`head`: this kernel's layout, `vocab` rows kept), its `exact_top` best rows and the rows
// `always` recomputed from the blocks `exact` (exact_logits), the final soft-cap where `softcap`
// is not 0, then choose_token with these settings: the same operations in the same order as
// the Python step (the head's forward, chatapp.lm_head.output_logits, then
// chatapp.lm_head.choose_token on the block kernel). Returns choose_token's three tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> choose_from_head(
    const at::Tensor& hidden, at::TensorList head, int64_t vocab, int64_t exact_top, const at::Tensor& always,
    at::TensorList exact, at::IntArrayRef exact_format, double softcap, double temperature, int64_t k, double top_p,
    double min_p, double penalty, const at::Tensor& previous_ids, std::optional<at::Generator> generator, int64_t top_n) {
  TORCH_CHECK(head.size() == 3 && exact.size() == 3 && exact_format.size() == 2, "choose_from_head: the head or exact rows are incomplete");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.dim() == 1, "choose_from_head: hidden must be one float32 vector");
  const at::Tensor x = hidden.contiguous();
  at::Tensor logits = int4_linear(x.reshape({1, -1}), head[0], head[1], head[2]).select(0, 0).narrow(0, 0, vocab);
  exact_logits(logits, x, exact_top, always, exact[0], exact[1], exact[2], exact_format[0], exact_format[1]);
  if (softcap != 0) logits = at::tanh(logits / softcap) * softcap;
  return choose_token(logits, temperature, k, top_p, min_p, penalty, previous_ids, generator, top_n);
}

// One decode step of an int4 Llama-family model with its token chosen, in one call: the token's
// row of the embedding (the file's blocks: `embedding` codes, scale, minimum; `embedding_format`
// bits, block size), decode_layers, the model's final RMS norm (torch's), the LM head's 4-bit
// pass (`head`: this kernel's layout, `vocab` rows kept) and its `exact_top` best rows and the
// rows `always` recomputed from the blocks `exact` (exact_logits), then choose_token with these
// settings. The same operations in the same order as the Python step (LlamaDecoder.decode_one,
// then chatapp.lm_head.choose_token on the block kernel), so the same numbers. Returns
// choose_token's three tensors and the context vector (d,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_step(
    int64_t token, at::TensorList embedding, at::IntArrayRef embedding_format, const at::Tensor& cos, const at::Tensor& sin,
    at::TensorList norms, at::TensorList weights, const at::Tensor& cache, int64_t position, int64_t heads, int64_t kv_heads,
    double eps, const at::Tensor& final_norm, at::TensorList head, int64_t vocab, int64_t exact_top, const at::Tensor& always,
    at::TensorList exact, at::IntArrayRef exact_format, double temperature, int64_t k, double top_p, double min_p,
    double penalty, const at::Tensor& previous_ids, std::optional<at::Generator> generator, int64_t top_n) {
  TORCH_CHECK(embedding.size() == 3 && embedding_format.size() == 2 && head.size() == 3 && exact.size() == 3 &&
              exact_format.size() == 2, "decode_step: the embedding, head or exact rows are incomplete");
  const int64_t bits = embedding_format[0], block = embedding_format[1];
  const Layout rows = layout_of(embedding[0], embedding[1], embedding[2], block, bits);
  TORCH_CHECK(token >= 0 && token < embedding[0].size(0), "decode_step: token ", token, " out of range");
  at::Tensor x = at::empty({1, rows.k}, final_norm.options().dtype(at::kFloat));
  RowScales scales(rows);
  dequantized_row(rows, bits, block, scales, token, x.data_ptr<float>());
  decode_layers(x, cos, sin, norms, weights, cache, position, heads, kv_heads, eps);
  const at::Tensor hidden = at::rms_norm(x.select(0, 0), {rows.k}, final_norm, eps);
  const auto [numbers, kept, kept_probs] = choose_from_head(hidden, head, vocab, exact_top, always, exact, exact_format, 0.0,
                                                            temperature, k, top_p, min_p, penalty, previous_ids, generator, top_n);
  return {numbers, kept, kept_probs, hidden};
}

}  // namespace

void lend_threads(int64_t lent) { chatapp_rows::lend_threads(lent); }
int64_t row_threads() { return chatapp_rows::row_threads(); }
std::vector<int64_t> bind_threads(std::vector<int64_t> cpus) { return chatapp_rows::bind_threads(cpus); }
bool prefill_tiles(bool wanted) {
  prefill_tiles_wanted.store(wanted, std::memory_order_relaxed);
  return wanted && amx::ready();
}

TORCH_LIBRARY_FRAGMENT(chatapp, m) {  // no tensor to dispatch on: defined with their kernels here
  m.def("lend_threads(int lent) -> ()", &lend_threads);
  m.def("row_threads() -> int", &row_threads);
  m.def("bind_threads(int[] cpus) -> int[]", &bind_threads);
  m.def("prefill_tiles(bool wanted) -> bool", &prefill_tiles);
  m.def("int4_prefill_linear(Tensor x, Tensor weight, Tensor scales, Tensor zeros) -> Tensor", &int4_prefill_linear);
}

TORCH_LIBRARY_IMPL(chatapp, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("decode_layers", &decode_layers);
  m.impl("decode_step", &decode_step);
  m.impl("choose_from_head", &choose_from_head);
}

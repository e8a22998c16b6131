// chatapp's block kernel: a linear layer computed straight from GGUF's block quantization.
//
// The weight is held as `chatapp.runtime.block_weights.BlockWeights` lays it out: codes (4-bit,
// two a byte, or one signed byte each), per super-block float16 `d` and `dmin`, per block int8
// `sc` and `m`, and weight k of a block is `code[k] * (d * sc) + dmin * m`. Every product and
// sum is float32, so the outputs are those of a float32 matrix product with the exactly
// dequantized weights, but for the order in which the sums are rounded.
//
// Written as plain loops of fixed length that the compiler vectorizes for whatever it is told
// to target (`-mavx512f`, `-mavx2`, NEON, or none): one source, one build per instruction set,
// each registering its operators under its own namespace (BLOCKS_NAMESPACE), so a process can
// hold two builds side by side (the tests compare them).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef BLOCKS_NAMESPACE
#define BLOCKS_NAMESPACE chatapp_blocks
#endif

namespace {

constexpr int64_t NIBBLE_BLOCK = 32;  // weights per block of the 4-bit layout
constexpr int64_t ROW_GRAIN = 16;     // rows a thread takes at a time
constexpr int64_t PREFETCH_ROWS = 4;  // rows ahead whose bytes are asked for

struct Layout {
  const uint8_t* codes;
  const at::Half* d;
  const at::Half* dmin;
  const int8_t* sc;
  const int8_t* m;
  int64_t k;           // weights a row
  int64_t blocks;      // blocks a row
  int64_t per_super;   // blocks a super-block
  int64_t row_bytes;   // code bytes a row
};

// Block `b` of `row`'s weights, code * scale (the minimum is added apart), into `w`.
template <int BITS, int B>
inline void decode_block(const uint8_t* codes, float scale, float* __restrict w) {
  if constexpr (BITS == 4) {
    // byte j holds code j in its low nibble and code j + 16 in its high one
    for (int j = 0; j < 16; ++j) w[j] = float(codes[j] & 15) * scale;
    for (int j = 0; j < 16; ++j) w[16 + j] = float(codes[j] >> 4) * scale;
  } else {
    const int8_t* c = reinterpret_cast<const int8_t*>(codes);
    for (int j = 0; j < B; ++j) w[j] = float(c[j]) * scale;
  }
}

template <int BITS, int B>
constexpr int64_t block_bytes() { return BITS == 4 ? B / 2 : B; }

inline float half_to_float(at::Half h) {
#if defined(__F16C__)
  return _cvtsh_ss(h.x);
#else
  return float(h);
#endif
}

// codes . x over one block, with the codes as integers (the block's scale is applied after).
template <int BITS, int B>
inline float block_dot(const uint8_t* codes, const float* __restrict x);

#if defined(__AVX512F__)
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
template <int BITS, int B>
inline __m512 block_dot_vec(const uint8_t* codes, const float* __restrict x) {
  if constexpr (BITS == 4) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(15));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15));
    const __m512 acc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), _mm512_loadu_ps(x));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), _mm512_loadu_ps(x + 16), acc);
  } else {
    __m512 acc = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)))),
        _mm512_loadu_ps(x));
    if constexpr (B == 32)
      acc = _mm512_fmadd_ps(
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)))),
          _mm512_loadu_ps(x + 16), acc);
    return acc;
  }
}
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vfma_scalar(Vec v, float s, Vec acc) { return _mm512_fmadd_ps(v, _mm512_set1_ps(s), acc); }
#define HAVE_VEC 1
#elif defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline __m256 widen_u8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }
inline __m256 widen_i8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)); }
template <int BITS, int B>
inline __m256 block_dot_vec(const uint8_t* codes, const float* __restrict x) {
  if constexpr (BITS == 4) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(15));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15));
    __m256 acc = _mm256_mul_ps(widen_u8(low), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(widen_u8(_mm_srli_si128(low, 8)), _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(widen_u8(high), _mm256_loadu_ps(x + 16), acc);
    return _mm256_fmadd_ps(widen_u8(_mm_srli_si128(high, 8)), _mm256_loadu_ps(x + 24), acc);
  } else {
    const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    __m256 acc = _mm256_mul_ps(widen_i8(first), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(widen_i8(_mm_srli_si128(first, 8)), _mm256_loadu_ps(x + 8), acc);
    if constexpr (B == 32) {
      const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16));
      acc = _mm256_fmadd_ps(widen_i8(second), _mm256_loadu_ps(x + 16), acc);
      acc = _mm256_fmadd_ps(widen_i8(_mm_srli_si128(second, 8)), _mm256_loadu_ps(x + 24), acc);
    }
    return acc;
  }
}
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vfma_scalar(Vec v, float s, Vec acc) { return _mm256_fmadd_ps(v, _mm256_set1_ps(s), acc); }
#define HAVE_VEC 1
#endif

template <int BITS, int B>
inline float block_dot(const uint8_t* codes, const float* __restrict x) {
  float total = 0.f;
  if constexpr (BITS == 4) {
    for (int j = 0; j < 16; ++j) total += float(codes[j] & 15) * x[j] + float(codes[j] >> 4) * x[16 + j];
  } else {
    const int8_t* c = reinterpret_cast<const int8_t*>(codes);
    for (int j = 0; j < B; ++j) total += float(c[j]) * x[j];
  }
  return total;
}

// One output of one input row: sum over blocks of scale * (codes . x) + minimum * sum(x).
template <int BITS, int B>
float row_dot(const Layout& l, int64_t row, const float* __restrict x, const float* __restrict xsum) {
  const uint8_t* codes = l.codes + row * l.row_bytes;
  const int64_t supers = l.blocks / l.per_super;
  const at::Half* d = l.d + row * supers;
  const at::Half* dmin = l.dmin + row * supers;
  const int8_t* sc = l.sc + row * l.blocks;
  const int8_t* m = l.m + row * l.blocks;
  float low = 0.f;
#if defined(HAVE_VEC)
  Vec acc = vzero();
#else
  float total = 0.f;
#endif
  for (int64_t s = 0; s < supers; ++s) {
    const float ds = half_to_float(d[s]), dm = half_to_float(dmin[s]);
    for (int64_t b = s * l.per_super; b < (s + 1) * l.per_super; ++b) {
      const uint8_t* block = codes + b * block_bytes<BITS, B>();
#if defined(HAVE_VEC)
      acc = vfma_scalar(block_dot_vec<BITS, B>(block, x + b * B), ds * float(sc[b]), acc);
#else
      total += ds * float(sc[b]) * block_dot<BITS, B>(block, x + b * B);
#endif
      low += dm * float(m[b]) * xsum[b];
    }
  }
#if defined(HAVE_VEC)
  return hsum(acc) + low;
#else
  return total + low;
#endif
}

// The whole row's weights (with their minimums) into `w` (K floats).
template <int BITS, int B>
void decode_row(const Layout& l, int64_t row, float* __restrict w) {
  const uint8_t* codes = l.codes + row * l.row_bytes;
  const int64_t supers = l.blocks / l.per_super;
  const at::Half* d = l.d + row * supers;
  const at::Half* dmin = l.dmin + row * supers;
  const int8_t* sc = l.sc + row * l.blocks;
  const int8_t* m = l.m + row * l.blocks;
  for (int64_t s = 0; s < supers; ++s) {
    const float ds = half_to_float(d[s]), dm = half_to_float(dmin[s]);
    for (int64_t b = s * l.per_super; b < (s + 1) * l.per_super; ++b) {
      float* wb = w + b * B;
      decode_block<BITS, B>(codes + b * block_bytes<BITS, B>(), ds * float(sc[b]), wb);
      const float low = dm * float(m[b]);
      for (int j = 0; j < B; ++j) wb[j] += low;
    }
  }
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float lanes[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) lanes[j] += a[i + j] * b[i + j];
  float total = 0.f;
  for (; i < n; ++i) total += a[i] * b[i];
  for (int j = 0; j < 16; ++j) total += lanes[j];
  return total;
}

Layout layout_of(const at::Tensor& codes, const at::Tensor& d, const at::Tensor& dmin, const at::Tensor& sc,
                 const at::Tensor& m, int64_t k, int64_t per_super) {
  TORCH_CHECK(codes.is_contiguous() && d.is_contiguous() && dmin.is_contiguous() && sc.is_contiguous() &&
              m.is_contiguous(), "block weights must be contiguous");
  TORCH_CHECK(d.scalar_type() == at::kHalf && dmin.scalar_type() == at::kHalf, "d and dmin must be float16");
  TORCH_CHECK(sc.scalar_type() == at::kChar && m.scalar_type() == at::kChar, "sc and m must be int8");
  const int64_t n = codes.size(0);
  return Layout{static_cast<const uint8_t*>(codes.data_ptr()), d.data_ptr<at::Half>(), dmin.data_ptr<at::Half>(),
                sc.data_ptr<int8_t>(), m.data_ptr<int8_t>(), k, sc.size(1), per_super, codes.numel() / n};
}

// Ask for a later row's codes and scales ahead of time: the hardware prefetcher alone keeps
// too few of a row's five streams in flight (measured: the head of a 262,144-token vocabulary
// took 43 ms on one thread without, %s with).
inline void prefetch_row(const Layout& l, int64_t row) {
#if defined(__x86_64__)
  const char* codes = reinterpret_cast<const char*>(l.codes + row * l.row_bytes);
  for (int64_t at = 0; at < l.row_bytes; at += 64) _mm_prefetch(codes + at, _MM_HINT_T0);
  const int64_t supers = l.blocks / l.per_super;
  _mm_prefetch(reinterpret_cast<const char*>(l.d + row * supers), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(l.dmin + row * supers), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(l.sc + row * l.blocks), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(l.m + row * l.blocks), _MM_HINT_T0);
#endif
}

template <int BITS, int B>
void run_linear(const Layout& l, const float* x, const float* xsum, float* y, int64_t rows_x, int64_t n) {
  if (rows_x == 1) {
    at::parallel_for(0, n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        if (row + PREFETCH_ROWS < end) prefetch_row(l, row + PREFETCH_ROWS);
        y[row] = row_dot<BITS, B>(l, row, x, xsum);
      }
    });
    return;
  }
  at::parallel_for(0, n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
    std::vector<float> w(l.k);
    for (int64_t row = begin; row < end; ++row) {
      decode_row<BITS, B>(l, row, w.data());
      for (int64_t i = 0; i < rows_x; ++i) y[i * n + row] = dot(w.data(), x + i * l.k, l.k);
    }
  });
}

template <int BITS, int B>
void run_dequantize(const Layout& l, float* out, int64_t n) {
  at::parallel_for(0, n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) decode_row<BITS, B>(l, row, out + row * l.k);
  });
}

// Runs the statement with BITS and B set to the layout's bits and block size (the combinations GGUF's types use).
#define DISPATCH(bits, block, ...)                                                        \
  if (bits == 4 && block == 32) { constexpr int BITS = 4, B = 32; __VA_ARGS__; }        \
  else if (bits == 8 && block == 32) { constexpr int BITS = 8, B = 32; __VA_ARGS__; }   \
  else if (bits == 8 && block == 16) { constexpr int BITS = 8, B = 16; __VA_ARGS__; }   \
  else TORCH_CHECK(false, "no block kernel for ", bits, "-bit codes in blocks of ", block);

at::Tensor block_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& d, const at::Tensor& dmin,
                        const at::Tensor& sc, const at::Tensor& m, int64_t bits, int64_t block, int64_t per_super) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  const at::Tensor xc = x.contiguous();
  const int64_t rows_x = xc.size(0), k = xc.size(1), n = codes.size(0);
  TORCH_CHECK(sc.size(1) * block == k, "x has ", k, " columns, the weight ", sc.size(1) * block);
  const Layout l = layout_of(codes, d, dmin, sc, m, k, per_super);
  const at::Tensor xsum = xc.view({rows_x, k / block, block}).sum(-1);  // (M, K / block)
  at::Tensor y = at::empty({rows_x, n}, xc.options());
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  DISPATCH(bits, block, run_linear<BITS, B>(l, xp, xsum.data_ptr<float>(), yp, rows_x, n))
  return y;
}

at::Tensor block_dequantize(const at::Tensor& codes, const at::Tensor& d, const at::Tensor& dmin,
                            const at::Tensor& sc, const at::Tensor& m, int64_t bits, int64_t block,
                            int64_t per_super) {
  const int64_t n = codes.size(0), k = sc.size(1) * block;
  const Layout l = layout_of(codes, d, dmin, sc, m, k, per_super);
  at::Tensor out = at::empty({n, k}, at::TensorOptions().dtype(at::kFloat));
  DISPATCH(bits, block, run_dequantize<BITS, B>(l, out.data_ptr<float>(), n))
  return out;
}

at::Tensor block_rows(const at::Tensor& ids, const at::Tensor& codes, const at::Tensor& d, const at::Tensor& dmin,
                      const at::Tensor& sc, const at::Tensor& m, int64_t bits, int64_t block, int64_t per_super) {
  // The rows `ids` of the dequantized weight (an embedding lookup), without the rest.
  const int64_t k = sc.size(1) * block, count = ids.numel();
  const Layout l = layout_of(codes, d, dmin, sc, m, k, per_super);
  const at::Tensor flat = ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t* idp = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(idp[i] >= 0 && idp[i] < codes.size(0), "row ", idp[i], " out of range");
  at::Tensor out = at::empty({count, k}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  DISPATCH(bits, block, for (int64_t i = 0; i < count; ++i) decode_row<BITS, B>(l, idp[i], op + i * k))
  return out;
}

}  // namespace

TORCH_LIBRARY(BLOCKS_NAMESPACE, lib) {
  lib.def("block_linear(Tensor x, Tensor codes, Tensor d, Tensor dmin, Tensor sc, Tensor m, int bits, int block, "
          "int per_super) -> Tensor", &block_linear);
  lib.def("block_dequantize(Tensor codes, Tensor d, Tensor dmin, Tensor sc, Tensor m, int bits, int block, "
          "int per_super) -> Tensor", &block_dequantize);
  lib.def("block_rows(Tensor ids, Tensor codes, Tensor d, Tensor dmin, Tensor sc, Tensor m, int bits, int block, "
          "int per_super) -> Tensor", &block_rows);
}

// The block layout's arithmetic, shared by chatapp's block kernel operators
// (block_linear.cpp) and its decode step (layer_step.cpp): see block_linear.cpp for the layout.
// Everything sits in an unnamed namespace: each source file that includes it gets its own copy,
// compiled for the same instruction set.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "parallel_rows.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef BLOCKS_NAMESPACE
#define BLOCKS_NAMESPACE chatapp_blocks
#endif

namespace {

constexpr int64_t ROW_GRAIN = 16;     // rows a thread takes at a time
constexpr int64_t PREFETCH_BYTES = 4096;  // code bytes ahead of a row that are asked for

constexpr int64_t SUPER_BLOCK = 256;  // weights a K-quant super-block

// Each block's scale and minimum are held one of three ways, all exact:
// - float32 (`scale`, `low`);
// - the file's own float16 numbers, the plain types' (`scale16`, `low16`);
// - a K-quant's, as its file has them (`packed`): each row `packed_bytes` bytes, the
//   super-blocks' float16 d (and dmin, where there are minimums), then each block's int8 sc
//   (and m), so that scale = d * sc and minimum = dmin * m, exact float32 products.
// The last two are converted to float32 a chunk of rows at a time (`RowScales`) before the
// products read them.
struct Layout {
  const uint8_t* codes;
  const float* scale;       // (N, blocks), or null where another way holds them
  const float* low;         // (N, blocks), or null: every minimum is zero (or another way holds them)
  const uint16_t* scale16;  // (N, blocks) float16, or null
  const uint16_t* low16;    // (N, blocks) float16, or null
  const uint8_t* packed;    // (N, packed_bytes), or null
  int64_t packed_bytes;
  bool packed_low;          // `packed` holds minimums
  int64_t supers;           // `packed`: super-blocks a row
  int64_t per_super;        // `packed`: blocks a super-block
  int64_t k;                // weights a row
  int64_t blocks;           // blocks a row
  int64_t row_bytes;        // code bytes a row
  bool has_low() const { return low != nullptr || low16 != nullptr || packed_low; }
  bool converted() const { return scale16 != nullptr || packed != nullptr; }
};

// One cache line into L1 ahead of its use. Inline assembly on x86: GCC 12 deleted a loop of
// `_mm_prefetch` calls as dead code, silently (the head of a 262,144-token vocabulary took 17 ms
// a step without them, 10 ms with).
inline void prefetch_line(const void* address) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 (%0)" : : "r"(address));
#else
  __builtin_prefetch(address);
#endif
}

// n float16 numbers (IEEE half, as bits) to float32, exactly.
inline void half_to_float(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  if (i < n) {  // the last few on vectors too: a K-quant row has a handful of super-blocks
    const __mmask16 mask = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, mask, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, src + i)));
    return;
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    uint16_t rest[8] = {0};
    float out[8];
    std::memcpy(rest, src + i, (n - i) * sizeof(uint16_t));
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rest))));
    std::memcpy(dst + i, out, (n - i) * sizeof(float));
    return;
  }
#endif
  for (; i < n; ++i) dst[i] = c10::detail::fp16_ieee_to_fp32_value(src[i]);
}

// The float32 scales and minimums of a layout's rows, one row at a time in increasing order: the
// layout's own arrays where they are float32, else a chunk of rows converted from float16 into
// this object's buffers (each thread keeps its own).
class RowScales {
 public:
  // Scales converted at a time: 12 rows of Gemma 3's LM head. Larger chunks made that head's
  // product 3-4% slower than with float32 scales (4,096: 6%), this about 1-4% (paired calls).
  static constexpr int64_t VALUES = 256;

  explicit RowScales(const Layout& l) : l_(l) {}

  // Row `row`'s scales (and minimums: null where none); `end` bounds the rows worth converting.
  void at(int64_t row, int64_t end, const float*& scale, const float*& low) {
    if (!l_.converted()) {
      scale = l_.scale + row * l_.blocks;
      low = l_.low == nullptr ? nullptr : l_.low + row * l_.blocks;
      return;
    }
    if (row < first_ || row >= first_ + count_) {
      first_ = row;
      count_ = std::max<int64_t>(1, std::min<int64_t>(VALUES / l_.blocks, end - row));
      const int64_t n = count_ * l_.blocks;
      scale_.resize(n);
      if (l_.has_low()) low_.resize(n);
      if (l_.packed != nullptr) {
        for (int64_t r = 0; r < count_; ++r)
          unpack_row(l_.packed + (row + r) * l_.packed_bytes, scale_.data() + r * l_.blocks, low_.data() + r * l_.blocks);
      } else {
        half_to_float(l_.scale16 + row * l_.blocks, scale_.data(), n);
        if (l_.low16 != nullptr) half_to_float(l_.low16 + row * l_.blocks, low_.data(), n);
      }
      // the next chunk's numbers, asked for now: they are read long before the rows' own
      // prefetches (`prefetch_row`) reach them
      const int64_t next = std::min<int64_t>(count_, end - row - count_);
      if (l_.packed != nullptr) {
        for (int64_t at = 0; at < next * l_.packed_bytes; at += 64) prefetch_line(l_.packed + (row + count_) * l_.packed_bytes + at);
      } else {
        for (int64_t at = 0; at < next * l_.blocks; at += 32) {
          prefetch_line(l_.scale16 + (row + count_) * l_.blocks + at);
          if (l_.low16 != nullptr) prefetch_line(l_.low16 + (row + count_) * l_.blocks + at);
        }
      }
    }
    scale = scale_.data() + (row - first_) * l_.blocks;
    low = l_.has_low() ? low_.data() + (row - first_) * l_.blocks : nullptr;
  }

 private:
  // The float16 number (IEEE half) at `at` (any alignment), as float32.
  static float half_at(const uint8_t* at) {
    uint16_t bits;
    std::memcpy(&bits, at, 2);
#if defined(__F16C__)
    return _cvtsh_ss(bits);
#else
    return c10::detail::fp16_ieee_to_fp32_value(bits);
#endif
  }

  // `supers` float16 numbers `d` times `PER` small integers each, into `out` (exact products).
  // Each d converted in a register: a vector store of them, then loads of single ones, stalled
  // every row (a masked store does not forward to the loads after it).
  template <int PER>
  static void products(const uint8_t* d, const int8_t* __restrict small, int64_t supers, float* __restrict out) {
    for (int64_t s = 0; s < supers; ++s) {
      const float ds = half_at(d + 2 * s);
#if defined(__AVX2__)  // eight at a time (the compiler widens the bytes one by one)
      const __m256 dv = _mm256_set1_ps(ds);
      for (int j = 0; j < PER; j += 8) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(small + s * PER + j));
        _mm256_storeu_ps(out + s * PER + j, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))));
      }
#else
      for (int j = 0; j < PER; ++j) out[s * PER + j] = ds * float(small[s * PER + j]);
#endif
    }
  }

  // One packed row (see `Layout`) to its blocks' float32 scales and minimums.
  void unpack_row(const uint8_t* row, float* __restrict scale, float* __restrict low) const {
    const int64_t per = l_.per_super, supers = l_.supers, halves = l_.packed_low ? 2 : 1;  // no divisions a row
    const int8_t* sc = reinterpret_cast<const int8_t*>(row + 2 * halves * supers);
    for (int64_t h = 0; h < halves; ++h) {  // d and sc, then dmin and m
      float* out = h == 0 ? scale : low;
      const uint8_t* d = row + 2 * h * supers;
      const int8_t* small = sc + h * l_.blocks;
      if (per == 8) products<8>(d, small, supers, out);
      else if (per == 16) products<16>(d, small, supers, out);
      else
        for (int64_t j = 0; j < l_.blocks; ++j) out[j] = half_at(d + 2 * (j / per)) * float(small[j]);
    }
  }

  const Layout& l_;
  std::vector<float> scale_, low_;
  int64_t first_ = 0, count_ = 0;
};

// The 5-bit layout's code j (0..31) of a block: its low four bits as the 4-bit layout holds
// them, its fifth bit bit j of the 32-bit word after them, minus 16 (Q5_0's signed code).
inline int five_bit_code(const uint8_t* codes, int j) {
  const int nibble = j < 16 ? codes[j] & 15 : codes[j - 16] >> 4;
  return (nibble | (((codes[16 + j / 8] >> (j % 8)) & 1) << 4)) - 16;
}

#if defined(__AVX512F__)
// A 5-bit block's 32 signed codes as two vectors of 16 bytes: the 4-bit layout's nibbles, less
// 16 where the fifth bit is clear.
inline void five_bit_codes(const uint8_t* codes, __m128i& first, __m128i& second) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  uint32_t fifth;
  std::memcpy(&fifth, codes + 16, 4);
  const __m128i sixteen = _mm_set1_epi8(16);
  const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(15));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15));
  first = _mm_mask_sub_epi8(low, __mmask16(~fifth), low, sixteen);
  second = _mm_mask_sub_epi8(high, __mmask16(~(fifth >> 16)), high, sixteen);
}
#elif defined(__AVX2__)
// A 5-bit block's 32 signed codes as one vector of bytes: the fifth bits spread to bytes (0x10
// where set), or-ed into the nibbles, less 16.
inline __m256i five_bit_codes(const uint8_t* codes) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  uint32_t fifth;
  std::memcpy(&fifth, codes + 16, 4);
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(fifth)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);  // byte j: 0xFF where bit j is set
  const __m256i nibbles = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15)),
                                           _mm_and_si128(packed, _mm_set1_epi8(15)));
  return _mm256_sub_epi8(_mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(16))), _mm256_set1_epi8(16));
}
#endif

// A 5-bit block's 32 signed codes into `out`.
inline void five_bit_bytes(const uint8_t* codes, int8_t* out) {
#if defined(__AVX512F__)
  __m128i first, second;
  five_bit_codes(codes, first, second);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), first);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), second);
#elif defined(__AVX2__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), five_bit_codes(codes));
#else
  for (int j = 0; j < 32; ++j) out[j] = int8_t(five_bit_code(codes, j));
#endif
}

// Block `b` of `row`'s weights, code * scale (the minimum is added apart), into `w`.
template <int BITS, int B>
inline void decode_block(const uint8_t* codes, float scale, float* __restrict w) {
  if constexpr (BITS == 4) {
    // byte j holds code j in its low nibble and code j + 16 in its high one
    for (int j = 0; j < 16; ++j) w[j] = float(codes[j] & 15) * scale;
    for (int j = 0; j < 16; ++j) w[16 + j] = float(codes[j] >> 4) * scale;
  } else if constexpr (BITS == 5) {
    int8_t c[32];
    five_bit_bytes(codes, c);
    for (int j = 0; j < 32; ++j) w[j] = float(c[j]) * scale;
  } else {
    const int8_t* c = reinterpret_cast<const int8_t*>(codes);
    for (int j = 0; j < B; ++j) w[j] = float(c[j]) * scale;
  }
}

template <int BITS, int B>
constexpr int64_t block_bytes() { return BITS == 4 ? B / 2 : BITS == 5 ? B / 2 + B / 8 : B; }

// codes . x over one block, with the codes as integers (the block's scale is applied after).
template <int BITS, int B>
inline float block_dot(const uint8_t* codes, const float* __restrict x);

#if defined(__AVX512F__)
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
// 16 signed byte codes times x[0..16), lane by lane (`signed_products`), or added to `acc`.
inline __m512 signed_products(__m128i codes, const float* __restrict x) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)), _mm512_loadu_ps(x));
}
inline __m512 add_signed_products(__m128i codes, const float* __restrict x, __m512 acc) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)), _mm512_loadu_ps(x), acc);
}
template <int BITS, int B>
inline __m512 block_dot_vec(const uint8_t* codes, const float* __restrict x) {
  if constexpr (BITS == 4) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(15));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15));
    const __m512 acc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), _mm512_loadu_ps(x));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), _mm512_loadu_ps(x + 16), acc);
  } else if constexpr (BITS == 5) {
    __m128i first, second;
    five_bit_codes(codes, first, second);
    return add_signed_products(second, x + 16, signed_products(first, x));
  } else {
    __m512 acc = signed_products(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)), x);
    if constexpr (B == 32) acc = add_signed_products(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)), x + 16, acc);
    return acc;
  }
}
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vfma_scalar(Vec v, float s, Vec acc) { return _mm512_fmadd_ps(v, _mm512_set1_ps(s), acc); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vmuladd(const float* a, const float* b, Vec acc) { return _mm512_fmadd_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b), acc); }
inline Vec vload(const float* a) { return _mm512_loadu_ps(a); }
inline Vec vfma(Vec a, Vec b, Vec acc) { return _mm512_fmadd_ps(a, b, acc); }
constexpr int64_t VLEN = 16;
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
// 16 signed byte codes times x[0..16), lane by lane in two halves (`signed_products`), or added to `acc`.
inline __m256 add_signed_products(__m128i codes, const float* __restrict x, __m256 acc) {
  acc = _mm256_fmadd_ps(widen_i8(codes), _mm256_loadu_ps(x), acc);
  return _mm256_fmadd_ps(widen_i8(_mm_srli_si128(codes, 8)), _mm256_loadu_ps(x + 8), acc);
}
inline __m256 signed_products(__m128i codes, const float* __restrict x) {
  const __m256 acc = _mm256_mul_ps(widen_i8(codes), _mm256_loadu_ps(x));
  return _mm256_fmadd_ps(widen_i8(_mm_srli_si128(codes, 8)), _mm256_loadu_ps(x + 8), acc);
}
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
  } else if constexpr (BITS == 5) {
    const __m256i signed_codes = five_bit_codes(codes);
    return add_signed_products(_mm256_extracti128_si256(signed_codes, 1), x + 16,
                               signed_products(_mm256_castsi256_si128(signed_codes), x));
  } else {
    __m256 acc = signed_products(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)), x);
    if constexpr (B == 32) acc = add_signed_products(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)), x + 16, acc);
    return acc;
  }
}
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vfma_scalar(Vec v, float s, Vec acc) { return _mm256_fmadd_ps(v, _mm256_set1_ps(s), acc); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vmuladd(const float* a, const float* b, Vec acc) { return _mm256_fmadd_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b), acc); }
inline Vec vload(const float* a) { return _mm256_loadu_ps(a); }
inline Vec vfma(Vec a, Vec b, Vec acc) { return _mm256_fmadd_ps(a, b, acc); }
constexpr int64_t VLEN = 8;
#define HAVE_VEC 1
#endif

template <int BITS, int B>
inline float block_dot(const uint8_t* codes, const float* __restrict x) {
  float total = 0.f;
  if constexpr (BITS == 4) {
    for (int j = 0; j < 16; ++j) total += float(codes[j] & 15) * x[j] + float(codes[j] >> 4) * x[16 + j];
  } else if constexpr (BITS == 5) {
    for (int j = 0; j < 32; ++j) total += float(five_bit_code(codes, j)) * x[j];
  } else {
    const int8_t* c = reinterpret_cast<const int8_t*>(codes);
    for (int j = 0; j < B; ++j) total += float(c[j]) * x[j];
  }
  return total;
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n);

// One output of one input row: sum over blocks of scale * (codes . x), plus minimum * sum(x).
// `scale` and `low` are the row's (`RowScales`), low null where every minimum is zero.
template <int BITS, int B>
float row_dot(const Layout& l, int64_t row, const float* __restrict scale, const float* __restrict low,
              const float* __restrict x, const float* __restrict xsum) {
  const uint8_t* codes = l.codes + row * l.row_bytes;
#if defined(HAVE_VEC)
  Vec acc = vzero(), other = vzero();  // two chains of sums, so consecutive blocks overlap
  int64_t b = 0;
  for (; b + 2 <= l.blocks; b += 2) {
    acc = vfma_scalar(block_dot_vec<BITS, B>(codes + b * block_bytes<BITS, B>(), x + b * B), scale[b], acc);
    other = vfma_scalar(block_dot_vec<BITS, B>(codes + (b + 1) * block_bytes<BITS, B>(), x + (b + 1) * B),
                        scale[b + 1], other);
  }
  if (b < l.blocks)
    acc = vfma_scalar(block_dot_vec<BITS, B>(codes + b * block_bytes<BITS, B>(), x + b * B), scale[b], acc);
  float rest = 0.f;
  if (low != nullptr) {  // the minimums' share: low . xsum, in the same vectors
    int64_t c = 0;
    for (; c + VLEN <= l.blocks; c += VLEN) other = vmuladd(low + c, xsum + c, other);
    for (; c < l.blocks; ++c) rest += low[c] * xsum[c];
  }
  return hsum(vadd(acc, other)) + rest;
#else
  float total = 0.f;
  for (int64_t b = 0; b < l.blocks; ++b)
    total += scale[b] * block_dot<BITS, B>(codes + b * block_bytes<BITS, B>(), x + b * B);
  return low == nullptr ? total : total + dot(low, xsum, l.blocks);
#endif
}

// The whole row's weights (with their minimums) into `w` (K floats); `scale` and `low` as for
// `row_dot`.
template <int BITS, int B>
void decode_row(const Layout& l, int64_t row, const float* __restrict scale, const float* __restrict low,
                float* __restrict w) {
  const uint8_t* codes = l.codes + row * l.row_bytes;
  for (int64_t b = 0; b < l.blocks; ++b) {
    float* wb = w + b * B;
    decode_block<BITS, B>(codes + b * block_bytes<BITS, B>(), scale[b], wb);
    if (low != nullptr) {
      const float minimum = low[b];
      for (int j = 0; j < B; ++j) wb[j] += minimum;
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

// The codes' weights a row, from their bytes a row.
inline int64_t weights_of(int64_t row_bytes, int64_t bits) {
  return bits == 4 ? row_bytes * 2 : bits == 5 ? row_bytes / 20 * 32 : row_bytes;
}

Layout layout_of(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& low, int64_t block, int64_t bits) {
  TORCH_CHECK(codes.is_contiguous() && scale.is_contiguous() && low.is_contiguous(), "block weights must be contiguous");
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == codes.size(0), "one row of scales a row of codes");
  TORCH_CHECK(codes.dim() == 2 && codes.size(0) > 0 && codes.size(1) > 0 && scale.size(1) > 0 && block > 0,
              "block weights must have rows and columns");
  const int64_t n = codes.size(0), row_bytes = codes.numel() / n;
  Layout l{static_cast<const uint8_t*>(codes.data_ptr()), nullptr, nullptr, nullptr, nullptr, nullptr, 0, false,
           0, 0, 0, 0, row_bytes};
  if (scale.scalar_type() == at::kByte) {  // a K-quant's, packed
    TORCH_CHECK(low.numel() == 0, "packed scales hold their minimums");
    l.k = weights_of(row_bytes, bits);
    l.blocks = l.k / block;
    const int64_t supers = l.k / SUPER_BLOCK, width = scale.size(1);
    TORCH_CHECK(supers > 0 && l.k % SUPER_BLOCK == 0 && SUPER_BLOCK % block == 0, "packed scales need whole super-blocks");
    TORCH_CHECK(width == 2 * supers + l.blocks || width == 4 * supers + 2 * l.blocks, "packed scales of the wrong width");
    l.packed = scale.data_ptr<uint8_t>();
    l.packed_bytes = width;
    l.packed_low = width == 4 * supers + 2 * l.blocks;
    l.supers = supers;
    l.per_super = l.blocks / supers;
    return l;
  }
  const bool half = scale.scalar_type() == at::kHalf;
  TORCH_CHECK((half || scale.scalar_type() == at::kFloat) && (low.numel() == 0 || low.scalar_type() == scale.scalar_type()),
              "scale and low must be both float32 or both float16");
  TORCH_CHECK(low.numel() == 0 || low.sizes() == scale.sizes(), "one minimum a block of each row, or none");
  l.k = scale.size(1) * block;
  l.blocks = scale.size(1);
  if (half) {
    l.scale16 = reinterpret_cast<const uint16_t*>(scale.data_ptr());
    l.low16 = low.numel() == 0 ? nullptr : reinterpret_cast<const uint16_t*>(low.data_ptr());
  } else {
    l.scale = scale.data_ptr<float>();
    l.low = low.numel() == 0 ? nullptr : low.data_ptr<float>();
  }
  return l;
}

// Ask for a later row's codes and scales ahead of time: the hardware prefetcher alone keeps
// too few of a row's streams in flight.
inline void prefetch_row(const Layout& l, int64_t row) {
  const char* codes = reinterpret_cast<const char*>(l.codes + row * l.row_bytes);
  for (int64_t at = 0; at < l.row_bytes; at += 64) prefetch_line(codes + at);
  if (l.converted()) return;  // `RowScales` asks for a chunk's numbers ahead
  prefetch_line(l.scale + row * l.blocks);
  if (l.low != nullptr) prefetch_line(l.low + row * l.blocks);
}

// Rows ahead to prefetch: about PREFETCH_BYTES of codes.
inline int64_t prefetch_distance(const Layout& l) { return std::max<int64_t>(4, PREFETCH_BYTES / l.row_bytes); }

constexpr int64_t W_ROWS = 4;  // weight rows decoded together for a prefill
constexpr int64_t X_TILE = 6;  // rows of x multiplied with them at a time (24 sums in registers)

// out[a][r] = x[a] . w[r] for a < MI rows of x and the W_ROWS rows of w (k floats each).
template <int MI>
inline void tile_products_of(const float* __restrict w, const float* __restrict x, int64_t k, float (*out)[W_ROWS]) {
#if defined(HAVE_VEC)
  Vec acc[MI][W_ROWS];
  for (int a = 0; a < MI; ++a)
    for (int r = 0; r < W_ROWS; ++r) acc[a][r] = vzero();
  for (int64_t at = 0; at < k; at += VLEN) {
    Vec wv[W_ROWS];
    for (int r = 0; r < W_ROWS; ++r) wv[r] = vload(w + r * k + at);
    for (int a = 0; a < MI; ++a) {
      const Vec xv = vload(x + a * k + at);
      for (int r = 0; r < W_ROWS; ++r) acc[a][r] = vfma(xv, wv[r], acc[a][r]);
    }
  }
  for (int a = 0; a < MI; ++a)
    for (int r = 0; r < W_ROWS; ++r) out[a][r] = hsum(acc[a][r]);
#else
  for (int a = 0; a < MI; ++a)
    for (int r = 0; r < W_ROWS; ++r) out[a][r] = dot(w + r * k, x + a * k, k);
#endif
}

inline void tile_products(const float* w, const float* x, int64_t k, int64_t rows, float (*out)[W_ROWS]) {
  switch (rows) {
    case 1: tile_products_of<1>(w, x, k, out); break;
    case 2: tile_products_of<2>(w, x, k, out); break;
    case 3: tile_products_of<3>(w, x, k, out); break;
    case 4: tile_products_of<4>(w, x, k, out); break;
    case 5: tile_products_of<5>(w, x, k, out); break;
    default: tile_products_of<X_TILE>(w, x, k, out); break;
  }
}

template <int BITS, int B>
void run_linear(const Layout& l, const float* x, const float* xsum, float* y, int64_t rows_x, int64_t n) {
  if (rows_x == 1) {
    const int64_t ahead = prefetch_distance(l);
    chatapp_rows::parallel_rows(0, n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
      RowScales scales(l);
      const float *scale, *low;
      for (int64_t row = begin; row < end; ++row) {
        if (row + ahead < end) prefetch_row(l, row + ahead);
        scales.at(row, end, scale, low);
        y[row] = row_dot<BITS, B>(l, row, scale, low, x, xsum);
      }
    });
    return;
  }
  // Several rows of x (a prefill): W_ROWS rows of the weight at a time decoded once into float32,
  // then multiplied with tiles of up to X_TILE rows of x, every product of a tile in registers.
  chatapp_rows::parallel_rows(0, (n + W_ROWS - 1) / W_ROWS, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w(W_ROWS * l.k, 0.f);
    float out[X_TILE][W_ROWS];
    RowScales scales(l);
    const float *scale, *low;
    for (int64_t group = begin; group < end; ++group) {
      const int64_t first = group * W_ROWS, rows = std::min<int64_t>(W_ROWS, n - first);
      for (int64_t r = 0; r < rows; ++r) {
        scales.at(first + r, std::min<int64_t>(n, end * W_ROWS), scale, low);
        decode_row<BITS, B>(l, first + r, scale, low, w.data() + r * l.k);
      }
      for (int64_t i = 0; i < rows_x; i += X_TILE) {
        const int64_t tile = std::min<int64_t>(X_TILE, rows_x - i);
        tile_products(w.data(), x + i * l.k, l.k, tile, out);
        for (int64_t a = 0; a < tile; ++a)
          for (int64_t r = 0; r < rows; ++r) y[(i + a) * n + first + r] = out[a][r];
      }
    }
  });
}

template <int BITS, int B>
void run_dequantize(const Layout& l, float* out, int64_t n) {
  chatapp_rows::parallel_rows(0, n, ROW_GRAIN, [&](int64_t begin, int64_t end) {
    RowScales scales(l);
    const float *scale, *low;
    for (int64_t row = begin; row < end; ++row) {
      scales.at(row, end, scale, low);
      decode_row<BITS, B>(l, row, scale, low, out + row * l.k);
    }
  });
}

// Runs the statement with BITS and B set to the layout's bits and block size (the combinations GGUF's types use).
#define DISPATCH(bits, block, ...)                                                        \
  if (bits == 4 && block == 32) { constexpr int BITS = 4, B = 32; __VA_ARGS__; }        \
  else if (bits == 5 && block == 32) { constexpr int BITS = 5, B = 32; __VA_ARGS__; }   \
  else if (bits == 8 && block == 32) { constexpr int BITS = 8, B = 32; __VA_ARGS__; }   \
  else if (bits == 8 && block == 16) { constexpr int BITS = 8, B = 16; __VA_ARGS__; }   \
  else TORCH_CHECK(false, "no block kernel for ", bits, "-bit codes in blocks of ", block);

// Row `row` of the dequantized weight into out (l.k floats), its scales through `scales`: an
// embedding's lookup, an LM head's exact row.
inline void dequantized_row(const Layout& l, int64_t bits, int64_t block, RowScales& scales, int64_t row, float* out) {
  const float *row_scale, *row_low;
  scales.at(row, row + 1, row_scale, row_low);
  DISPATCH(bits, block, decode_row<BITS, B>(l, row, row_scale, row_low, out))
}

// Each block's sum of x (rows_x, K / block), for the minimums' share of every product.
inline std::vector<float> block_sums(const float* x, int64_t count, int64_t block) {
  std::vector<float> sums(count);
  for (int64_t at = 0; at < count; ++at) {
    float total = 0.f;
    for (int64_t j = 0; j < block; ++j) total += x[at * block + j];
    sums[at] = total;
  }
  return sums;
}

}  // namespace

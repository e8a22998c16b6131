// One attention head of a decode step, shared by the int4 kernel's decode_layers (int4_vnni.cpp)
// and the block kernel's (layer_step.cpp): softmax(scale * q . k_t, soft-capped) . v_t over the
// cached positions t < length.
//
// On AVX512, for a head of up to 256 dimensions in whole vectors: four keys' dot products at a
// time, their sums reduced together; the exponentials sixteen at a time (exp16); the weighted
// values summed in registers, divided by the total once at the end. At 450 cached tokens the
// plain loops (a dot and its reduction a key, the output read and written a key) took about
// 3.6 ms of the default model's 6.7 ms step. Elsewhere, the plain loops.
// Everything sits in an unnamed namespace, as in block_dot.h.

#pragma once

#include "block_dot.h"
#include "vector_exp.h"

#include <cmath>

namespace {

// Cached positions from which a decode step's attention heads are shared out between the threads
// (below it, the meeting costs more than it saves), in both kernels: at 300 and 450 positions the
// default model's step took 7.0-8.6 and 7.5-9.7 ms with it, 7.8-9.3 and 9.1-9.9 with 512
// (alternating processes).
constexpr int64_t kShareAttentionFrom = 128;

#if defined(__AVX512F__)
// The sums of the 16 lanes of each of four vectors, as four floats.
inline __m256 halves_added(__m512 v) {  // lanes i and i + 8 added (AVX512F alone: no extractf32x8)
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

inline __m128 lane_sums4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 a8 = halves_added(a), b8 = halves_added(b), c8 = halves_added(c), d8 = halves_added(d);
  const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
  return _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
}

// p[t] = q . keys[t] for t < length, vectors vectors of 16 a row.
template <int VECTORS>
inline void key_scores(const float* __restrict q, const float* __restrict keys, int64_t length, float* __restrict p) {
  __m512 qv[VECTORS];
  for (int i = 0; i < VECTORS; ++i) qv[i] = _mm512_loadu_ps(q + 16 * i);
  constexpr int64_t dim = 16 * VECTORS;
  int64_t t = 0;
  for (; t + 4 <= length; t += 4) {
    const float* k = keys + t * dim;
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps(), c = _mm512_setzero_ps(), d = _mm512_setzero_ps();
    for (int i = 0; i < VECTORS; ++i) {
      a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + 16 * i), a);
      b = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + dim + 16 * i), b);
      c = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + 2 * dim + 16 * i), c);
      d = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + 3 * dim + 16 * i), d);
    }
    _mm_storeu_ps(p + t, lane_sums4(a, b, c, d));
  }
  for (; t < length; ++t) {
    __m512 a = _mm512_setzero_ps();
    for (int i = 0; i < VECTORS; ++i) a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(keys + t * dim + 16 * i), a);
    p[t] = _mm512_reduce_add_ps(a);
  }
}

// out = sum over t < length of p[t] values[t], times `factor`.
template <int VECTORS>
inline void weighted_values(const float* __restrict p, const float* __restrict values, int64_t length, float factor,
                            float* __restrict out) {
  constexpr int64_t dim = 16 * VECTORS;
  __m512 acc[VECTORS];
  for (int i = 0; i < VECTORS; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t t = 0; t < length; ++t) {
    const __m512 w = _mm512_set1_ps(p[t]);
    for (int i = 0; i < VECTORS; ++i) acc[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(values + t * dim + 16 * i), acc[i]);
  }
  const __m512 f = _mm512_set1_ps(factor);
  for (int i = 0; i < VECTORS; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(acc[i], f));
}

template <int VECTORS>
void attend_vectors(const float* q, const float* keys, const float* values, int64_t length, float scale, float softcap,
                    float* p, float* out) {
  key_scores<VECTORS>(q, keys, length, p);
  float largest = -INFINITY;
  for (int64_t t = 0; t < length; ++t) {
    float s = p[t] * scale;
    if (softcap > 0.f) s = std::tanh(s / softcap) * softcap;
    p[t] = s;
    largest = std::max(largest, s);
  }
  const __m512 top = _mm512_set1_ps(largest);
  __m512 sum = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= length; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + t), top));
    _mm512_storeu_ps(p + t, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (t < length) {
    const __mmask16 mask = (__mmask16)((1u << (length - t)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p + t), top));
    _mm512_mask_storeu_ps(p + t, mask, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
  }
  weighted_values<VECTORS>(p, values, length, 1.0f / _mm512_reduce_add_ps(sum), out);
}
#endif

// softmax(scale * q . keys[t], soft-capped by `softcap` where it is > 0) . values[t] for
// t < length, into out (head_dim); keys and values head_dim floats a row; p: `length` floats of
// scratch.
inline void attend(const float* q, const float* keys, const float* values, int64_t length, int64_t head_dim,
                   float scale, float softcap, float* p, float* out) {
#if defined(__AVX512F__)
  switch (head_dim) {
    case 64: return attend_vectors<4>(q, keys, values, length, scale, softcap, p, out);
    case 80: return attend_vectors<5>(q, keys, values, length, scale, softcap, p, out);
    case 96: return attend_vectors<6>(q, keys, values, length, scale, softcap, p, out);
    case 128: return attend_vectors<8>(q, keys, values, length, scale, softcap, p, out);
    case 256: return attend_vectors<16>(q, keys, values, length, scale, softcap, p, out);
    default: break;
  }
#endif
  float largest = -INFINITY;
  for (int64_t t = 0; t < length; ++t) {
    float s = dot(q, keys + t * head_dim, head_dim) * scale;
    if (softcap > 0.f) s = std::tanh(s / softcap) * softcap;
    p[t] = s;
    largest = std::max(largest, s);
  }
  float total = 0.f;
  for (int64_t t = 0; t < length; ++t) total += (p[t] = std::exp(p[t] - largest));
  std::fill(out, out + head_dim, 0.f);
  for (int64_t t = 0; t < length; ++t) {
    const float weight = p[t] / total;
    const float* value = values + t * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) out[i] += weight * value[i];
  }
}

}  // namespace

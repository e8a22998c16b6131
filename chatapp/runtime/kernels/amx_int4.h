// A prefill's int4 products on AMX-INT8 tiles: out (M, N) (+)= x (M, K) @ w^T, for w in the int4
// kernel's layout (4-bit codes q in blocks of 32 along K, w = scale * (q - 8) + zero per block).
//
// Each block of 32 values of a row of x is rounded to 11 bits as two int8 codes a value,
// x ~ s (16 hi + lo) with hi up to 127 and lo up to 8 (s = max |x| / 2032), and one tile product
// (TDPBSUD: signed bytes times unsigned bytes, summed exactly in int32) takes the block's hi
// codes times 16 q and its lo codes times q at once: 64 bytes deep, a tile product's full depth,
// for 16 tokens and 16 weight rows. The float32 sums add s * scale * that sum + (zero - 8 scale)
// * the block's exact float32 sum, block after block. The tiles hold the weight's codes as bytes
// laid out for the tile product (4 bytes of a weight row per 32-bit lane), 16 weight rows at a
// time, for every token of the prefill. Built where the compiler targets AMX-INT8
// (-march=native on a CPU that has it) and used where Linux grants the process the tiles' state
// (`amx::ready`).
#pragma once

#include <cstdint>
#include <vector>

#include <c10/util/Exception.h>
#include <immintrin.h>

#include "parallel_rows.h"

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__)
#define CHATAPP_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace amx {

constexpr int64_t kBlock = 32;       // weights per scale
constexpr int64_t kDepth = 64;       // bytes a tile product sums over: a block's hi and lo codes
constexpr int64_t kTileRows = 16;    // tokens in an activation tile, weight rows in a weight tile
constexpr int64_t kTileBytes = kTileRows * kDepth;  // one block of 16 rows, tokens' or weights'
constexpr float kHiLevels = 127.0f;  // |hi| at most this
constexpr float kLoRatio = 16.0f;    // a hi code weighs 16 lo codes (16 q still fits a byte)

#ifdef CHATAPP_AMX

// Linux hands a process the tiles' 8 KB of state only once it asks (arch_prctl).
constexpr int kArchRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
constexpr int kTileDataFeature = 18;            // XFEATURE_XTILEDATA

inline bool ready() {
  static const bool granted = syscall(SYS_arch_prctl, kArchRequestPermission, kTileDataFeature) == 0;
  return granted;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// For even blocks, tile 0: 16 tokens' codes of one block; 1: 16 weight rows' codes of that block
// (16 rows of 16 lanes of 4 bytes); 2: the 16 x 16 int32 sums. Tiles 4, 5 and 3 the same for
// odd blocks, so two tile products are in flight.
inline void configure_tiles() {
  TileConfig config;
  for (int tile : {0, 1, 2, 3, 4, 5}) config.rows[tile] = kTileRows, config.colsb[tile] = kDepth;
  _tile_loadconfig(&config);
}

// Rows [begin, end) of x (K floats each) rounded per block to 11 bits: `codes` in the tiles'
// order (for each 16 rows, block after block, each row's 32 hi codes then its 32 lo codes: a
// tile's 1,024 bytes in a row), and each block's scale s and exact sum, in the same order (for
// each 16 rows, block after block, the 16 rows' numbers).
inline void quantize_rows(const float* x, int64_t begin, int64_t end, int64_t k, int8_t* codes, float* scales,
                          float* sums) {
  const int64_t blocks = k / kBlock;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t tile = r / kTileRows, row = r % kTileRows;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* v = x + r * k + b * kBlock;
      const __m512 first = _mm512_loadu_ps(v), second = _mm512_loadu_ps(v + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(first), _mm512_abs_ps(second)));
      const float s = amax / (kHiLevels * kLoRatio);
      const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 1.0f / s : 0.0f), sixteen = _mm512_set1_ps(kLoRatio),
                 one_16th = _mm512_set1_ps(1.0f / kLoRatio);
      int8_t* out = codes + tile * kTileRows * blocks * kDepth + b * kTileBytes + row * kDepth;
      const __m512 half_values[2] = {first, second};
      for (int half = 0; half < 2; ++half) {
        const __m512 levels = _mm512_mul_ps(half_values[half], inverse);  // x / s, up to 2032
        const __m512 hi = _mm512_roundscale_ps(_mm512_mul_ps(levels, one_16th), _MM_FROUND_TO_NEAREST_INT);
        const __m512 lo = _mm512_roundscale_ps(_mm512_fnmadd_ps(hi, sixteen, levels), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i*)(out + 16 * half), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(hi)));
        _mm_storeu_si128((__m128i*)(out + kBlock + 16 * half), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(lo)));
      }
      const int64_t at = (tile * blocks + b) * kTileRows + row;
      scales[at] = s;
      sums[at] = _mm512_reduce_add_ps(_mm512_add_ps(first, second));
    }
  }
}

// The 16 x 16 matrix of 32-bit words `rows` (16 vectors), transposed in place.
inline void transpose_words(__m512i* rows) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows: words interleaved
    t[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then pairs of 64-bit words
    rows[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    rows[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    rows[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    rows[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {  // then 128-bit lanes, rows i, i + 4, i + 8, i + 12
    const __m512i a = _mm512_shuffle_i32x4(rows[i], rows[i + 4], 0x88), b = _mm512_shuffle_i32x4(rows[i], rows[i + 4], 0xdd);
    const __m512i c = _mm512_shuffle_i32x4(rows[i + 8], rows[i + 12], 0x88), d = _mm512_shuffle_i32x4(rows[i + 8], rows[i + 12], 0xdd);
    t[i] = _mm512_shuffle_i32x4(a, c, 0x88);
    t[i + 8] = _mm512_shuffle_i32x4(a, c, 0xdd);
    t[i + 4] = _mm512_shuffle_i32x4(b, d, 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
  for (int i = 0; i < 16; ++i) rows[i] = t[i];  // t[i]: word i of every row
}

// Weight rows [row, row + 16) in the tile layout, every block: tiles (blocks x 1,024 bytes: lane
// c of tile row r holds bytes 4r..4r+3 of weight row c's (32 times 16 q, 32 q), q in the block's
// order), and each block's 16 scales and offsets (zero - 8 scale) as floats.
inline void weight_tiles(const uint8_t* codes, const uint16_t* wscales, const uint16_t* wzeros, int64_t row, int64_t k,
                         uint8_t* tiles, float* scales, float* offsets) {
  const int64_t blocks = k / kBlock;
  const __m128i low_nibbles = _mm_set1_epi8(15), high_nibbles = _mm_set1_epi8((char)0xf0);
  alignas(32) uint16_t column[2][kTileRows];  // one block's 16 scales and zeros, as bfloat16
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i words[kTileRows];
    for (int64_t c = 0; c < kTileRows; ++c) {
      // byte i of a block: code i in its low nibble, code 16 + i in its high one
      const __m128i bytes = _mm_loadu_si128((const __m128i*)(codes + (row + c) * (k / 2) + b * 16));
      const __m128i low = _mm_and_si128(bytes, low_nibbles);
      __m512i v = _mm512_castsi128_si512(_mm_slli_epi16(low, 4));              // 16 q[0..16)
      v = _mm512_inserti32x4(v, _mm_and_si128(bytes, high_nibbles), 1);        // 16 q[16..32)
      v = _mm512_inserti32x4(v, low, 2);                                       // q[0..16)
      words[c] = _mm512_inserti32x4(v, _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles), 3);  // q[16..32)
    }
    transpose_words(words);  // tile row r: the word r of each weight row
    uint8_t* tile = tiles + b * kTileBytes;
    for (int r = 0; r < kTileRows; ++r) _mm512_store_si512((__m512i*)(tile + r * 64), words[r]);
    for (int64_t c = 0; c < kTileRows; ++c) {
      column[0][c] = wscales[(row + c) * blocks + b];
      column[1][c] = wzeros[(row + c) * blocks + b];
    }
    const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i*)column[0])), 16));
    const __m512 zero = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i*)column[1])), 16));
    _mm512_storeu_ps(scales + b * kTileRows, scale);
    _mm512_storeu_ps(offsets + b * kTileRows, _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), scale, zero));
  }
}

// Adds one block to the float sums `acc` of 16 tokens by 16 weight rows: its tile product's sums
// (stored at `sums`), the tokens' scales and exact sums, and the weight rows' scales and offsets.
inline void add_block(const int32_t* sums, const float* xscales, const float* xsums, const float* scales,
                      const float* offsets, __m512* acc) {
  const __m512 scale = _mm512_loadu_ps(scales), offset = _mm512_loadu_ps(offsets);
#pragma GCC unroll 16
  for (int r = 0; r < kTileRows; ++r) {  // unrolled: the 16 sums stay in registers
    const __m512 dots = _mm512_cvtepi32_ps(_mm512_load_si512((const __m512i*)(sums + r * 16)));
    acc[r] = _mm512_fmadd_ps(dots, _mm512_mul_ps(scale, _mm512_set1_ps(xscales[r])), acc[r]);
    acc[r] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsums[r]), acc[r]);
  }
}

// out (m, n) (+)= x (m, k) @ w^T on the tiles, on all threads (each takes groups of 16 weight rows);
// n a multiple of 16, k of 64 (blocks in pairs). Call only where ready().
inline void int4_product(const float* x, int64_t m, const uint8_t* codes, const uint16_t* wscales,
                         const uint16_t* wzeros, int64_t n, int64_t k, float* out, bool accumulate) {
  TORCH_CHECK(n % kTileRows == 0 && k % (2 * kBlock) == 0, "amx::int4_product: N must be a multiple of 16, K of 64");
  const int64_t blocks = k / kBlock, padded = (m + kTileRows - 1) / kTileRows * kTileRows;
  std::vector<int8_t> xq(padded * blocks * kDepth, 0);
  std::vector<float> xscales(padded * blocks, 0.0f), xsums(padded * blocks, 0.0f);
  chatapp_rows::parallel_rows(0, m, 16, [&](int64_t begin, int64_t end) {
    quantize_rows(x, begin, end, k, xq.data(), xscales.data(), xsums.data());
  });
  chatapp_rows::parallel_rows(0, n / kTileRows, 1, [&](int64_t begin, int64_t end) {
    configure_tiles();
    std::vector<uint8_t> tiles_storage(blocks * kTileBytes + 64);
    uint8_t* tiles = (uint8_t*)(((uintptr_t)tiles_storage.data() + 63) & ~(uintptr_t)63);
    std::vector<float> scales(blocks * kTileRows), offsets(blocks * kTileRows);
    alignas(64) int32_t sums[2][2][kTileRows * 16];  // two rounds of two blocks
    for (int64_t group = begin; group < end; ++group) {
      const int64_t row = group * kTileRows;
      weight_tiles(codes, wscales, wzeros, row, k, tiles, scales.data(), offsets.data());
      for (int64_t m0 = 0; m0 < padded; m0 += kTileRows) {
        __m512 acc[kTileRows];
#pragma GCC unroll 16
        for (int r = 0; r < kTileRows; ++r) acc[r] = _mm512_setzero_ps();
        const int8_t* xrows = xq.data() + m0 * blocks * kDepth;
        const float* xs = xscales.data() + m0 * blocks;
        const float* xt = xsums.data() + m0 * blocks;
        const float* block_scales = scales.data();
        const float* block_offsets = offsets.data();
        // Two blocks' tile products at a time (tiles 2 and 3), stored, and summed into `acc` one
        // round later: a tile store reaches memory only once it retires, and loads of it issued
        // right after would wait for that, stalling everything behind them.
        for (int64_t b = 0; b <= blocks; b += 2) {
          int32_t(*stored)[kTileRows * 16] = sums[(b / 2) % 2];
          if (b < blocks) {
            _tile_zero(2);
            _tile_zero(3);
            _tile_loadd(0, xrows + b * kTileBytes, kDepth);
            _tile_loadd(1, tiles + b * kTileBytes, kDepth);
            _tile_dpbsud(2, 0, 1);
            _tile_loadd(4, xrows + (b + 1) * kTileBytes, kDepth);
            _tile_loadd(5, tiles + (b + 1) * kTileBytes, kDepth);
            _tile_dpbsud(3, 4, 5);
            _tile_stored(2, stored[0], 64);
            _tile_stored(3, stored[1], 64);
          }
          if (b > 0) {  // the previous round's blocks b - 2 and b - 1
            int32_t(*previous)[kTileRows * 16] = sums[(b / 2 + 1) % 2];
            for (int64_t done = b - 2; done < b; ++done) {
              add_block(previous[done - b + 2], xs + done * kTileRows, xt + done * kTileRows,
                        block_scales + done * kTileRows, block_offsets + done * kTileRows, acc);
            }
          }
        }
#pragma GCC unroll 16
        for (int r = 0; r < kTileRows; ++r) {
          if (m0 + r >= m) break;
          float* o = out + (m0 + r) * n + row;
          _mm512_storeu_ps(o, accumulate ? _mm512_add_ps(acc[r], _mm512_loadu_ps(o)) : acc[r]);
        }
      }
    }
    _tile_release();
  });
}

#else

inline bool ready() { return false; }

inline void int4_product(const float*, int64_t, const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t,
                         float*, bool) {}

#endif

}  // namespace amx

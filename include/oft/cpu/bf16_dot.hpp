#pragma once
/// \file cpu/bf16_dot.hpp
/// bfloat16 activations with bfloat16 products: the kernels behind Bf16Arithmetic::DotProduct
/// (docs/bf16.md). They use AVX512_BF16's `vdpbf16ps`, which multiplies pairs of bfloat16
/// exactly and adds both products to a float accumulator: twice the products per instruction of
/// a float FMA, on data that is never widened in memory.
///
/// Both operands of `vdpbf16ps` are bfloat16 pairs along the reduction:
/// - Y = X R is computed as Y = X + X D with D = R - I rounded to bfloat16. OFT's R is near the
///   identity, so D is small and rounding it costs 2^-8 |X| |D|, far below the one rounding of
///   Y itself (2^-8 |Y|); the identity part is exact (the accumulators start from X). The pairs
///   are (X[t, 2m], X[t, 2m+1]), adjacent in a row, against a packed D whose word (m, j) holds
///   (D[2m, j], D[2m+1, j]) (pack_pairs).
/// - G = X^T dY sums over tokens, so both operands are pairs of rows: interleave_rows makes word
///   (p, k) = (X[2p, k], X[2p+1, k]). Products of bfloat16 are exact in float, so G is as
///   accurate as the float path's (float accumulation, another order).
///
/// `vdpbf16ps` treats subnormal inputs as zero and flushes subnormal results to zero (values
/// below 2^-126 in magnitude). Without AVX512_BF16 (and AVX512BW, VL) this header declares
/// kHasBf16Dot = false and the operator uses the float arithmetic path instead.

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "bf16_bits.hpp"
#include "gemm_tile.hpp"  // Packet traits, OFT_UNROLL

namespace oft::detail::cpu {

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(EIGEN_VECTORIZE_AVX512)
#define OFT_HAVE_BF16_DOT 1
inline constexpr bool kHasBf16Dot = true;
#else
inline constexpr bool kHasBf16Dot = false;
#endif

/// Words of a packed pair matrix for block size b: ceil(b / 2) rows of b words.
constexpr Index pair_words(Index b) { return (b + 1) / 2 * b; }

/// Packs D = M - I (b x b, row-major float; M = R, or R^T for dX and apply_transposed) rounded
/// to bfloat16, as pairs of rows: word (m, j) = D[2m, j] | D[2m + 1, j] << 16, the upper half 0
/// in the last row when b is odd. Portable code: it runs once per set_generators.
inline void pack_pairs(const float* m, Index b, std::uint32_t* out) {
  for (Index p = 0; p < (b + 1) / 2; ++p)
    for (Index j = 0; j < b; ++j) {
      auto entry = [&](Index k) -> std::uint32_t {
        if (k >= b) return 0;
        const float d = m[k * b + j] - (k == j ? 1.0f : 0.0f);
        return narrow_bf16(d);
      };
      out[p * b + j] = entry(2 * p) | entry(2 * p + 1) << 16;
    }
}

/// Whether rotate_rows may stream its output: every row tile's store is then one whole
/// aligned cache line (32 bfloat16), so b is a multiple of 32 and each row starts aligned.
inline bool rotate_streaming_allowed(const std::uint16_t* y, Index ldy, Index b) {
  constexpr Index kLineBytes = 64;
  return reinterpret_cast<std::uintptr_t>(y) % kLineBytes == 0 && (2 * ldy) % kLineBytes == 0 &&
         b % 32 == 0;
}

/// Whether rotate_rows may write its output over its input for block size b.
constexpr bool rotate_in_place(Index b) { return b <= 32; }

#if defined(OFT_HAVE_BF16_DOT)

/// Mask of the first `count` (0..16 or 0..32) lanes.
inline __mmask16 lanes16(Index count) {
  return count >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << count) - 1u);
}
inline __mmask32 lanes32(Index count) {
  return count >= 32 ? __mmask32(0xffffffffu) : static_cast<__mmask32>((1u << count) - 1u);
}

/// 16 bfloat16 (masked lanes read as +0) widened exactly to floats.
inline __m512 widen16(const std::uint16_t* from, __mmask16 mask) {
  const __m256i half = _mm256_maskz_loadu_epi16(mask, from);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/// Stores one row of a register tile, Packets x 16 floats, the last packet's first `last`
/// lanes only, each rounded to bfloat16 by `vcvtne2ps2bf16` / `vcvtneps2bf16`: to nearest
/// even, NaN kept quiet, and, like `vdpbf16ps`, subnormals flushed to zero (one instruction per
/// 32 values instead of the integer rounding of narrow_packet_bf16). Store::Streaming writes a
/// whole two-packet row (one aligned cache line: see rotate_streaming_allowed) non-temporally.
template <Store Kind, int Packets>
inline void store_rounded(std::uint16_t* to, const __m512* value, Index last) {
  if constexpr (Packets == 2) {
    const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(value[1], value[0]);
    if constexpr (Kind == Store::Streaming)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(to), both);
    else
      _mm512_mask_storeu_epi16(to, lanes32(16 + last), both);
  } else {
    static_assert(Packets == 1, "register tiles are one or two packets wide");
    const __m256i one = (__m256i)_mm512_cvtneps_pbh(value[0]);
    _mm256_mask_storeu_epi16(to, lanes16(last), one);
  }
}

/// One 32-bit pair of bfloat16 at `from` (any alignment).
inline std::uint32_t load_pair(const std::uint16_t* from) {
  std::uint32_t word;
  std::memcpy(&word, from, sizeof word);
  return word;
}

/// One bfloat16 at `from` as a pair with a zero partner.
inline std::uint32_t load_one(const std::uint16_t* from) {
  std::uint16_t value;
  std::memcpy(&value, from, sizeof value);
  return value;
}

/// acc += a_pair . b_pairs lane by lane (two exact products per lane, float sums).
inline __m512 dot_pairs(__m512 acc, std::uint32_t a_pair, __m512i b_pairs) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(a_pair)),
                          (__m512bh)b_pairs);
}

/// How a register tile starts and ends.
enum class PairTile {
  Rotate,      ///< acc = A's own columns (the identity part); out = round_bf16(acc)
  Accumulate,  ///< acc = 0; float out += acc
};

/// One register tile of Rows x (Packets x 16) outputs at column `col`, the last packet masked
/// to `last` lanes. Step m reads A's pair at a + t * a_row + m * a_inner (uint16 units; when
/// `half_last`, the final step reads one value and treats its pair partner as 0) and B's
/// pairs at b + m * ldb + col.
template <PairTile Kind, int Rows, int Packets, Store S, class Out>
inline void pair_tile(const std::uint16_t* a, Index a_row, Index a_inner, Index steps,
                      bool half_last, const std::uint32_t* b, Index ldb, Index col, Index last,
                      Out* out, Index ldo) {
  __mmask16 mask[Packets];
  OFT_UNROLL for (int v = 0; v < Packets; ++v) {
    mask[v] = v + 1 < Packets ? lanes16(16) : lanes16(last);
  }
  __m512 acc[Rows][Packets];
  OFT_UNROLL for (int t = 0; t < Rows; ++t) {
    OFT_UNROLL for (int v = 0; v < Packets; ++v) {
      if constexpr (Kind == PairTile::Rotate)
        acc[t][v] = widen16(a + t * a_row + col + 16 * v, mask[v]);
      else
        acc[t][v] = _mm512_setzero_ps();
    }
  }
  // One step of the depth: B's pairs of step m against each row's pair from load(row's A).
  auto step = [&](Index m, auto load) {
    __m512i pairs[Packets];
    OFT_UNROLL for (int v = 0; v < Packets; ++v) {
      pairs[v] = _mm512_maskz_loadu_epi32(mask[v], b + m * ldb + col + 16 * v);
    }
    OFT_UNROLL for (int t = 0; t < Rows; ++t) {
      const std::uint32_t a_pair = load(a + t * a_row + m * a_inner);
      OFT_UNROLL for (int v = 0; v < Packets; ++v) {
        acc[t][v] = dot_pairs(acc[t][v], a_pair, pairs[v]);
      }
    }
  };
  const Index full = half_last ? steps - 1 : steps;
  for (Index m = 0; m < full; ++m) step(m, load_pair);
  if (half_last) step(steps - 1, load_one);
  OFT_UNROLL for (int t = 0; t < Rows; ++t) {
    Out* row = out + t * ldo + col;
    if constexpr (Kind == PairTile::Rotate) {
      store_rounded<S, Packets>(row, acc[t], last);
    } else {
      OFT_UNROLL for (int v = 0; v < Packets; ++v) {
        const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], row + 16 * v), acc[t][v]);
        _mm512_mask_storeu_ps(row + 16 * v, mask[v], sum);
      }
    }
  }
}

/// All `cols` columns of Rows rows: 32-column tiles, the last one (or 16) masked.
template <PairTile Kind, int Rows, Store S, class Out>
inline void pair_rows(Index cols, const std::uint16_t* a, Index a_row, Index a_inner, Index steps,
                      bool half_last, const std::uint32_t* b, Index ldb, Out* out, Index ldo) {
  for (Index col = 0; col < cols; col += 32) {
    const Index left = cols - col;
    if (left > 16)
      pair_tile<Kind, Rows, 2, S>(a, a_row, a_inner, steps, half_last, b, ldb, col, left - 16, out,
                                  ldo);
    else
      pair_tile<Kind, Rows, 1, S>(a, a_row, a_inner, steps, half_last, b, ldb, col, left, out, ldo);
  }
}

/// `rows` rows in register tiles of 8 rows, then a tail of 1..7.
template <PairTile Kind, Store S = Store::Regular, class Out>
inline void pair_gemm(Index rows, Index cols, const std::uint16_t* a, Index a_row, Index a_inner,
                      Index steps, bool half_last, const std::uint32_t* b, Index ldb, Out* out,
                      Index ldo) {
  constexpr int kRows = 8;
  Index t = 0;
  for (; t + kRows <= rows; t += kRows)
    pair_rows<Kind, kRows, S>(cols, a + t * a_row, a_row, a_inner, steps, half_last, b, ldb,
                              out + t * ldo, ldo);
  const std::uint16_t* a_rest = a + t * a_row;
  Out* out_rest = out + t * ldo;
  auto tail = [&](auto rows_constant) {
    pair_rows<Kind, decltype(rows_constant)::value, S>(cols, a_rest, a_row, a_inner, steps,
                                                       half_last, b, ldb, out_rest, ldo);
  };
  for_row_tail(rows - t, tail);
}

/// Y = X + X D for `rows` rows of one block (b columns, bfloat16 at row strides lda, ldy),
/// D packed by pack_pairs. Y may be X itself when b <= 32 (one register tile spans the block
/// and reads all of its rows before it stores any); otherwise Y must not overlap X.
/// `streaming` needs rotate_streaming_allowed(y, ldy, b) and a stream_fence() before another
/// thread reads Y.
inline void rotate_rows(bool streaming, Index rows, Index b, const std::uint16_t* x, Index lda,
                        const std::uint32_t* pairs, std::uint16_t* y, Index ldy) {
  const Index steps = (b + 1) / 2;
  const bool half_last = b % 2 != 0;
  if (streaming)
    pair_gemm<PairTile::Rotate, Store::Streaming>(rows, b, x, lda, 2, steps, half_last, pairs, b, y,
                                                  ldy);
  else
    pair_gemm<PairTile::Rotate>(rows, b, x, lda, 2, steps, half_last, pairs, b, y, ldy);
}

/// Interleaves `rows` rows of b bfloat16 (row stride `stride`) into ceil(rows / 2) rows of b
/// words: word (p, k) = row 2p's k | row 2p+1's k << 16; a missing last row reads as 0. When
/// `copy` is not null, the rows are also copied there as they are (row stride b).
inline void interleave_rows(const std::uint16_t* from, Index stride, Index rows, Index b,
                            std::uint32_t* to, std::uint16_t* copy = nullptr) {
  // Word i of the result takes 16-bit lane i of the first row (index i) and of the second
  // (index 32 + i): lanes 0-15 for the low half of the block, 16-31 for the high half.
  // clang-format off
  alignas(64) static constexpr std::uint16_t kLow[32] = {
      0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static constexpr std::uint16_t kHigh[32] = {
      16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
      24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  // clang-format on
  const __m512i low = _mm512_load_si512(kLow), high = _mm512_load_si512(kHigh);
  for (Index p = 0; 2 * p < rows; ++p) {
    const std::uint16_t* first = from + 2 * p * stride;
    const bool second = 2 * p + 1 < rows;
    std::uint32_t* out = to + p * b;
    for (Index k = 0; k < b; k += 32) {
      const Index left = b - k;
      const __mmask32 mask = lanes32(left);
      const __m512i r0 = _mm512_maskz_loadu_epi16(mask, first + k);
      const __m512i r1 =
          second ? _mm512_maskz_loadu_epi16(mask, first + stride + k) : _mm512_setzero_si512();
      if (copy) {
        _mm512_mask_storeu_epi16(copy + 2 * p * b + k, mask, r0);
        if (second) _mm512_mask_storeu_epi16(copy + (2 * p + 1) * b + k, mask, r1);
      }
      _mm512_mask_storeu_epi32(out + k, lanes16(left), _mm512_permutex2var_epi16(r0, low, r1));
      if (left > 16)
        _mm512_mask_storeu_epi32(out + k + 16, lanes16(left - 16),
                                 _mm512_permutex2var_epi16(r0, high, r1));
    }
  }
}

/// G (b x b float, row-major) += X^T dY over `pairs` interleaved token pairs (interleave_rows
/// of X's and dY's slices).
inline void gradient_pairs(Index b, Index pairs, const std::uint32_t* x_pairs,
                           const std::uint32_t* dy_pairs, float* g) {
  // A(k, p) = word k of x_pairs' row p: a_row = one word, a_inner = one row of b words.
  pair_gemm<PairTile::Accumulate>(b, b, reinterpret_cast<const std::uint16_t*>(x_pairs), 2, 2 * b,
                                  pairs, false, dy_pairs, b, g, b);
}

#endif  // OFT_HAVE_BF16_DOT

}  // namespace oft::detail::cpu

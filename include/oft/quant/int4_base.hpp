#pragma once
/// \file quant/int4_base.hpp
/// GPTQ and AWQ int4 weights (quant/int4_group.hpp) as a frozen base of the QOFT layer: the
/// FrozenBase interface of quant/frozen_base.hpp, so QoftLinear, QloraLinear and the fused
/// dequantize-GEMMs run on them unchanged. Every value equals dequantize_int4_group's bit for bit.
///
/// The fused GEMM dequantizes one row of W at a time (all of it forward, 512 columns backward).
/// The checkpoint layouts put a row's codes far apart: GPTQ's qweight is [in/8, out], so a row's
/// words are `out` words apart; AWQ's is [in, out/8], one word per value. So the constructor
/// repacks once into row-major words, 8 codes of consecutive inputs per word, lowest nibble first
/// (as many bytes as qweight, plus padding of each row to 8 values), and the zeros and scales into
/// [out, groups] (one byte per zero). A row's group then costs one 16-entry table of the float16
/// results, (q - zero) * scale rounded for q = 0..15, and each value is a table lookup: 16 at a
/// time with AVX-512 (_mm512_permutexvar_ps), 8 with AVX2, else scalar; the table is built with
/// F16C (vcvtps2ph, round to nearest even) where available, else by float_to_f16. Act-order
/// GPTQ weights (g_idx not i / group_size) build the tables of all groups of the row, up to 128 at
/// a time on the stack, and look each column's group up. Nothing is allocated per call.
/// tensor() packs the checkpoint tensors back (the same words).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../detail/intrinsics.hpp"  // before <immintrin.h>: see the file

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../errors.hpp"
#include "../half.hpp"
#include "../index.hpp"
#include "int4_group.hpp"

namespace oft::quant {

/// A GPTQ (v1 or v2) or AWQ GEMM 4-bit weight, n_out x d = tensor.out x tensor.in.
class Int4GroupBase {
 public:
  /// Reads the checkpoint tensors; throws as check_int4_group when they are inconsistent.
  explicit Int4GroupBase(const Int4GroupTensor& t)
      : layout_(t.layout), out_(t.out), in_(t.in), group_size_(t.group_size) {
    check_int4_group(t, "Int4GroupBase");
    groups_ = int4_groups(in_, group_size_);
    group_width_ = group_size_ == -1 ? in_ : group_size_;
    words_ = (in_ + 7) / 8;
    const bool gptq = is_gptq(layout_);
    const Index out_words = out_ / 8;
    codes_.assign(static_cast<std::size_t>(out_ * words_), 0u);
    if (gptq) {
      // qweight [in/8, out]: word [k, o] already holds inputs 8k..8k+7 of output o, lowest first.
      for (Index k = 0; k < words_; ++k)
        for (Index o = 0; o < out_; ++o)
          codes_[static_cast<std::size_t>(o * words_ + k)] =
              static_cast<std::uint32_t>(t.qweight.values[static_cast<std::size_t>(k * out_ + o)]);
    } else {
      // qweight [in, out/8]: output o of input i is nibble kAwqNibbleOf[o % 8] of word [i, o/8].
      for (Index i = 0; i < in_; ++i)
        for (Index o = 0; o < out_; ++o) {
          const auto word = static_cast<std::uint32_t>(
              t.qweight.values[static_cast<std::size_t>(i * out_words + o / 8)]);
          const std::uint32_t q =
              (word >> (4 * kAwqNibbleOf[static_cast<std::size_t>(o % 8)])) & 0xFu;
          codes_[static_cast<std::size_t>(o * words_ + i / 8)] |= q << (4 * (i % 8));
        }
    }
    zeros_.resize(static_cast<std::size_t>(out_ * groups_));
    scales_.resize(static_cast<std::size_t>(out_ * groups_));
    const unsigned plus = layout_ == Int4Layout::GptqV1 ? 1u : 0u;
    for (Index g = 0; g < groups_; ++g)
      for (Index o = 0; o < out_; ++o) {
        const auto word = static_cast<std::uint32_t>(
            t.qzeros.values[static_cast<std::size_t>(g * out_words + o / 8)]);
        const int nibble =
            gptq ? static_cast<int>(o % 8) : kAwqNibbleOf[static_cast<std::size_t>(o % 8)];
        zeros_[static_cast<std::size_t>(o * groups_ + g)] =
            static_cast<std::uint8_t>(((word >> (4 * nibble)) & 0xFu) + plus);
        scales_[static_cast<std::size_t>(o * groups_ + g)] =
            t.scales.values[static_cast<std::size_t>(g * out_ + o)];
      }
    if (gptq)
      for (Index i = 0; i < in_; ++i)
        if (t.g_idx[static_cast<std::size_t>(i)] != i / group_width_) {
          g_idx_ = t.g_idx;  // act-order
          break;
        }
  }

  Index rows() const { return out_; }
  Index cols() const { return in_; }
  const char* format() const { return is_gptq(layout_) ? "gptq" : "awq"; }
  Int4Layout layout() const { return layout_; }
  Index group_size() const { return group_size_; }
  /// Whether g_idx is not i / group_size (an act-order GPTQ weight).
  bool act_order() const { return !g_idx_.empty(); }

  /// The checkpoint tensors, packed back from what the base keeps (the same words).
  Int4GroupTensor tensor() const {
    std::vector<std::uint8_t> q(static_cast<std::size_t>(out_ * in_));
    for (Index o = 0; o < out_; ++o)
      for (Index i = 0; i < in_; ++i)
        q[static_cast<std::size_t>(o * in_ + i)] = static_cast<std::uint8_t>(code(o, i));
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(groups_ * out_));
    std::vector<std::uint16_t> scales(zeros.size());
    for (Index g = 0; g < groups_; ++g)
      for (Index o = 0; o < out_; ++o) {
        zeros[static_cast<std::size_t>(g * out_ + o)] =
            zeros_[static_cast<std::size_t>(o * groups_ + g)];
        scales[static_cast<std::size_t>(g * out_ + o)] =
            scales_[static_cast<std::size_t>(o * groups_ + g)];
      }
    if (!is_gptq(layout_)) return pack_awq(out_, in_, group_size_, q, zeros, scales);
    return pack_gptq(layout_, out_, in_, group_size_, q, zeros, scales, g_idx_);
  }

  /// What the base keeps: 4 bits per value (rows padded to a multiple of 8 values), one byte per
  /// zero, float16 scales, and g_idx (4 bytes per input) for act-order weights.
  std::size_t bytes() const {
    return codes_.size() * sizeof(std::uint32_t) + zeros_.size() +
           scales_.size() * sizeof(std::uint16_t) + g_idx_.size() * sizeof(std::int32_t);
  }

  /// W[row0 + r, col0 + j] -> out[r * ld + j]; Out: float, or double (the float values widened).
  template <class Out>
  void dequantize(Index row0, Index nrows, Index col0, Index ncols, Out* out, Index ld) const {
    for (Index r = 0; r < nrows; ++r) {
      if (g_idx_.empty())
        row_sequential(row0 + r, col0, ncols, out + r * ld);
      else
        row_act_order(row0 + r, col0, ncols, out + r * ld);
    }
  }

 private:
  /// Runs of at least this many values of one (row, group) go through a table.
  static constexpr Index kTableMin = 16;
  /// Act-order rows keep the tables of up to this many groups at once (8 KiB of stack).
  static constexpr Index kTableGroups = 128;
  /// Act-order rows build tables only with at least this many columns per group; below, each
  /// value is rounded on its own. A table is one vcvtps2ph pair with F16C, 16 scalar roundings
  /// without.
#if defined(__F16C__) && defined(__AVX__)
  static constexpr Index kTableColumnsPerGroup = 4;
#else
  static constexpr Index kTableColumnsPerGroup = 16;
#endif

  /// float16(diff * scale), widened: the product is exact, so this is torch's float16 product.
  static float value(int diff, float scale) {
    const float product = static_cast<float>(diff) * scale;
#if defined(__F16C__)
    // (Not _cvtss_sh: clang's macro is a C99 compound literal, an error under -Wpedantic.)
    const __m128i half = _mm_cvtps_ph(_mm_set_ss(product), _MM_FROUND_TO_NEAREST_INT);
    return _mm_cvtss_f32(_mm_cvtph_ps(half));
#else
    return f16_to_float(float_to_f16(product));
#endif
  }

  /// table[q] = value(q - zero, scale), q = 0..15.
  static void fill_table(float* table, int zero, float scale) {
#if defined(__F16C__) && defined(__AVX__)
    // The 16 products at once, each rounded to float16 by vcvtps2ph (to nearest even by its
    // immediate, whatever MXCSR says) and widened back.
    const __m256 z = _mm256_set1_ps(static_cast<float>(zero)), s = _mm256_set1_ps(scale);
    const __m256 low = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), z), s);
    const __m256 high =
        _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), z), s);
    _mm256_storeu_ps(table, _mm256_cvtph_ps(_mm256_cvtps_ph(low, _MM_FROUND_TO_NEAREST_INT)));
    _mm256_storeu_ps(table + 8, _mm256_cvtph_ps(_mm256_cvtps_ph(high, _MM_FROUND_TO_NEAREST_INT)));
#else
    for (int q = 0; q < 16; ++q) table[q] = value(q - zero, scale);
#endif
  }

  static unsigned nibble(const std::uint32_t* words, Index i) {
    return (words[i / 8] >> (4 * (i % 8))) & 0xFu;
  }

  /// Entry of code i in the 16-value table of its group: group * 16 + code (group_of is int32,
  /// the code unsigned; both widened to Index before they meet).
  static Index table_index(std::int32_t group, const std::uint32_t* words, Index i) {
    return Index{group} * 16 + static_cast<Index>(nibble(words, i));
  }
  unsigned code(Index o, Index i) const { return nibble(codes_.data() + o * words_, i); }
  float scale(Index o, Index g) const {
    return f16_to_float(scales_[static_cast<std::size_t>(o * groups_ + g)]);
  }
  int zero(Index o, Index g) const { return zeros_[static_cast<std::size_t>(o * groups_ + g)]; }

  /// dst[i - a] = table[q(i)] for inputs [a, b) of one row (`words`).
  template <class Out>
  static void lookup_run(const std::uint32_t* words, Index a, Index b, const float* table,
                         Out* dst) {
    Index i = a;
    if constexpr (std::is_same_v<Out, float>) {
#if defined(__AVX512F__)
      for (; i < b && i % 16 != 0; ++i) *dst++ = table[nibble(words, i)];
      const __m512 lookup = _mm512_loadu_ps(table);
      const __m128i low_nibble = _mm_set1_epi8(0x0F);
      for (; i + 16 <= b; i += 16, dst += 16) {
        // Two words = 8 bytes = 16 codes, the low nibble of each byte first -> 16 int32 indices.
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(words + i / 8));
        const __m128i low = _mm_and_si128(bytes, low_nibble);
        const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
        const __m512i index = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(low, high));
        _mm512_storeu_ps(dst, _mm512_permutexvar_ps(index, lookup));
      }
#elif defined(__AVX2__)
      for (; i < b && i % 8 != 0; ++i) *dst++ = table[nibble(words, i)];
      const __m256 lookup_low = _mm256_loadu_ps(table), lookup_high = _mm256_loadu_ps(table + 8);
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      const __m256i mask = _mm256_set1_epi32(0xF);
      for (; i + 8 <= b; i += 8, dst += 8) {
        const __m256i word = _mm256_set1_epi32(static_cast<int>(words[i / 8]));
        const __m256i index = _mm256_and_si256(_mm256_srlv_epi32(word, shifts), mask);
        // permutevar8x32 uses the low 3 bits; bit 3 (moved to the sign bit) picks the half.
        const __m256 from_low = _mm256_permutevar8x32_ps(lookup_low, index);
        const __m256 from_high = _mm256_permutevar8x32_ps(lookup_high, index);
        _mm256_storeu_ps(dst, _mm256_blendv_ps(from_low, from_high,
                                               _mm256_castsi256_ps(_mm256_slli_epi32(index, 28))));
      }
#endif
    }
    for (; i < b; ++i) *dst++ = static_cast<Out>(table[nibble(words, i)]);
  }

  /// dst[i - a] = tables[16 group_of[i] + q(i)] for inputs [a, b) of one row (`words`).
  template <class Out>
  static void lookup_act_order(const std::uint32_t* words, const std::int32_t* group_of, Index a,
                               Index b, const float* tables, Out* dst) {
    Index i = a;
    if constexpr (std::is_same_v<Out, float>) {
#if defined(__AVX512F__)
      for (; i < b && i % 16 != 0; ++i) *dst++ = tables[table_index(group_of[i], words, i)];
      const __m128i low_nibble = _mm_set1_epi8(0x0F);
      for (; i + 16 <= b; i += 16, dst += 16) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(words + i / 8));
        const __m128i low = _mm_and_si128(bytes, low_nibble);
        const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
        const __m512i q = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(low, high));
        const __m512i g = _mm512_loadu_si512(group_of + i);
        _mm512_storeu_ps(
            dst, _mm512_i32gather_ps(_mm512_add_epi32(_mm512_slli_epi32(g, 4), q), tables, 4));
      }
#elif defined(__AVX2__)
      for (; i < b && i % 8 != 0; ++i) *dst++ = tables[table_index(group_of[i], words, i)];
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      const __m256i mask = _mm256_set1_epi32(0xF);
      for (; i + 8 <= b; i += 8, dst += 8) {
        const __m256i word = _mm256_set1_epi32(static_cast<int>(words[i / 8]));
        const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(word, shifts), mask);
        const __m256i g = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group_of + i));
        _mm256_storeu_ps(
            dst, _mm256_i32gather_ps(tables, _mm256_add_epi32(_mm256_slli_epi32(g, 4), q), 4));
      }
#endif
    }
    for (; i < b; ++i) *dst++ = static_cast<Out>(tables[table_index(group_of[i], words, i)]);
  }

  template <class Out>
  void row_sequential(Index o, Index col0, Index ncols, Out* dst) const {
    const std::uint32_t* words = codes_.data() + o * words_;
    const Index end = col0 + ncols;
    for (Index i = col0; i < end;) {
      const Index g = i / group_width_;
      const Index stop = std::min(end, (g + 1) * group_width_);
      const float s = scale(o, g);
      const int z = zero(o, g);
      if (stop - i >= kTableMin) {
        alignas(64) float table[16];
        fill_table(table, z, s);
        lookup_run(words, i, stop, table, dst + (i - col0));
      } else {
        for (Index k = i; k < stop; ++k)
          dst[k - col0] = static_cast<Out>(value(static_cast<int>(nibble(words, k)) - z, s));
      }
      i = stop;
    }
  }

  template <class Out>
  void row_act_order(Index o, Index col0, Index ncols, Out* dst) const {
    const std::uint32_t* words = codes_.data() + o * words_;
    const std::int32_t* group_of = g_idx_.data();
    const Index end = col0 + ncols;
    if (ncols < kTableColumnsPerGroup * std::min(groups_, kTableGroups)) {
      // Few columns for the groups: a table each would cost more than the values.
      for (Index i = col0; i < end; ++i) {
        const Index g = group_of[i];
        dst[i - col0] =
            static_cast<Out>(value(static_cast<int>(nibble(words, i)) - zero(o, g), scale(o, g)));
      }
      return;
    }
    alignas(64) float tables[kTableGroups * 16];
    if (groups_ <= kTableGroups) {  // every group's table at once (the common case)
      for (Index g = 0; g < groups_; ++g) fill_table(tables + g * 16, zero(o, g), scale(o, g));
      lookup_act_order(words, group_of, col0, end, tables, dst);
      return;
    }
    for (Index g0 = 0; g0 < groups_; g0 += kTableGroups) {
      const Index g1 = std::min(groups_, g0 + kTableGroups);
      for (Index g = g0; g < g1; ++g) fill_table(tables + (g - g0) * 16, zero(o, g), scale(o, g));
      for (Index i = col0; i < end; ++i) {
        const Index g = group_of[i];
        if (g >= g0 && g < g1)
          dst[i - col0] = static_cast<Out>(tables[(g - g0) * 16 + nibble(words, i)]);
      }
    }
  }

  Int4Layout layout_;
  Index out_, in_, group_size_;
  Index groups_ = 0;
  Index group_width_ = 0;  ///< inputs per group (in for group_size -1)
  Index words_ = 0;        ///< words per row of codes_, ceil(in / 8)
  /// [out, words_]: input i of row o is nibble i % 8 (lowest first) of word i / 8.
  std::vector<std::uint32_t> codes_;
  std::vector<std::uint8_t> zeros_;    ///< [out, groups]: real zeros (GPTQ v1's + 1 applied)
  std::vector<std::uint16_t> scales_;  ///< [out, groups]: float16 bits
  std::vector<std::int32_t> g_idx_;    ///< act-order GPTQ: [in]; otherwise empty
};

}  // namespace oft::quant

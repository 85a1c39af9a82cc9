#pragma once
/// \file quant/bnb4_panel.hpp
/// Dequantizes a run of consecutive NF4/FP4 values that share one absmax, into float32: the inner
/// loop of the fused dequantize-GEMM (quant/fused_gemm.hpp). Values equal dequantize_bnb4's bit
/// for bit (code[index] * absmax, one rounding), on every path:
///
/// - AVX-512: 16 values per step; the 16 scaled codes sit in one register and
///   _mm512_permutexvar_ps looks all 16 up at once.
/// - AVX2: 8 values per step; two 8-entry halves (_mm256_permutevar8x32_ps), blended on bit 3.
/// - scalar: everything else (heads and tails, other ISAs).
///
/// The path is chosen at compile time from the target ISA (-march), as Eigen does.
#include <array>
#include <cstdint>
#include <cstring>

#include "../detail/intrinsics.hpp"  // before <immintrin.h>: see the file

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../index.hpp"

namespace oft::quant::detail {

/// Writes values [first, first + count) of the flattened 4-bit tensor `packed` (first value in
/// the high nibble) to out[0, count), each code[index] * absmax. All `count` values must lie in
/// one quantization block.
inline void dequantize_run(const std::uint8_t* packed, Index first, Index count,
                           const std::array<float, 16>& code, float absmax, float* out) {
  alignas(64) float table[16];
  for (int i = 0; i < 16; ++i) table[i] = code[static_cast<std::size_t>(i)] * absmax;
  const auto scalar = [&](Index e) {
    const std::uint8_t byte = packed[e >> 1];
    return table[(e & 1) ? (byte & 0xF) : (byte >> 4)];
  };
  Index e = first;
  const Index end = first + count;
  if ((e & 1) && e < end) *out++ = scalar(e++);
#if defined(__AVX512F__)
  const __m512 lookup = _mm512_load_ps(table);
  const __m128i low_nibble = _mm_set1_epi8(0x0F);
  for (; e + 16 <= end; e += 16, out += 16) {
    // 8 bytes -> 16 nibbles in value order (high, low, high, low, ...) -> 16 int32 indices.
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + (e >> 1)));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
    const __m128i low = _mm_and_si128(bytes, low_nibble);
    const __m512i index = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, low));
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(index, lookup));
  }
#elif defined(__AVX2__)
  const __m256 lookup_low = _mm256_load_ps(table), lookup_high = _mm256_load_ps(table + 8);
  const __m128i low_nibble = _mm_set1_epi8(0x0F);
  for (; e + 8 <= end; e += 8, out += 8) {
    std::int32_t four_bytes;
    std::memcpy(&four_bytes, packed + (e >> 1), 4);
    const __m128i bytes = _mm_cvtsi32_si128(four_bytes);
    const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
    const __m128i low = _mm_and_si128(bytes, low_nibble);
    const __m256i index = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(high, low));
    // permutevar8x32 uses the low 3 bits; bit 3 (moved to the sign bit) picks the half.
    const __m256 from_low = _mm256_permutevar8x32_ps(lookup_low, index);
    const __m256 from_high = _mm256_permutevar8x32_ps(lookup_high, index);
    _mm256_storeu_ps(out, _mm256_blendv_ps(from_low, from_high,
                                           _mm256_castsi256_ps(_mm256_slli_epi32(index, 28))));
  }
#endif
  for (; e < end; ++e) *out++ = scalar(e);
}

}  // namespace oft::quant::detail

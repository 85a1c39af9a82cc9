#pragma once
/// \file cpu/bf16_bits.hpp
/// bfloat16 bit conversions: one value (widen_bf16, narrow_bf16) and one SIMD packet of floats
/// (narrow_packet_bf16, for the kernel's stores). cpu/bf16.hpp holds the row conversions.
///
/// The scalar conversions are half.hpp's (the one home of 16-bit floats); narrowing rounds to
/// nearest, ties to even, as Eigen::bfloat16 and PyTorch do; NaN stays a quiet NaN with its sign.
/// The packet versions give the same bits as narrow_bf16 lane by lane (integer rounding, not
/// vcvtneps2bf16, which treats subnormal inputs as zero).

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <cstdint>
#include <cstring>

#include <Eigen/Core>

#include "../half.hpp"

namespace oft::detail::cpu {

/// bfloat16 bits -> float, exactly (oft::bf16_to_float, half.hpp).
inline float widen_bf16(std::uint16_t half) { return bf16_to_float(half); }

/// float -> bfloat16 bits, round to nearest even; NaN -> a quiet NaN with the same sign
/// (oft::float_to_bf16, half.hpp: the one scalar bf16 rounding).
inline std::uint16_t narrow_bf16(float value) { return float_to_bf16(value); }

/// Stores one packet of floats, rounded to bfloat16, at `out` (unaligned). Any float packet:
/// lane by lane through narrow_bf16; AVX2 and AVX-512 packets with integer SIMD instead.
template <class P>
inline void narrow_packet_bf16(Eigen::bfloat16* out, const P& value) {
  constexpr int lanes = Eigen::internal::unpacket_traits<P>::size;
  float values[lanes];
  Eigen::internal::pstoreu(values, value);
  std::uint16_t bits[lanes];
  for (int k = 0; k < lanes; ++k) bits[k] = narrow_bf16(values[k]);
  std::memcpy(out, bits, sizeof bits);
}
#if defined(EIGEN_VECTORIZE_AVX512)
inline void narrow_packet_bf16(Eigen::bfloat16* out, const __m512& value) {
  const __m512i word = _mm512_castps_si512(value);
  const __m512i high = _mm512_srli_epi32(word, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(high, _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7fff));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(word, bias), 16);
  const __m512i quiet_nan = _mm512_or_si512(high, _mm512_set1_epi32(0x0040));
  const __mmask16 nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
  const __m512i result = _mm512_mask_blend_epi32(nan, rounded, quiet_nan);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(result));
}
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
inline void narrow_packet_bf16(Eigen::bfloat16* out, const __m256& value) {
  const __m256i word = _mm256_castps_si256(value);
  const __m256i high = _mm256_srli_epi32(word, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(high, _mm256_set1_epi32(1)),
                                        _mm256_set1_epi32(0x7fff));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(word, bias), 16);
  const __m256i quiet_nan = _mm256_or_si256(high, _mm256_set1_epi32(0x0040));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(value, value, _CMP_UNORD_Q));
  const __m256i result = _mm256_blendv_epi8(rounded, quiet_nan, nan);
  // Every lane is below 2^16, so the unsigned saturating pack keeps it exactly.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(result),
                                          _mm256_extracti128_si256(result, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}
#endif

}  // namespace oft::detail::cpu

#pragma once
/// \file io/detail/half_bulk.hpp
/// Whole tensors of binary16 to float and back, for the model-file paths that convert every
/// element of a base weight (decoding it to merge, encoding the result): the conversions of
/// <oft/half.hpp>, eight at a time with F16C's vcvtph2ps / vcvtps2ph where the build has F16C
/// (every x86-64-v3 CPU), with the same bits. vcvtph2ps widens exactly (subnormals included;
/// signaling NaNs: see f16_to_floats); vcvtps2ph rounds to nearest even as its immediate says,
/// whatever MXCSR's rounding mode is, gives infinity past 65504 and quiets a NaN keeping its
/// payload's high bits, as float_to_f16 does (tests/io/test_half.cpp compares both on every
/// binary16 and on every rounding boundary). In a 5 GB SDXL checkpoint merge the scalar loops
/// were about 29% of the time (perf).

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../../detail/intrinsics.hpp"  // before <immintrin.h> and Eigen: see the file
#if defined(__F16C__)
#include <immintrin.h>  // where intrinsics.hpp did not (clang, newer GCC): include-guarded
#endif

#include "../../half.hpp"

namespace oft::io::detail {

inline void widen_scalar(const std::byte* from, std::size_t count, float* to) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, from + 2 * i, 2);
    to[i] = f16_to_float(bits);
  }
}

/// `count` binary16 numbers at `from` (any alignment) widened to floats at `to`.
inline void f16_to_floats(const std::byte* from, std::size_t count, float* to) noexcept {
  std::size_t i = 0;
#if defined(__F16C__)
  // vcvtph2ps quiets a signaling NaN (sets the quiet bit) where f16_to_float keeps every bit, so a
  // group of eight holding one (magnitude strictly between 0x7c00 and 0x7e00) goes the scalar way.
  const __m128i magnitude_mask = _mm_set1_epi16(0x7fff);
  const __m128i infinity = _mm_set1_epi16(0x7c00), quiet_nan = _mm_set1_epi16(0x7e00);
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 2 * i));
    const __m128i magnitude = _mm_and_si128(h, magnitude_mask);
    const __m128i signaling = _mm_and_si128(_mm_cmpgt_epi16(magnitude, infinity),
                                            _mm_cmplt_epi16(magnitude, quiet_nan));
    if (_mm_movemask_epi8(signaling) != 0) {
      widen_scalar(from + 2 * i, 8, to + i);
      continue;
    }
    _mm256_storeu_ps(to + i, _mm256_cvtph_ps(h));
  }
#endif
  widen_scalar(from + 2 * i, count - i, to + i);
}

/// `count` floats rounded to binary16 (nearest, ties to even) and written at `to` (any alignment).
inline void floats_to_f16(const float* from, std::size_t count, std::byte* to) noexcept {
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(from + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 2 * i), h);
  }
#endif
  for (; i < count; ++i) {
    const std::uint16_t bits = float_to_f16(from[i]);
    std::memcpy(to + 2 * i, &bits, 2);
  }
}

}  // namespace oft::io::detail

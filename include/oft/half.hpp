#pragma once
/// \file half.hpp
/// The one home of 16-bit float conversions: IEEE binary16 ("F16", fp16) and bfloat16 ("BF16") as
/// bits, to and from float. The bottom floor, standard library only, so that the core, both
/// backends (cpu/, and cuda/'s host side, which compiles without Eigen), quant/ and io/ all
/// convert the same way. The types oft::bfloat16 and oft::float16, and these conversions on
/// them, are half_types.hpp.
///
/// Widening to float is exact: every binary16 and bfloat16 value, subnormals, infinities and NaN
/// payloads included, is a float. Narrowing rounds to nearest, ties to even (IEEE 754's default,
/// what numpy's `astype(float16)`, ml_dtypes' `bfloat16`, Eigen::bfloat16 and PyTorch do);
/// overflow gives infinity; a NaN stays a NaN of the same sign, quieted, keeping its payload's
/// high bits. Plain integer code, so the results do not depend on the compiler, the instruction
/// set or the rounding mode. (cpu/bf16_bits.hpp rounds SIMD packets to the same bits.)

#include <cstdint>
#include <cstring>

namespace oft {

namespace detail {
inline std::uint32_t float_bits(float value) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline float bits_float(std::uint32_t bits) noexcept {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
}  // namespace detail

/// The float equal to the binary16 number with bits `h` (exact).
inline float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu)
    return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent == 0) {
    if (mantissa == 0) return detail::bits_float(sign);  // +-0
    // Subnormal: mantissa * 2^-24. Normalise so that the leading 1 becomes the implicit bit.
    std::uint32_t e = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    return detail::bits_float(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
  }
  return detail::bits_float(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

/// The float equal to the bfloat16 number with bits `b` (exact: bfloat16 is float's high half).
inline float bf16_to_float(std::uint16_t b) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(b) << 16);
}

/// `value` rounded to binary16, to nearest with ties to even.
inline std::uint16_t float_to_f16(float value) noexcept {
  const std::uint32_t f = detail::float_bits(value);
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t magnitude = f & 0x7fffffffu;
  if (magnitude > 0x7f800000u)  // NaN: quiet bit set, top 9 payload bits kept
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  if (magnitude >= 0x47800000u)  // >= 65536 (and inf): beyond the rounding range of 65504
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  const int exponent = static_cast<int>(magnitude >> 23) - 127;           // unbiased, float
  const std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;  // 24 bits
  if (exponent >= -14) {
    // Normal range: keep 11 significant bits, drop 13. A carry out of the mantissa moves into
    // the exponent field, and past the largest exponent it gives exactly the infinity encoding.
    std::uint32_t h =
        (static_cast<std::uint32_t>(exponent + 15) << 10) | ((magnitude >> 13) & 0x3ffu);
    const std::uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0)) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  // Subnormal (or zero) result: significand * 2^(exponent - 23) in units of 2^-24.
  const int shift = -exponent - 1;                          // >= 14
  if (shift > 24) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
  std::uint32_t h = significand >> shift;
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u) != 0)) ++h;  // 0x3ff + 1 = smallest normal: right
  return static_cast<std::uint16_t>(sign | h);
}

/// `value` rounded to bfloat16, to nearest with ties to even; a NaN becomes a quiet NaN with the
/// same sign and the high payload bits. The one bf16 rounding of oft's host code.
inline std::uint16_t float_to_bf16(float value) noexcept {
  const std::uint32_t f = detail::float_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((f >> 16) | 0x0040u);
  // Adding 0x7fff (+1 when the kept part is odd) carries into bit 16 exactly when the dropped
  // half is above the midpoint (or at it, with an odd kept part). Overflow lands on infinity.
  return static_cast<std::uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

/// `value` rounded to bfloat16 and widened back: the float a bfloat16 store would keep.
inline float round_to_bf16(float value) noexcept { return bf16_to_float(float_to_bf16(value)); }

}  // namespace oft

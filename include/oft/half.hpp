#pragma once
/// \file half.hpp
/// The one home of 16-bit floats: the types oft::bfloat16 and oft::float16 (Eigen's, so that an
/// Eigen matrix, a safetensors tensor read by oft::io and a kernel's activations are one type),
/// the IEEE binary16 ("F16", fp16) and bfloat16 ("BF16") bits of a value and back, and the scalar
/// conversions to and from float, which the core, the backends (cpu/, cuda/'s host side), quant/
/// and io/ all use.
///
/// Widening to float is exact: every binary16 and bfloat16 value, subnormals, infinities and NaN
/// payloads included, is a float. Narrowing rounds to nearest, ties to even (IEEE 754's default,
/// what numpy's `astype(float16)`, ml_dtypes' `bfloat16`, Eigen::bfloat16 and PyTorch do);
/// overflow gives infinity; a NaN stays a NaN of the same sign, quieted, keeping its payload's
/// high bits. Plain integer code, so the results do not depend on the compiler, the instruction
/// set or the rounding mode. (cpu/bf16_bits.hpp rounds SIMD packets to the same bits.)

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

namespace oft {

/// bfloat16: the high half of an IEEE binary32 (8 exponent bits, 8 bits of precision). The type
/// of bfloat16 activations on the CPU and of BF16 tensors in oft::io.
using bfloat16 = Eigen::bfloat16;
/// IEEE binary16 (fp16). The type of F16 tensors in oft::io.
using float16 = Eigen::half;

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16> &&
                  sizeof(float16) == 2 && std::is_trivially_copyable_v<float16>,
              "oft: Eigen's bfloat16 and half must be 2-byte, trivially copyable wrappers of "
              "their bits");

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

/// The 16 bits of a bfloat16 or binary16 value.
inline std::uint16_t bits_of(bfloat16 value) noexcept {
  std::uint16_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline std::uint16_t bits_of(float16 value) noexcept {
  std::uint16_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
/// The bfloat16 / binary16 value with these bits.
inline bfloat16 bfloat16_from_bits(std::uint16_t bits) noexcept {
  return bfloat16(Eigen::bfloat16_impl::raw_uint16_to_bfloat16(bits));
}
inline float16 float16_from_bits(std::uint16_t bits) noexcept {
  return float16(Eigen::half_impl::raw_uint16_to_half(bits));
}

/// Exact widening, and narrowing to nearest with ties to even, of the types (the functions above
/// on their bits, so the same on every compiler and ISA).
inline float to_float(bfloat16 value) noexcept { return bf16_to_float(bits_of(value)); }
inline float to_float(float16 value) noexcept { return f16_to_float(bits_of(value)); }
inline bfloat16 to_bfloat16(float value) noexcept { return bfloat16_from_bits(float_to_bf16(value)); }
inline float16 to_float16(float value) noexcept { return float16_from_bits(float_to_f16(value)); }

}  // namespace oft

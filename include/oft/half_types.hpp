#pragma once
/// \file half_types.hpp
/// oft's 16-bit float types: oft::bfloat16 and oft::float16 are Eigen's, so that an Eigen matrix,
/// a safetensors tensor read by oft::io (its BF16 / F16 elements) and the CPU kernels'
/// activations are one type; their bits, and half.hpp's conversions on them (the same bits on
/// every compiler and ISA).

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "half.hpp"

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

/// Exact widening, and narrowing to nearest with ties to even, of the types (half.hpp's functions
/// on their bits, so the same on every compiler and ISA).
inline float to_float(bfloat16 value) noexcept { return bf16_to_float(bits_of(value)); }
inline float to_float(float16 value) noexcept { return f16_to_float(bits_of(value)); }
inline bfloat16 to_bfloat16(float value) noexcept { return bfloat16_from_bits(float_to_bf16(value)); }
inline float16 to_float16(float value) noexcept { return float16_from_bits(float_to_f16(value)); }

}  // namespace oft

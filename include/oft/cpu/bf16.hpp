#pragma once
/// \file cpu/bf16.hpp
/// bfloat16 activations for the CPU backend: the row conversions that the panel copies use.
///
/// bfloat16 is the top half of an IEEE float (8 exponent bits, 7 stored mantissa bits, so a
/// precision of 8 bits and a unit roundoff of u = 2^-8). Widening is exact (a 16-bit shift);
/// narrowing rounds to nearest, ties to even, as Eigen::bfloat16 and PyTorch do (bf16_bits.hpp).
/// NaN stays NaN (quiet, sign kept); infinities and overflow to infinity follow IEEE rounding.
/// These are plain integer loops that compilers vectorize; no instruction beyond the build's
/// baseline ISA is required.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "../config.hpp"
#include "../half_types.hpp"
#include "bf16_bits.hpp"
#include "bf16_dot.hpp"
#include "gemm_tile.hpp"

namespace oft {

/// How a float operator computes with bfloat16 activations (docs/bf16.md).
enum class Bf16Arithmetic {
  /// Widen to float and run the float kernels: outputs are round_bf16 of the float path's,
  /// bit for bit. Every build has it.
  Float,
  /// `vdpbf16ps` on bfloat16 pairs (AVX512_BF16 builds only): Y = X + X (R - I) with R - I
  /// rounded to bfloat16, G = X^T dY with exact products and float sums. About twice the
  /// arithmetic rate; within the bound in docs/bf16.md, not bitwise the float path.
  DotProduct,
};

/// Whether this build has Bf16Arithmetic::DotProduct (AVX512_BF16, AVX512BW and AVX512VL).
inline constexpr bool kBf16DotProductAvailable = detail::cpu::kHasBf16Dot;

namespace detail::cpu {

static_assert(std::is_standard_layout_v<bfloat16>,
              "Eigen::bfloat16 must be a standard-layout wrapper of its bits");

/// The bits of a bfloat16 array (its only member is the 16-bit pattern).
inline const std::uint16_t* bits(const bfloat16* values) {
  return reinterpret_cast<const std::uint16_t*>(values);
}
inline std::uint16_t* bits(bfloat16* values) { return reinterpret_cast<std::uint16_t*>(values); }

/// to[0, n) = from[0, n) converted to To. The same-type case is a copy.
template <class From, class To>
inline void convert_row(const From* from, Index n, To* to) {
  if constexpr (std::is_same_v<From, To>) {
    std::copy(from, from + n, to);
  } else if constexpr (std::is_same_v<From, bfloat16> && std::is_same_v<To, float>) {
    const std::uint16_t* in = bits(from);
    for (Index k = 0; k < n; ++k) to[k] = widen_bf16(in[k]);
  } else {
    static_assert(std::is_same_v<From, float> && std::is_same_v<To, bfloat16>,
                  "activations convert between float and bfloat16 only");
    std::uint16_t* out = bits(to);
    for (Index k = 0; k < n; ++k) out[k] = narrow_bf16(from[k]);
  }
}

}  // namespace detail::cpu
}  // namespace oft

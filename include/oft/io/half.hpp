#pragma once
/// \file io/half.hpp
/// Conversions between 16-bit floats (IEEE binary16 "F16", bfloat16 "BF16") and float, for the
/// safetensors element types Float16 and BFloat16 (io/dtype.hpp). The scalar conversions live in
/// <oft/half.hpp> (the bottom floor, shared with cpu/ and quant/) and are named here as
/// oft::io::f16_to_float, bf16_to_float, float_to_f16 and float_to_bf16 as before: exact widening;
/// narrowing to nearest, ties to even, overflow to infinity, NaN kept as a quiet NaN.

#include <cstdint>

#include "../half.hpp"
#include "dtype.hpp"

namespace oft::io {

using oft::bf16_to_float;
using oft::f16_to_float;
using oft::float_to_bf16;
using oft::float_to_f16;

/// Exact widening of a viewed element.
inline float to_float(Float16 h) noexcept { return f16_to_float(h.bits); }
inline float to_float(BFloat16 b) noexcept { return bf16_to_float(b.bits); }
/// Rounding (to nearest, ties to even) narrowing.
inline Float16 to_float16(float value) noexcept { return Float16{float_to_f16(value)}; }
inline BFloat16 to_bfloat16(float value) noexcept { return BFloat16{float_to_bf16(value)}; }

}  // namespace oft::io

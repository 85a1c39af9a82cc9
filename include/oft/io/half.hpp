#pragma once
/// \file io/half.hpp
/// Conversions between 16-bit floats (IEEE binary16 "F16", bfloat16 "BF16") and float, for the
/// safetensors element types oft::float16 and oft::bfloat16 (io/dtype.hpp). Everything lives in
/// <oft/half.hpp> (the conversions, shared with cpu/ and quant/) and <oft/half_types.hpp> (the
/// types), and is named here in oft::io as well: exact widening; narrowing to nearest, ties to
/// even, overflow to infinity, NaN kept as a quiet NaN.

#include "../half_types.hpp"
#include "dtype.hpp"

namespace oft::io {

using oft::bf16_to_float;
using oft::f16_to_float;
using oft::float_to_bf16;
using oft::float_to_f16;
using oft::to_bfloat16;
using oft::to_float;
using oft::to_float16;

}  // namespace oft::io

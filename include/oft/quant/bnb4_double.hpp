#pragma once
/// \file quant/bnb4_double.hpp
/// bitsandbytes' double quantization of the NF4/FP4 absmax (`compress_statistics=True`, the "NF4
/// with double quantization" of QLoRA and the OFTv2 paper), writing and reading, bit for bit with
/// bitsandbytes 0.50.2 on the CPU (tests/quant/test_bnb4_double.cpp):
///
///   offset  = mean(absmax)                        float32
///   nested  = quantize_blockwise(absmax - offset)  8-bit dynamic code, blocks of 256
///                                                  (quant/bnb_dynamic.hpp)
///   absmax' = code[q] * nested_absmax[i / 256] + offset   (the product rounded first)
///
/// A checkpoint stores q as `weight.absmax` (U8), nested_absmax, the code (`nested_quant_map`)
/// and the offset (`nested_offset` in the quant_state JSON).
///
/// The offset is torch's float32 mean, whose last bit depends on torch's summation order (its
/// vector width, hence the CPU). oft computes it as the float32 division of the sum rounded from
/// double to float32; to reproduce a given bitsandbytes run bit for bit, pass that run's offset.
/// With the same offset, q and nested_absmax equal bitsandbytes' bit for bit.
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../index.hpp"
#include "bnb4.hpp"
#include "bnb_dynamic.hpp"

namespace oft::quant {

/// The doubly quantized absmax of a 4-bit tensor.
struct Bnb4NestedAbsmax {
  std::vector<std::uint8_t> qabsmax;  ///< one code index per 4-bit block
  std::vector<float> nested_absmax;   ///< one float32 scale per `nested_blocksize` indices
  std::array<float, 256> code = kBnbDynamicCode;
  float offset = 0.0f;
  Index nested_blocksize = 256;
};

/// mean(absmax) as oft computes the offset: the sum in double, rounded to float32, divided in
/// float32 (torch's mean is a float32 sum divided in float32; see the file comment).
inline float bnb4_absmax_offset(const std::vector<float>& absmax) {
  oft::detail::require(!absmax.empty(), "bnb4_absmax_offset: no absmax values");
  double sum = 0.0;
  for (float a : absmax) sum += a;
  return static_cast<float>(sum) / static_cast<float>(absmax.size());
}

/// Double-quantizes `absmax` as quantize_4bit(compress_statistics=True) does. `offset`: the
/// value to subtract (bitsandbytes' own, for bit-for-bit parity with a given run); by default
/// bnb4_absmax_offset(absmax). `nested_blocksize`: bitsandbytes always uses 256.
inline Bnb4NestedAbsmax double_quantize_absmax(const std::vector<float>& absmax,
                                               std::optional<float> offset = std::nullopt,
                                               Index nested_blocksize = 256) {
  oft::detail::require(!absmax.empty(), "double_quantize_absmax: no absmax values");
  Bnb4NestedAbsmax out;
  out.nested_blocksize = nested_blocksize;
  out.offset = offset ? *offset : bnb4_absmax_offset(absmax);
  oft::detail::require_domain(std::isfinite(out.offset), "double_quantize_absmax: offset ",
                              out.offset, " is not finite");
  std::vector<float> centred(absmax.size());
  for (std::size_t i = 0; i < absmax.size(); ++i) centred[i] = absmax[i] - out.offset;
  BnbBlockwise8 q = quantize_blockwise_dynamic(centred.data(), static_cast<Index>(centred.size()),
                                               out.nested_blocksize);
  out.qabsmax = std::move(q.codes);
  out.nested_absmax = std::move(q.absmax);
  return out;
}

/// The float32 absmax a doubly quantized tensor dequantizes with (bitsandbytes' order).
inline std::vector<float> dequantize_absmax(const Bnb4NestedAbsmax& nested) {
  return dequantize_bnb4_nested_absmax(
      nested.qabsmax.data(), static_cast<Index>(nested.qabsmax.size()), nested.nested_absmax.data(),
      static_cast<Index>(nested.nested_absmax.size()), nested.code.data(), nested.offset,
      nested.nested_blocksize);
}

}  // namespace oft::quant

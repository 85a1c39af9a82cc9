#pragma once
/// \file quant/int8.hpp
/// bitsandbytes' LLM.int8 weight format (Dettmers et al., 2022), bit for bit: one int8 row per
/// output feature and one float32 scale per row (QOFT, SPEC section 9). Facts from bitsandbytes
/// 0.50.2 (backends/default/ops.py `int8_vectorwise_quant`, _ops.py `int8_vectorwise_dequant`,
/// nn/modules.py `Int8Params`), checked against it by tests/quant/test_int8.cpp on fixtures made by
/// tests/quant/make_int8_fixtures.py:
///
/// - SCB[row] = max |W[row, :]| in float32 (a Linear8bitLt quantizes its weight after casting it
///   to float16, so SCB is then an fp16 value widened).
/// - CB[row, j] = round(W[row, j] * (127 / SCB[row])): the reciprocal scale first, in float32,
///   then the product, rounded half to even (torch.round).
/// - W = CB * SCB * 7.874015718698502e-3 (bitsandbytes multiplies by 1/127 as a float32
///   constant, and in this order; a division by 127 gives other bits).
/// - Checkpoint keys of a Linear8bitLt: `weight` (I8, [out, in]) and `SCB` (F32, [out]).
/// - An all-zero row has SCB = 0; bitsandbytes then computes 0 * inf = NaN before the int8 cast
///   (0 on x86). oft stores 0 for it, which is what bitsandbytes' cast gives there.
/// - The outlier threshold of LLM.int8's matmul (mixed fp16 columns) is a property of its forward
///   pass, not of the stored weight; it plays no part here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../errors.hpp"
#include "../index.hpp"

namespace oft::quant {

/// 1/127 as bitsandbytes writes it (a Python float, used as float32 in the product).
inline constexpr float kInt8InverseScale = 7.874015718698502e-3f;

/// An LLM.int8 weight: `rows` x `cols` int8 values, row-major, and one scale per row.
struct Int8Tensor {
  Index rows = 0;
  Index cols = 0;
  std::vector<std::int8_t> values;  ///< CB, rows * cols
  std::vector<float> scales;        ///< SCB, rows

  /// W[row, j], exactly as bitsandbytes' int8_vectorwise_dequant.
  float dequantize(Index row, Index j) const {
    // Two products, each rounded, in bitsandbytes' order ((q * SCB) * 1/127 is not q * (SCB/127)).
    return static_cast<float>(values[static_cast<std::size_t>(row * cols + j)]) *
           scales[static_cast<std::size_t>(row)] * kInt8InverseScale;
  }
};

/// Throws std::invalid_argument naming the sizes when `t` is inconsistent.
inline void check_int8(const Int8Tensor& t, const char* where) {
  oft::detail::require(t.rows >= 0 && t.cols >= 0, where, ": negative shape ", t.rows, "x", t.cols);
  oft::detail::require(static_cast<Index>(t.values.size()) == t.rows * t.cols, where, ": ",
                       t.values.size(), " int8 values for a ", t.rows, "x", t.cols, " weight");
  oft::detail::require(static_cast<Index>(t.scales.size()) == t.rows, where, ": SCB has ",
                       t.scales.size(), " values for ", t.rows, " rows");
}

/// Quantizes a row-major `rows` x `cols` float32 weight as bitsandbytes' int8_vectorwise_quant
/// (threshold 0). Throws std::domain_error for a non-finite value.
inline Int8Tensor quantize_int8(const float* weight, Index rows, Index cols) {
  oft::detail::require(rows >= 0 && cols >= 0, "quantize_int8: negative shape ", rows, "x", cols);
  oft::detail::require(weight != nullptr || rows * cols == 0, "quantize_int8: null weight");
  for (Index i = 0; i < rows * cols; ++i)
    oft::detail::require_domain(std::isfinite(weight[i]), "quantize_int8: value ", i, " (row ",
                                i / cols, ") is not finite (", weight[i], ")");
  Int8Tensor out;
  out.rows = rows;
  out.cols = cols;
  out.values.resize(static_cast<std::size_t>(rows * cols));
  out.scales.resize(static_cast<std::size_t>(rows));
  for (Index r = 0; r < rows; ++r) {
    const float* row = weight + r * cols;
    float absmax = 0.0f;
    for (Index j = 0; j < cols; ++j) absmax = std::max(absmax, std::fabs(row[j]));
    out.scales[static_cast<std::size_t>(r)] = absmax;
    std::int8_t* q = out.values.data() + r * cols;
    if (absmax == 0.0f) {
      for (Index j = 0; j < cols; ++j) q[j] = 0;
      continue;
    }
    const float scale = 127.0f / absmax;
    // |row[j] * scale| <= 127 up to one rounding of the product, so the cast stays in range.
    for (Index j = 0; j < cols; ++j)
      q[j] = static_cast<std::int8_t>(std::nearbyint(row[j] * scale));
  }
  return out;
}

/// The whole dequantized weight, row-major (the reference for the fused layer).
inline std::vector<float> dequantize_int8(const Int8Tensor& t) {
  check_int8(t, "dequantize_int8");
  std::vector<float> out(static_cast<std::size_t>(t.rows * t.cols));
  for (Index r = 0; r < t.rows; ++r)
    for (Index j = 0; j < t.cols; ++j)
      out[static_cast<std::size_t>(r * t.cols + j)] = t.dequantize(r, j);
  return out;
}

}  // namespace oft::quant

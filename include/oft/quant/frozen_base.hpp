#pragma once
/// \file quant/frozen_base.hpp
/// Frozen base weights W (n_out x d, nn.Linear layout) in the formats a QOFT layer
/// (quant/qoft_linear.hpp) runs on. Each one dequantizes any rectangle of W into float32 on
/// demand, so the fused dequantize-GEMM (quant/fused_gemm.hpp) holds the quantized bytes plus one
/// panel, never the whole dequantized W. The values are those of the format's own dequantizer,
/// bit for bit (bitsandbytes' for NF4/FP4 and LLM.int8).
///
/// The interface every base has (the FrozenBase concept):
///   Index rows() const, cols() const             n_out, d
///   template <class Out>                         Out: float, or double (the float values widened)
///   void dequantize(Index row0, Index nrows, Index col0, Index ncols, Out* out, Index ld) const
///                                                W[row0 + i, col0 + j] -> out[i * ld + j]
///   std::size_t bytes() const                    memory the weight keeps (values and scales)
///   const char* format() const                   "f32", "nf4", "fp4", "int8", "gptq", "awq"
///
/// GPTQ and AWQ int4 weights: Int4GroupBase (quant/int4_base.hpp).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../half.hpp"
#include "../index.hpp"
#include "bnb4.hpp"
#include "bnb4_panel.hpp"
#include "int8.hpp"

namespace oft::quant {

/// The dtype a format dequantizes to. bitsandbytes' dequantize_4bit writes code * absmax (a
/// float32 product) into a tensor of the quant_state's dtype: a float16 or bfloat16 model's base
/// is that product rounded to nearest even, which the layer then multiplies by.
enum class DequantDtype { F32, F16, BF16 };

inline const char* name(DequantDtype dtype) {
  return dtype == DequantDtype::F32   ? "float32"
         : dtype == DequantDtype::F16 ? "float16"
                                      : "bfloat16";
}

namespace detail {
inline void round_to(DequantDtype dtype, float* values, Index count) {
  if (dtype == DequantDtype::F16) {
    for (Index i = 0; i < count; ++i) values[i] = f16_to_float(float_to_f16(values[i]));
  } else if (dtype == DequantDtype::BF16) {
    for (Index i = 0; i < count; ++i) values[i] = bf16_to_float(float_to_bf16(values[i]));
  }
}
}  // namespace detail

/// A float32 base (the dense reference: the same fused path over unquantized values).
class DenseFloatBase {
 public:
  DenseFloatBase(const float* weight, Index rows, Index cols) : rows_(rows), cols_(cols) {
    oft::detail::require(rows >= 1 && cols >= 1, "DenseFloatBase: shape ", rows, "x", cols,
                         " is empty");
    oft::detail::require(weight != nullptr, "DenseFloatBase: null weight");
    values_.assign(weight, weight + rows * cols);
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  const char* format() const { return "f32"; }
  std::size_t bytes() const { return values_.size() * sizeof(float); }
  template <class Out>
  void dequantize(Index row0, Index nrows, Index col0, Index ncols, Out* out, Index ld) const {
    for (Index i = 0; i < nrows; ++i) {
      const float* src = values_.data() + (row0 + i) * cols_ + col0;
      std::copy(src, src + ncols, out + i * ld);
    }
  }

 private:
  Index rows_, cols_;
  std::vector<float> values_;
};

/// bitsandbytes NF4 or FP4 (blocks over the flattened row-major weight; see bnb4.hpp). With
/// double quantization, pass the absmax read back by dequantize_bnb4_nested_absmax: the base then
/// keeps it as float32 (4 bytes per block instead of ~1), which bytes() counts. `dtype`: what the
/// values are rounded to (the quant_state's dtype; float32 leaves code * absmax as it is).
class Bnb4Base {
 public:
  Bnb4Base(Bnb4Tensor tensor, Index rows, Index cols, DequantDtype dtype = DequantDtype::F32)
      : rows_(rows), cols_(cols), dtype_(dtype), t_(std::move(tensor)) {
    oft::detail::require(rows >= 1 && cols >= 1, "Bnb4Base: shape ", rows, "x", cols, " is empty");
    oft::detail::require(t_.numel == rows * cols, "Bnb4Base: the ", name(t_.type), " tensor holds ",
                         t_.numel, " values, a ", rows, "x", cols, " weight needs ", rows * cols);
    detail::check_blocksize(t_.blocksize, "Bnb4Base");
    oft::detail::require(static_cast<Index>(t_.packed.size()) == bnb4_packed_bytes(t_.numel),
                         "Bnb4Base: ", t_.packed.size(), " packed bytes for ", t_.numel,
                         " values (expected ", bnb4_packed_bytes(t_.numel), ")");
    oft::detail::require(
        static_cast<Index>(t_.absmax.size()) == bnb4_blocks(t_.numel, t_.blocksize),
        "Bnb4Base: absmax has ", t_.absmax.size(), " values for ", t_.numel,
        " values in blocks of ", t_.blocksize, " (expected ", bnb4_blocks(t_.numel, t_.blocksize),
        ")");
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  const char* format() const { return name(t_.type); }
  const Bnb4Tensor& tensor() const { return t_; }
  DequantDtype dtype() const { return dtype_; }
  std::size_t bytes() const { return t_.packed.size() + t_.absmax.size() * sizeof(float); }

  template <class Out>
  void dequantize(Index row0, Index nrows, Index col0, Index ncols, Out* out, Index ld) const {
    const std::array<float, 16>& code = bnb4_code(t_.type);
    for (Index i = 0; i < nrows; ++i) {
      // The row's segment of the flattened weight, cut where a quantization block ends.
      Index e = (row0 + i) * cols_ + col0;
      const Index end = e + ncols;
      Out* dst = out + i * ld;
      while (e < end) {
        const Index block = e / t_.blocksize;
        const Index run = std::min(end, (block + 1) * t_.blocksize) - e;
        const float absmax = t_.absmax[static_cast<std::size_t>(block)];
        if constexpr (std::is_same_v<Out, float>) {
          detail::dequantize_run(t_.packed.data(), e, run, code, absmax, dst);
          detail::round_to(dtype_, dst, run);
        } else {  // the float values, widened (double layers: references and FD checks)
          float chunk[256];
          for (Index done = 0; done < run; done += 256) {
            const Index n = std::min<Index>(256, run - done);
            detail::dequantize_run(t_.packed.data(), e + done, n, code, absmax, chunk);
            detail::round_to(dtype_, chunk, n);
            std::copy(chunk, chunk + n, dst + done);
          }
        }
        e += run;
        dst += run;
      }
    }
  }

 private:
  Index rows_, cols_;
  DequantDtype dtype_;
  Bnb4Tensor t_;
};

/// bitsandbytes LLM.int8 (int8 rows with one float32 scale each; see int8.hpp).
class Int8Base {
 public:
  explicit Int8Base(Int8Tensor tensor) : t_(std::move(tensor)) {
    check_int8(t_, "Int8Base");
    oft::detail::require(t_.rows >= 1 && t_.cols >= 1, "Int8Base: shape ", t_.rows, "x", t_.cols,
                         " is empty");
  }
  Index rows() const { return t_.rows; }
  Index cols() const { return t_.cols; }
  const char* format() const { return "int8"; }
  const Int8Tensor& tensor() const { return t_; }
  std::size_t bytes() const { return t_.values.size() + t_.scales.size() * sizeof(float); }

  template <class Out>
  void dequantize(Index row0, Index nrows, Index col0, Index ncols, Out* out, Index ld) const {
    for (Index i = 0; i < nrows; ++i) {
      const std::int8_t* q = t_.values.data() + (row0 + i) * t_.cols + col0;
      const float scale = t_.scales[static_cast<std::size_t>(row0 + i)];
      Out* dst = out + i * ld;
      // Two products in bitsandbytes' order (q * SCB, then * 1/127); they vectorize as they are.
      for (Index j = 0; j < ncols; ++j)
        dst[j] = static_cast<Out>(static_cast<float>(q[j]) * scale * kInt8InverseScale);
    }
  }

 private:
  Int8Tensor t_;
};

/// The whole dequantized weight, row-major (for references and tests; the layer never forms it).
template <class Out = float, class Base>
std::vector<Out> dequantize_all(const Base& base) {
  std::vector<Out> out(static_cast<std::size_t>(base.rows() * base.cols()));
  base.dequantize(0, base.rows(), 0, base.cols(), out.data(), base.cols());
  return out;
}

}  // namespace oft::quant

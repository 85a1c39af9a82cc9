#pragma once
/// \file quant/merge.hpp
/// Merging an adapter into a quantized frozen base: dequantize, apply the adapter in float32,
/// requantize to the base's own format (same NF4/FP4 type and blocksize; LLM.int8 rows). The
/// result comes with the error report a user needs before shipping it:
///
///   QOFT   W' = Dequant(Wq) R^T          (merge_rotation; a rotation keeps each row's norm)
///   QLoRA  W' = Dequant(Wq) + s B A      (merge_lora, the baseline)
///
/// MergeReport: how far the requantized merge is from the float merge (the error the merge adds)
/// and how far the float merge moved from the base (the adapter's own change), max and RMS over
/// all values, and the change of the largest |w| (the range a format's scales must cover).
///
/// For a merge without requantization ("to a higher format"), merged_weight() returns the float
/// merge itself. PEFT <= 0.20 got this wrong for bitsandbytes bases (it stored the transposed
/// base; see docs/quant.md and tests/quant/check_peft_quantized_merge.py); PEFT >= 0.21
/// dequantizes, rotates and requantizes as here.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../block_orthogonal.hpp"
#include "frozen_base.hpp"

namespace oft::quant {

struct MergeReport {
  Index values = 0;
  double max_error = 0, rms_error = 0;        ///< |requantized merge - float merge|
  double max_change = 0, rms_change = 0;      ///< |float merge - dequantized base|
  double base_absmax = 0, merged_absmax = 0;  ///< max |w| before and after (float merge)
};

namespace detail {

inline MergeReport measure(const std::vector<float>& base, const std::vector<float>& merged,
                           const std::vector<float>& requantized) {
  MergeReport r;
  r.values = static_cast<Index>(base.size());
  double sum_error = 0, sum_change = 0;
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double error = std::fabs(double(requantized[i]) - double(merged[i]));
    const double change = std::fabs(double(merged[i]) - double(base[i]));
    r.max_error = std::max(r.max_error, error);
    r.max_change = std::max(r.max_change, change);
    sum_error += error * error;
    sum_change += change * change;
    r.base_absmax = std::max(r.base_absmax, std::fabs(double(base[i])));
    r.merged_absmax = std::max(r.merged_absmax, std::fabs(double(merged[i])));
  }
  if (r.values > 0) {
    r.rms_error = std::sqrt(sum_error / double(r.values));
    r.rms_change = std::sqrt(sum_change / double(r.values));
  }
  return r;
}

/// The same format and settings as `like`, over new float values.
inline Bnb4Base requantize_like(const Bnb4Base& like, const std::vector<float>& w) {
  return Bnb4Base(quantize_bnb4(w.data(), like.rows() * like.cols(), like.tensor().blocksize,
                                like.tensor().type),
                  like.rows(), like.cols(), like.dtype());
}
inline Int8Base requantize_like(const Int8Base& like, const std::vector<float>& w) {
  return Int8Base(quantize_int8(w.data(), like.rows(), like.cols()));
}
inline DenseFloatBase requantize_like(const DenseFloatBase& like, const std::vector<float>& w) {
  return DenseFloatBase(w.data(), like.rows(), like.cols());
}

template <class Base>
Base requantize(const Base& base, const std::vector<float>& original,
                const std::vector<float>& merged, MergeReport* report) {
  Base out = requantize_like(base, merged);
  if (report != nullptr) *report = measure(original, merged, dequantize_all(out));
  return out;
}

}  // namespace detail

/// W' = Dequant(base) R^T in float32 (n_out x d, row-major): the float merge.
template <class Base, class Parameterization>
std::vector<float> merged_weight(const Base& base,
                                 const BlockOrthogonal<float, Parameterization, cpu>& rotation) {
  oft::detail::require(rotation.features() == base.cols(),
                       "merge: the rotation has d=", rotation.features(), ", the ", base.format(),
                       " base is ", base.rows(), "x", base.cols());
  std::vector<float> w = dequantize_all(base);
  std::vector<float> out(w.size());
  rotation.apply_transposed(ConstMatrixView<float>(w.data(), base.rows(), base.cols()),
                            MatrixView<float>(out.data(), base.rows(), base.cols()));
  return out;
}

/// The rotation merged into the base and requantized in the base's format. Throws
/// std::invalid_argument when R's d is not the base's, std::domain_error when the merge is not
/// finite. `report` (optional) receives the errors.
template <class Base, class Parameterization>
Base merge_rotation(const Base& base, const BlockOrthogonal<float, Parameterization, cpu>& rotation,
                    MergeReport* report = nullptr) {
  const std::vector<float> merged = merged_weight(base, rotation);
  return detail::requantize(base, dequantize_all(base), merged, report);
}

/// W + scaling * B A (A: r x d, B: n_out x r) requantized in the base's format (QLoRA's merge).
template <class Base>
Base merge_lora(const Base& base, const RowMatrix<float>& lora_a, const RowMatrix<float>& lora_b,
                float scaling, MergeReport* report = nullptr) {
  oft::detail::require(lora_a.cols() == base.cols() && lora_b.rows() == base.rows() &&
                           lora_a.rows() == lora_b.cols(),
                       "merge_lora: A is ", lora_a.rows(), "x", lora_a.cols(), " and B ",
                       lora_b.rows(), "x", lora_b.cols(), ", the ", base.format(), " base is ",
                       base.rows(), "x", base.cols());
  const std::vector<float> original = dequantize_all(base);
  std::vector<float> merged = original;
  Eigen::Map<RowMatrix<float>>(merged.data(), base.rows(), base.cols()).noalias() +=
      scaling * (lora_b * lora_a);
  return detail::requantize(base, original, merged, report);
}

}  // namespace oft::quant

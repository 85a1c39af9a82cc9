// Merging into quantized bases (quant/merge.hpp): dequantize -> apply the adapter in float32 ->
// requantize in the base's format.
//  - Each requantized value is within half a code step of the float merge: for NF4/FP4 half the
//    widest gap of the code times its block's absmax, for LLM.int8 half of SCB / 127 (plus one
//    float32 rounding of the product); the report's maxima are the measured ones.
//  - The merged base, run with no adapter, gives the adapter layer's output (QoftLinear over the
//    original base) within the requantization error: the rotation is kept, and the layer keeps
//    its [n_out, d] shape (PEFT <= 0.20 stored the transposed base instead; docs/quant.md).
//  - The float32 "higher format" equals OftLinear::merged() within rounding.
//  - The QLoRA baseline's merge W + s B A, with the same bounds.
#include <gtest/gtest.h>

#include <oft/cayley_neumann.hpp>
#include <oft/linear.hpp>
#include <oft/quant/merge.hpp>
#include <oft/quant/qoft_linear.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft::quant::Bnb4Base;
using oft::quant::Bnb4Type;
using oft::quant::DenseFloatBase;
using oft::quant::Int8Base;
using oft_test::Rng;
using oft_test::RowMat;
using Rotation = oft::BlockOrthogonal<float, oft::CayleyNeumann>;

constexpr Index kOutputs = 48, kFeatures = 64, kBlock = 16;

std::vector<float> random_weight(Rng& rng) {
  std::vector<float> w(static_cast<std::size_t>(kOutputs * kFeatures));
  for (float& v : w) v = 0.1f * static_cast<float>(rng.uniform());
  return w;
}

Rotation random_rotation(Rng& rng) {
  Rotation r(oft::BlockSpec::from_features(kFeatures, kBlock), oft::CayleyNeumann{3});
  r.set_generators(oft_test::random_generators_with_rho<float>(kFeatures / kBlock, kBlock, 0.5, rng).view());
  return r;
}

/// Half the widest gap between neighbouring values of a 4-bit code (scaled by absmax: the
/// largest rounding error of one value).
double half_widest_gap(Bnb4Type type) {
  std::vector<float> code(oft::quant::bnb4_code(type).begin(), oft::quant::bnb4_code(type).end());
  std::sort(code.begin(), code.end());
  double gap = 0;
  for (std::size_t i = 1; i < code.size(); ++i) gap = std::max(gap, double(code[i]) - double(code[i - 1]));
  return gap / 2;
}

/// Every value of `requantized` within its format's half step of `merged`; returns the max error.
double check_within_half_step(const Bnb4Base& q, const std::vector<float>& merged) {
  const std::vector<float> back = oft::quant::dequantize_all(q);
  const double half = half_widest_gap(q.tensor().type);
  double max_error = 0;
  for (std::size_t i = 0; i < merged.size(); ++i) {
    const double absmax = q.tensor().absmax[i / static_cast<std::size_t>(q.tensor().blocksize)];
    const double error = std::fabs(double(back[i]) - double(merged[i]));
    EXPECT_LE(error, half * absmax * (1 + 4 * oft_test::eps<float>())) << "value " << i;
    max_error = std::max(max_error, error);
  }
  return max_error;
}
double check_within_half_step(const Int8Base& q, const std::vector<float>& merged) {
  const std::vector<float> back = oft::quant::dequantize_all(q);
  double max_error = 0;
  for (std::size_t i = 0; i < merged.size(); ++i) {
    const double scb = q.tensor().scales[i / static_cast<std::size_t>(q.cols())];
    const double error = std::fabs(double(back[i]) - double(merged[i]));
    // half a step, plus the float32 roundings of q * (127 / SCB) and of the dequantization
    EXPECT_LE(error, (0.5 / 127.0) * scb + 4 * oft_test::eps<float>() * scb) << "value " << i;
    max_error = std::max(max_error, error);
  }
  return max_error;
}

template <class Base>
void check_rotation_merge(const Base& base, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where);
  const Rotation rotation = random_rotation(rng);
  oft::quant::MergeReport report;
  const Base merged = oft::quant::merge_rotation(base, rotation, &report);
  ASSERT_EQ(merged.rows(), kOutputs);  // the layer's shape, not the transposed one
  ASSERT_EQ(merged.cols(), kFeatures);
  const std::vector<float> float_merge = oft::quant::merged_weight(base, rotation);
  const double max_error = check_within_half_step(merged, float_merge);
  EXPECT_EQ(report.values, kOutputs * kFeatures);
  EXPECT_DOUBLE_EQ(report.max_error, max_error);
  EXPECT_GT(report.rms_error, 0.0);
  EXPECT_LE(report.rms_error, report.max_error);
  // The adapter really moved the weight, by more than the requantization adds.
  EXPECT_GT(report.rms_change, 2.0 * report.rms_error);

  // Run without an adapter, the merged base gives the adapter layer's output: Z = X W'^T against
  // Z = (X R) W^T, within |X| times the requantization error per value (plus float rounding).
  const Index n = 5;
  const RowMat<float> x = oft_test::random_matrix<float>(n, kFeatures, rng);
  oft::quant::QoftLinear<float, oft::CayleyNeumann, Base> with_adapter(base, nullptr, kBlock);
  with_adapter.rotation() = rotation;
  oft::quant::QoftLinear<float, oft::CayleyNeumann, Base> merged_layer(merged, nullptr, kBlock);  // theta = 0: R = I
  RowMat<float> z_adapter(n, kOutputs), z_merged(n, kOutputs);
  oft::Workspace<float> ws;
  with_adapter.forward(oft::view(x), oft::view(z_adapter), ws);
  merged_layer.forward(oft::view(x), oft::view(z_merged), ws);
  const double bound = x.cwiseAbs().rowwise().sum().maxCoeff() * (report.max_error + 64 * oft_test::eps<float>());
  EXPECT_LE((z_adapter - z_merged).cwiseAbs().maxCoeff(), bound);
}

TEST(QuantizedMerge, RotationIsKeptWithinHalfACodeStep) {
  Rng rng(21);
  const std::vector<float> w = random_weight(rng);
  for (Index blocksize : {32, 64, 4096}) {
    check_rotation_merge(Bnb4Base(oft::quant::quantize_bnb4(w.data(), kOutputs * kFeatures, blocksize, Bnb4Type::NF4),
                                  kOutputs, kFeatures),
                         rng, "nf4 bs" + std::to_string(blocksize));
    check_rotation_merge(Bnb4Base(oft::quant::quantize_bnb4(w.data(), kOutputs * kFeatures, blocksize, Bnb4Type::FP4),
                                  kOutputs, kFeatures),
                         rng, "fp4 bs" + std::to_string(blocksize));
  }
  check_rotation_merge(Int8Base(oft::quant::quantize_int8(w.data(), kOutputs, kFeatures)), rng, "int8");
}

TEST(QuantizedMerge, MergedKeepsTheFormatSettings) {
  Rng rng(22);
  const std::vector<float> w = random_weight(rng);
  const Bnb4Base fp4(oft::quant::quantize_bnb4(w.data(), kOutputs * kFeatures, 128, Bnb4Type::FP4), kOutputs, kFeatures);
  const Bnb4Base merged = oft::quant::merge_rotation(fp4, random_rotation(rng));
  EXPECT_EQ(merged.tensor().type, Bnb4Type::FP4);
  EXPECT_EQ(merged.tensor().blocksize, 128);
  EXPECT_EQ(merged.bytes(), fp4.bytes());
}

TEST(QuantizedMerge, Float32MergeEqualsOftLinearMerged) {
  Rng rng(23);
  const std::vector<float> w = random_weight(rng);
  const Rotation rotation = random_rotation(rng);
  const DenseFloatBase dense(w.data(), kOutputs, kFeatures);
  const DenseFloatBase merged = oft::quant::merge_rotation(dense, rotation);
  oft::OftLinear<float, oft::CayleyNeumann> layer(
      oft::ConstMatrixView<float>(w.data(), kOutputs, kFeatures), nullptr, kBlock, false, oft::CayleyNeumann{3});
  layer.rotation() = rotation;
  const RowMat<float> reference = layer.merged();
  const std::vector<float> ours = oft::quant::dequantize_all(merged);
  // Both are length-b dot products of the same rows; |R| entries <= 1.
  const double bound = 2 * oft_test::gamma<float>(kBlock) * kBlock * 0.1;
  for (Index i = 0; i < kOutputs; ++i)
    for (Index j = 0; j < kFeatures; ++j)
      EXPECT_NEAR(ours[static_cast<std::size_t>(i * kFeatures + j)], reference(i, j), bound);
}

TEST(QuantizedMerge, LoraMergeWithinHalfACodeStep) {
  Rng rng(24);
  const std::vector<float> w = random_weight(rng);
  const RowMat<float> a = oft_test::random_matrix<float>(4, kFeatures, rng) * 0.1f;
  const RowMat<float> b = oft_test::random_matrix<float>(kOutputs, 4, rng) * 0.1f;
  std::vector<float> float_merge = w;
  for (Index i = 0; i < kOutputs; ++i)
    for (Index j = 0; j < kFeatures; ++j)
      float_merge[static_cast<std::size_t>(i * kFeatures + j)] += 2.0f * (b.row(i) * a.col(j)).value();
  const Int8Base int8(oft::quant::quantize_int8(w.data(), kOutputs, kFeatures));
  const Bnb4Base nf4(oft::quant::quantize_bnb4(w.data(), kOutputs * kFeatures, 64, Bnb4Type::NF4), kOutputs, kFeatures);
  oft::quant::MergeReport report;
  // The float merges start from the dequantized base, not from w.
  const auto reference = [&](const auto& base) {
    std::vector<float> m = oft::quant::dequantize_all(base);
    for (Index i = 0; i < kOutputs; ++i)
      for (Index j = 0; j < kFeatures; ++j)
        m[static_cast<std::size_t>(i * kFeatures + j)] += 2.0f * (b.row(i) * a.col(j)).value();
    return m;
  };
  const Int8Base merged8 = oft::quant::merge_lora(int8, a, b, 2.0f, &report);
  EXPECT_NEAR(check_within_half_step(merged8, reference(int8)), report.max_error,
              8 * oft_test::gamma<float>(4) * (report.merged_absmax + 1e-3));
  const Bnb4Base merged4 = oft::quant::merge_lora(nf4, a, b, 2.0f, &report);
  EXPECT_NEAR(check_within_half_step(merged4, reference(nf4)), report.max_error,
              8 * oft_test::gamma<float>(4) * (report.merged_absmax + 1e-3));
  EXPECT_GT(report.max_change, 0.0);
}

TEST(QuantizedMerge, MismatchedAdaptersAreRefused) {
  Rng rng(25);
  const std::vector<float> w = random_weight(rng);
  const Int8Base int8(oft::quant::quantize_int8(w.data(), kOutputs, kFeatures));
  Rotation wide(oft::BlockSpec::from_features(2 * kFeatures, kBlock), oft::CayleyNeumann{3});
  try {
    (void)oft::quant::merge_rotation(int8, wide);
    ADD_FAILURE() << "a d=128 rotation was merged into a 48x64 base";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("the rotation has d=128, the int8 base is 48x64"), std::string::npos)
        << e.what();
  }
  const RowMat<float> a = RowMat<float>::Zero(4, kFeatures), b = RowMat<float>::Zero(kOutputs, 5);
  EXPECT_THROW((void)oft::quant::merge_lora(int8, a, b, 1.0f), std::invalid_argument);
}

}  // namespace

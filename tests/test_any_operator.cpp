// AnyBlockOrthogonal / AnyOftLinear: a policy chosen at run time gives bit-identical results to
// the templated operator for every policy, and the same exceptions.

#include <oft/any_operator.hpp>
#include <oft/dropout.hpp>

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::Rng;
using oft_test::RowMat;
using oft_test::throws_with;

constexpr Index kB = 8, kR = 4, kD = kB * kR, kN = 13, kOut = 6;

template <class Scalar, class Policy>
void expect_same_as_templated(const Policy& policy, const char* expected_name) {
  SCOPED_TRACE(expected_name);
  Rng rng(21);
  const auto spec = oft::BlockSpec::from_features(kD, kB);
  const auto theta = oft_test::random_generators<Scalar>(kR, kB, 0.2, rng);
  const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(kN, kD, rng);
  const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(kN, kD, rng);

  oft::BlockOrthogonal<Scalar, Policy> typed(spec, policy);
  oft::AnyBlockOrthogonal<Scalar> any(spec, oft::AnyPolicy(policy));
  EXPECT_EQ(oft::policy_name(any.policy()), expected_name);
  typed.set_generators(theta);
  any.set_generators(theta);
  const auto mask = oft::dropout_mask(spec, 0.25, 3);
  typed.set_active_blocks(mask);
  any.set_active_blocks(mask);

  RowMat<Scalar> y_typed(kN, kD), y_any(kN, kD);
  typed.apply(oft::view(x), oft::view(y_typed));
  any.apply(oft::view(x), oft::view(y_any));
  EXPECT_TRUE(oft_test::all_equal(y_typed, y_any));
  typed.apply_transposed(oft::view(x), oft::view(y_typed));
  any.apply_transposed(oft::view(x), oft::view(y_any));
  EXPECT_TRUE(oft_test::all_equal(y_typed, y_any));

  RowMat<Scalar> dx_typed(kN, kD), dx_any(kN, kD);
  oft::Generators<Scalar> dtheta_typed(spec), dtheta_any(spec);
  oft::Workspace<Scalar> ws;
  typed.backward(oft::view(x), oft::view(dy), oft::view(dx_typed), dtheta_typed.view(), ws);
  any.backward(oft::view(x), oft::view(dy), oft::view(dx_any), dtheta_any.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(dx_typed, dx_any));
  EXPECT_TRUE(oft_test::all_equal(dtheta_typed.values(), dtheta_any.values()));
  EXPECT_EQ(typed.orthogonality_errors(), any.orthogonality_errors());
  EXPECT_EQ(any.plan(1).terms, typed.plan(1).terms);
  EXPECT_TRUE(oft_test::all_equal(typed.dense(), any.dense()));
  EXPECT_EQ(any.block_active(0), typed.block_active(0));
  EXPECT_TRUE(oft_test::all_equal(any.template as<Policy>().dense(), typed.dense()));

  // The layer.
  const RowMat<Scalar> w = oft_test::random_matrix<Scalar>(kOut, kD, rng);
  const std::vector<Scalar> bias(static_cast<size_t>(kOut), Scalar(0.5));
  oft::OftLinear<Scalar, Policy> layer_typed(oft::view(w), bias.data(), kB, false, policy);
  oft::AnyOftLinear<Scalar> layer_any(oft::view(w), bias.data(), kB, false, oft::AnyPolicy(policy));
  layer_typed.set_generators(theta);
  layer_any.set_generators(theta);
  RowMat<Scalar> z_typed(kN, kOut), z_any(kN, kOut);
  layer_typed.forward(oft::view(x), oft::view(z_typed), ws);
  layer_any.forward(oft::view(x), oft::view(z_any), ws);
  EXPECT_TRUE(oft_test::all_equal(z_typed, z_any));
  const RowMat<Scalar> dz = oft_test::random_matrix<Scalar>(kN, kOut, rng);
  layer_typed.backward(oft::view(x), oft::view(dz), oft::view(dx_typed), dtheta_typed.view(), ws);
  layer_any.backward(oft::view(x), oft::view(dz), oft::view(dx_any), dtheta_any.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(dx_typed, dx_any));
  EXPECT_TRUE(oft_test::all_equal(dtheta_typed.values(), dtheta_any.values()));
  EXPECT_TRUE(oft_test::all_equal(layer_typed.merged(), layer_any.merged()));
  EXPECT_EQ(layer_any.features(), kD);
  EXPECT_EQ(layer_any.outputs(), kOut);
}

TEST(AnyOperator, BitIdenticalToTemplatedForEveryPolicy) {
  expect_same_as_templated<float>(oft::ExactCayley{}, "cayley");
  expect_same_as_templated<double>(oft::ExactCayley{}, "cayley");
  expect_same_as_templated<float>(oft::CayleyNeumann{3}, "cayley_neumann");
  expect_same_as_templated<double>(oft::CayleyNeumann{4}, "cayley_neumann");
  expect_same_as_templated<float>(oft::CayleyNeumannTolerance(1e-4), "cayley_neumann_tolerance");
  expect_same_as_templated<double>(oft::MatrixExponential{}, "exponential");
  expect_same_as_templated<float>(oft::peft::NeumannBranch{2}, "peft_neumann_branch");
  expect_same_as_templated<double>(
      oft::peft::NeumannBranch{6, oft::peft::NeumannForm::Legacy}, "peft_neumann_branch");
}

// The bfloat16 overloads (what the Python package calls for torch.bfloat16 on the CPU) forward
// to the templated operator in both arithmetics, with the same bits.
TEST(AnyOperator, Bfloat16IsTheTemplatedOperatorsBitForBit) {
  using BfMat = Eigen::Matrix<oft::bfloat16, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Rng rng(22);
  const auto spec = oft::BlockSpec::from_features(kD, kB);
  const auto theta = oft_test::random_generators<float>(kR, kB, 0.2, rng);
  const BfMat x = oft_test::random_matrix<float>(kN, kD, rng).cast<oft::bfloat16>();
  const BfMat dy = oft_test::random_matrix<float>(kN, kD, rng).cast<oft::bfloat16>();
  const oft::CayleyNeumann policy{3};
  oft::BlockOrthogonal<float, oft::CayleyNeumann> typed(spec, policy);
  oft::AnyBlockOrthogonal<float> any(spec, oft::AnyPolicy(policy));
  typed.set_generators(theta);
  any.set_generators(theta);
  EXPECT_EQ(any.bf16_arithmetic(), typed.bf16_arithmetic());

  std::vector<oft::Bf16Arithmetic> arithmetics{oft::Bf16Arithmetic::Float};
  if (oft::kBf16DotProductAvailable) arithmetics.push_back(oft::Bf16Arithmetic::DotProduct);
  for (const auto arithmetic : arithmetics) {
    SCOPED_TRACE(arithmetic == oft::Bf16Arithmetic::Float ? "Float" : "DotProduct");
    typed.set_bf16_arithmetic(arithmetic);
    any.set_bf16_arithmetic(arithmetic);
    EXPECT_EQ(any.bf16_arithmetic(), arithmetic);
    BfMat y_typed(kN, kD), y_any(kN, kD);
    const oft::ConstMatrixView<oft::bfloat16> xv(x.data(), kN, kD, kD), dyv(dy.data(), kN, kD, kD);
    typed.apply(xv, oft::MatrixView<oft::bfloat16>(y_typed.data(), kN, kD, kD));
    any.apply(xv, oft::MatrixView<oft::bfloat16>(y_any.data(), kN, kD, kD));
    EXPECT_TRUE(oft_test::all_equal(y_typed.cast<float>(), y_any.cast<float>()));
    typed.apply_transposed(xv, oft::MatrixView<oft::bfloat16>(y_typed.data(), kN, kD, kD));
    any.apply_transposed(xv, oft::MatrixView<oft::bfloat16>(y_any.data(), kN, kD, kD));
    EXPECT_TRUE(oft_test::all_equal(y_typed.cast<float>(), y_any.cast<float>()));

    BfMat dx_typed(kN, kD), dx_any(kN, kD);
    oft::Generators<float> dtheta_typed(spec), dtheta_any(spec);
    oft::Workspace<float> ws;
    typed.backward(xv, dyv, oft::MatrixView<oft::bfloat16>(dx_typed.data(), kN, kD, kD),
                   dtheta_typed.view(), ws);
    any.backward(xv, dyv, oft::MatrixView<oft::bfloat16>(dx_any.data(), kN, kD, kD),
                 dtheta_any.view(), ws);
    EXPECT_TRUE(oft_test::all_equal(dx_typed.cast<float>(), dx_any.cast<float>()));
    EXPECT_TRUE(oft_test::all_equal(dtheta_typed.values(), dtheta_any.values()));
  }
  if (!oft::kBf16DotProductAvailable) {
    EXPECT_THROW(any.set_bf16_arithmetic(oft::Bf16Arithmetic::DotProduct), std::invalid_argument);
  }
}

TEST(AnyOperator, PolicyIsKeptAndErrorsPropagate) {
  const auto spec = oft::BlockSpec::from_features(kD, kB);
  oft::AnyBlockOrthogonal<double> any(spec, oft::CayleyNeumann{5});
  ASSERT_TRUE(std::holds_alternative<oft::CayleyNeumann>(any.policy()));
  EXPECT_EQ(std::get<oft::CayleyNeumann>(any.policy()).terms, 5);
  EXPECT_EQ(any.spec().block_size, kB);
  EXPECT_EQ(any.features(), kD);
  EXPECT_THROW((void)any.as<oft::ExactCayley>(), std::bad_variant_access);

  const RowMat<double> wide = RowMat<double>::Zero(3, kD + 1);
  RowMat<double> y = RowMat<double>::Constant(3, kD + 1, 7.0);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { any.apply(oft::view(wide), oft::view(y)); },
                                                 {"33 columns", "d=32"}));
  EXPECT_TRUE(oft_test::all_equal(y, RowMat<double>::Constant(3, kD + 1, 7.0)));
  oft::Generators<double> wrong(kR, kB + 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { any.set_generators(wrong); },
                                                 {"block size 9", "block size 8"}));
}

}  // namespace

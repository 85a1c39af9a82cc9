// AnyBlockOrthogonal / AnyOftLinear: a policy chosen at run time gives bit-identical results to
// the templated operator for every policy, and the same exceptions.

#include <oft/any_operator.hpp>
#include <oft/any_orthogonal.hpp>
#include <oft/dropout.hpp>

#include <gtest/gtest.h>

#include <cmath>
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

// ---- AnyOrthogonal: the family chosen at run time ----

/// The four families on d = 32, with parameters of moderate size so that no map is near its limit.
std::vector<oft::AnyFamily> every_family() {
  return {oft::BlockFamily{oft::BlockSpec::from_features(kD, kB), oft::CayleyNeumann{4}},
          oft::ButterflyFamily{oft::ButterflySpec::from_features(kD, 4, 3), oft::ExactCayley{}},
          oft::HouseholderFamily{kD, 5, false},
          oft::HouseholderFamily{kD, 5, true},
          oft::GivensFamily{kD, oft::GivensLayout::Goft}};
}

template <class Scalar>
std::vector<Scalar> random_parameters(Index count, double scale, Rng& rng) {
  const RowMat<Scalar> m = oft_test::random_matrix<Scalar>(1, count, rng);
  std::vector<Scalar> values(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i) values[static_cast<std::size_t>(i)] = static_cast<Scalar>(scale * m(0, i));
  return values;
}

template <class Scalar>
void expect_any_orthogonal_is_the_family(const oft::AnyFamily& family) {
  SCOPED_TRACE(oft::family_name(family));
  Rng rng(5);
  oft::AnyOrthogonal<Scalar> any(family);
  const Index count = any.parameter_count();
  const std::vector<Scalar> params = random_parameters<Scalar>(count, 0.3, rng);
  any.set_parameters(params.data(), count);
  const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(kN, kD, rng);
  const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(kN, kD, rng);
  RowMat<Scalar> y_typed(kN, kD), y_any(kN, kD), dx_typed(kN, kD), dx_any(kN, kD);
  std::vector<Scalar> dparams_typed(static_cast<std::size_t>(count)), dparams_any(static_cast<std::size_t>(count));
  oft::Workspace<Scalar> ws;

  // The templated operator fed the same flat vector in the family's documented layout.
  const auto compare = [&](const auto& typed) {
    typed.apply(oft::view(x), oft::view(y_typed));
    any.apply(oft::view(x), oft::view(y_any));
    EXPECT_TRUE(oft_test::all_equal(y_typed, y_any));
    typed.apply_transposed(oft::view(x), oft::view(y_typed));
    any.apply_transposed(oft::view(x), oft::view(y_any));
    EXPECT_TRUE(oft_test::all_equal(y_typed, y_any));
    EXPECT_TRUE(oft_test::all_equal(typed.dense(), any.dense()));
  };
  if (const auto* f = std::get_if<oft::BlockFamily>(&family)) {
    oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> typed(f->spec, std::get<oft::CayleyNeumann>(f->map));
    typed.set_generators(oft::GeneratorView<const Scalar>(params.data(), f->spec.blocks, kB));
    compare(typed);
    typed.backward(oft::view(x), oft::view(dy), oft::view(dx_typed),
                   oft::GeneratorView<Scalar>(dparams_typed.data(), f->spec.blocks, kB), ws);
  } else if (const auto* f = std::get_if<oft::ButterflyFamily>(&family)) {
    oft::Butterfly<Scalar, oft::ExactCayley> typed(f->spec);
    typed.set_generators(oft::GeneratorView<const Scalar>(params.data(), f->spec.generators(), 4));
    compare(typed);
    typed.backward(oft::view(x), oft::view(dy), oft::view(dx_typed),
                   oft::GeneratorView<Scalar>(dparams_typed.data(), f->spec.generators(), 4), ws);
  } else if (const auto* f = std::get_if<oft::HouseholderFamily>(&family)) {
    oft::Householder<Scalar> typed(f->features, f->reflections, f->gram_schmidt);
    typed.set_vectors(oft::ConstMatrixView<Scalar>(params.data(), kD, f->reflections, f->reflections));
    compare(typed);
    typed.backward(oft::view(x), oft::view(dy), oft::view(dx_typed),
                   oft::MatrixView<Scalar>(dparams_typed.data(), kD, f->reflections, f->reflections), ws);
  } else {
    oft::Givens<Scalar> typed(oft::GivensSpec(kD, std::get<oft::GivensFamily>(family).layout));
    typed.set_angles(params.data(), count);
    compare(typed);
    typed.backward(oft::view(x), oft::view(dy), oft::view(dx_typed), dparams_typed.data(), ws);
  }
  any.backward(oft::view(x), oft::view(dy), oft::view(dx_any), dparams_any.data(), ws);
  EXPECT_TRUE(oft_test::all_equal(dx_typed, dx_any));
  EXPECT_EQ(dparams_typed, dparams_any);
}

TEST(AnyOrthogonal, EveryFamilyIsItsTemplatedOperatorBitForBit) {
  for (const auto& family : every_family()) {
    expect_any_orthogonal_is_the_family<float>(family);
    expect_any_orthogonal_is_the_family<double>(family);
  }
}

// Through the flat vector: merge, inverse, orthogonality and the parameter gradient against
// central differences of L = sum(Y .* G) in double, so a wrong layout or sign cannot pass.
TEST(AnyOrthogonal, MergeInverseAndGradientThroughTheFlatParameters) {
  for (oft::AnyFamily family : every_family()) {
    // Exact maps only, so that every family is orthogonal to rounding.
    if (auto* block = std::get_if<oft::BlockFamily>(&family)) block->map = oft::ExactCayley{};
    SCOPED_TRACE(oft::family_name(family));
    Rng rng(9);
    oft::AnyOrthogonal<double> any(family);
    const Index count = any.parameter_count();
    std::vector<double> params = random_parameters<double>(count, 0.3, rng);
    any.set_parameters(params.data(), count);
    const RowMat<double> r = any.dense();
    EXPECT_LT(any.orthogonality_error(), 1e-13);

    const RowMat<double> w0 = oft_test::random_matrix<double>(kOut, kD, rng);
    EXPECT_LT((any.merge(oft::view(w0)) - w0 * r.transpose()).norm(), 1e-12 * w0.norm());
    const RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
    RowMat<double> y(kN, kD), back(kN, kD);
    any.apply(oft::view(x), oft::view(y));
    EXPECT_LT((y - x * r).norm(), 1e-12 * x.norm());
    any.apply_inverse(oft::view(y), oft::view(back));
    EXPECT_LT((back - x).norm(), 1e-11 * x.norm());

    const RowMat<double> g = oft_test::random_matrix<double>(kN, kD, rng);
    std::vector<double> dparams(static_cast<std::size_t>(count));
    RowMat<double> dx(kN, kD);
    oft::Workspace<double> ws;
    any.backward(oft::view(x), oft::view(g), oft::view(dx), dparams.data(), ws);
    EXPECT_LT((dx - g * r.transpose()).norm(), 1e-12 * g.norm());
    const auto loss = [&](const std::vector<double>& p) {
      oft::AnyOrthogonal<double> probe(family);
      probe.set_parameters(p.data(), count);
      RowMat<double> out(kN, kD);
      probe.apply(oft::view(x), oft::view(out));
      return (out.array() * g.array()).sum();
    };
    for (Index k = 0; k < count; k += std::max<Index>(1, count / 7)) {
      const auto i = static_cast<std::size_t>(k);
      const double h = 1e-6, saved = params[i];
      params[i] = saved + h;
      const double up = loss(params);
      params[i] = saved - h;
      const double down = loss(params);
      params[i] = saved;
      const double fd = (up - down) / (2 * h);
      EXPECT_NEAR(dparams[i], fd, 1e-6 * std::max(1.0, std::abs(fd))) << "parameter " << k;
    }
  }
}

TEST(AnyOrthogonal, NamesCountsAndErrors) {
  const std::vector<std::string> names = {"oft", "boft", "hra", "hra", "goft"};
  const std::vector<Index> counts = {kR * 28, 3 * 8 * 6, kD * 5, kD * 5, kD - 1};
  const auto families = every_family();
  for (std::size_t i = 0; i < families.size(); ++i) {
    oft::AnyOrthogonal<float> any(families[i]);
    EXPECT_EQ(any.name(), names[i]);
    EXPECT_EQ(any.parameter_count(), counts[i]);
    EXPECT_EQ(any.features(), kD);
    // The identity until parameters are set.
    EXPECT_TRUE(oft_test::all_equal(any.dense(), RowMat<float>::Identity(kD, kD)));
  }
  oft::AnyOrthogonal<double> hra(oft::HouseholderFamily{kD, 5, false});
  std::vector<double> short_params(7, 0.1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { hra.set_parameters(short_params.data(), 7); },
                                                 {"parameters has 7 values", "hra", "needs 160"}));
  std::vector<double> zero_column(static_cast<std::size_t>(kD * 5), 1.0);
  for (Index p = 0; p < kD; ++p) zero_column[static_cast<std::size_t>(p * 5 + 2)] = 0.0;
  EXPECT_THROW(hra.set_parameters(zero_column.data(), kD * 5), std::domain_error);
  EXPECT_TRUE(oft_test::all_equal(hra.dense(), RowMat<double>::Identity(kD, kD)));  // unchanged
  const RowMat<double> narrow = RowMat<double>::Zero(2, kD - 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)hra.merge(oft::view(narrow)); },
                                                 {"31 columns", "d=32"}));
  EXPECT_THROW(oft::AnyOrthogonal<double>(oft::HouseholderFamily{kD, kD + 1, true}), std::invalid_argument);
  EXPECT_THROW(oft::AnyOrthogonal<double>(oft::GivensFamily{1}), std::invalid_argument);
  EXPECT_THROW((void)hra.as<oft::Givens<double>>(), std::bad_variant_access);
  EXPECT_EQ(hra.as<oft::Householder<double>>().reflections(), 5);
}

TEST(AnyButterfly, BitIdenticalToTemplatedAndInvertibleForEachPolicy) {
  const auto spec = oft::ButterflySpec::from_features(kD, 4, 2);
  Rng rng(3);
  const auto theta = oft_test::random_generators<double>(spec.generators(), 4, 0.2, rng);
  const RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
  for (const oft::AnyPolicy& policy : {oft::AnyPolicy(oft::ExactCayley{}), oft::AnyPolicy(oft::CayleyNeumann{3}),
                                       oft::AnyPolicy(oft::MatrixExponential{})}) {
    SCOPED_TRACE(oft::policy_name(policy));
    oft::AnyButterfly<double> any(spec, policy);
    EXPECT_EQ(any.policy().index(), policy.index());
    any.set_generators(theta);
    RowMat<double> y_typed(kN, kD), y_any(kN, kD), back(kN, kD);
    any.apply(oft::view(x), oft::view(y_any));
    std::visit(
        [&](const auto& p) {
          oft::Butterfly<double, std::decay_t<decltype(p)>> typed(spec, p);
          typed.set_generators(theta);
          typed.apply(oft::view(x), oft::view(y_typed));
        },
        policy);
    EXPECT_TRUE(oft_test::all_equal(y_typed, y_any));
    any.apply_inverse(oft::view(y_any), oft::view(back));
    EXPECT_LT((back - x).norm(), 1e-11 * x.norm());
  }
}

}  // namespace

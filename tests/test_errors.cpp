// Bad input at the public boundary: every case raises the documented exception type
// (std::invalid_argument for shapes / sizes / aliasing, std::domain_error for values outside the
// math's domain), its what() names the values at fault, and outputs are left untouched (filled
// with a sentinel first) or, for set_generators, the operator keeps its previous state.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/linear.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::Rng;
using oft_test::RowMat;
using oft_test::throws_with;

constexpr double kSentinel = -12345.5;
constexpr Index kB = 4, kR = 3, kD = kB * kR, kN = 5;

using Op = oft::BlockOrthogonal<double, oft::ExactCayley>;

struct Fixture {
  Rng rng{1};
  oft::BlockSpec spec = oft::BlockSpec::from_features(kD, kB);
  oft::Generators<double> theta = oft_test::random_generators<double>(kR, kB, 0.5, rng);
  Op op{spec};
  RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
  RowMat<double> dy = oft_test::random_matrix<double>(kN, kD, rng);
  Fixture() { op.set_generators(theta); }
};

RowMat<double> sentinel_matrix(Index rows, Index cols) {
  return RowMat<double>::Constant(rows, cols, kSentinel);
}

// The predicates every test relies on can fail (a check that cannot fail proves nothing).
TEST(TestSupport, PredicatesDetectMismatches) {
  EXPECT_FALSE(throws_with<std::invalid_argument>([] {}, {}));
  EXPECT_FALSE(
      throws_with<std::invalid_argument>([] { throw std::domain_error("1.5 >= 1"); }, {"1.5"}));
  EXPECT_FALSE(
      throws_with<std::invalid_argument>([] { throw std::invalid_argument("d=100"); }, {"d=10 "}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { throw std::invalid_argument("d=100 b=32"); },
                                                 {"d=100", "b=32"}));
  const RowMat<double> a = RowMat<double>::Ones(2, 2);
  RowMat<double> b = a;
  b(1, 0) = 1.0 + 1e-12;
  EXPECT_FALSE(oft_test::all_equal(a, b));
  EXPECT_FALSE(oft_test::within_abs(a, b, 1e-13));
  EXPECT_TRUE(oft_test::within_abs(a, b, 1e-11));
  b(0, 1) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_FALSE(oft_test::within_abs(a, b, 1.0));  // NaN never passes a bound
  std::vector<double> s(3, kSentinel);
  EXPECT_TRUE(oft_test::all_sentinel(s.data(), 3, kSentinel));
  s[2] = 0.0;
  EXPECT_FALSE(oft_test::all_sentinel(s.data(), 3, kSentinel));
}

// --- sizes and shapes --------------------------------------------------------------------------

TEST(Errors, FeatureSizeNotDivisibleByBlockSize) {
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::BlockSpec::from_features(100, 32); },
                                                 {"d=100", "b=32"}));
  EXPECT_TRUE(
      throws_with<std::invalid_argument>([] { oft::BlockSpec::from_features(12, 0); }, {"b=0"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] {
        Op(oft::BlockSpec{0, 4, false});
      },
      {"r=0", "b=4"}));
  // The linear layer derives d from W0's width.
  const RowMat<double> w = RowMat<double>::Zero(8, 100);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::OftLinear<double, oft::ExactCayley>(oft::view(w), nullptr, 32); },
      {"d=100", "b=32"}));
}

TEST(Errors, PackedLengthNotTriangular) {
  std::vector<double> buffer(20, 0.0);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::GeneratorView<double>(oft::MatrixView<double>(buffer.data(), 2, 5)); },
      {"packed length 5"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::block_size_from_packed(8); }, {"8"}));
}

TEST(Errors, ThetaShapeMismatchLeavesOperatorUnchanged) {
  Fixture f;
  const RowMat<double> before = f.op.dense();
  const oft::Generators<double> too_few(2, kB);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.set_generators(too_few); },
                                                 {"holds 2 generators", "expected 3"}));
  const oft::Generators<double> wrong_b(kR, 5);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.set_generators(wrong_b); },
                                                 {"block size 5", "3x10", "3x6"}));
  EXPECT_TRUE(oft_test::all_equal(f.op.dense(), before));
  EXPECT_TRUE(oft_test::all_equal(f.op.generators().values(), f.theta.values()));
}

TEST(Errors, ApplyWidthAndShape) {
  Fixture f;
  const RowMat<double> wide = oft_test::random_matrix<double>(kN, kD + 1, f.rng);
  RowMat<double> y = sentinel_matrix(kN, kD + 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.apply(oft::view(wide), oft::view(y)); },
                                                 {"13 columns", "d=12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.apply_transposed(oft::view(wide), oft::view(y)); }, {"13 columns", "d=12"}));
  EXPECT_TRUE(oft_test::all_sentinel(y.data(), y.size(), kSentinel));

  RowMat<double> y_short = sentinel_matrix(kN - 1, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.apply(oft::view(f.x), oft::view(y_short)); }, {"Y has shape 4x12", "5x12"}));
  EXPECT_TRUE(oft_test::all_sentinel(y_short.data(), y_short.size(), kSentinel));
}

TEST(Errors, BackwardShapes) {
  Fixture f;
  oft::Workspace<double> ws;
  RowMat<double> dx = sentinel_matrix(kN, kD);
  oft::Generators<double> dtheta(kR, kB);
  dtheta.values().setConstant(kSentinel);
  auto untouched = [&] {
    return oft_test::all_sentinel(dx.data(), dx.size(), kSentinel) &&
           oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel);
  };

  const RowMat<double> wide = oft_test::random_matrix<double>(kN, kD + 2, f.rng);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(wide), oft::view(f.dy), oft::view(dx), dtheta.view(), ws); },
      {"14 columns", "d=12"}));
  const RowMat<double> dy_short = oft_test::random_matrix<double>(kN - 2, kD, f.rng);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(f.x), oft::view(dy_short), oft::view(dx), dtheta.view(), ws); },
      {"dY has shape 3x12", "5x12"}));
  RowMat<double> dx_wrong = sentinel_matrix(kN, kD - 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::view(f.dy), oft::view(dx_wrong), dtheta.view(), ws);
      },
      {"dX has shape 5x11", "5x12"}));
  EXPECT_TRUE(oft_test::all_sentinel(dx_wrong.data(), dx_wrong.size(), kSentinel));

  // Wrong dtheta shape: count and block size.
  oft::Generators<double> dtheta_few(2, kB);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(f.x), oft::view(f.dy), oft::view(dx), dtheta_few.view(), ws); },
      {"dtheta holds 2 generators", "expected 3"}));
  oft::Generators<double> dtheta_b(kR, 3);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(f.x), oft::view(f.dy), oft::view(dx), dtheta_b.view(), ws); },
      {"block size 3", "block size 4"}));
  EXPECT_TRUE(untouched());
}

TEST(Errors, TooSmallRawWorkspace) {
  Fixture f;
  RowMat<double> dx = sentinel_matrix(kN, kD);
  oft::Generators<double> dtheta(kR, kB);
  dtheta.values().setConstant(kSentinel);
  const Index need = f.op.workspace_size();
  std::vector<double> raw(static_cast<size_t>(need), kSentinel);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::view(f.dy), oft::view(dx), dtheta.view(), raw.data(),
                      need - 1);
      },
      {"has " + std::to_string(need - 1) + " scalars", "needs " + std::to_string(need)}));
  EXPECT_TRUE(oft_test::all_sentinel(dx.data(), dx.size(), kSentinel));
  EXPECT_TRUE(oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel));
  EXPECT_TRUE(oft_test::all_sentinel(raw.data(), need, kSentinel));
}

TEST(Errors, MasksAndBlockIndex) {
  Fixture f;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.set_active_blocks({1, 0});
      },
      {"2 entries", "r=3"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.block(3); }, {"index 3"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.block(-1); }, {"index -1"}));
  const RowMat<double> grads = RowMat<double>::Zero(kD + 1, kB);
  oft::Generators<double> dtheta(kR, kB);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward_from_block_gradients(oft::view(grads), dtheta.view()); },
      {"13x4", "12x4"}));
}

TEST(Errors, NegativeTermsAndBadTolerance) {
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::CayleyNeumann{-1}; }, {"k=-1"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::CayleyNeumann{-7}; }, {"k=-7"}));
  EXPECT_TRUE(
      throws_with<std::invalid_argument>([] { oft::CayleyNeumannTolerance{0.0}; }, {"got 0"}));
  EXPECT_TRUE(
      throws_with<std::invalid_argument>([] { oft::CayleyNeumannTolerance{-1e-3}; }, {"-0.001"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { oft::CayleyNeumannTolerance{std::numeric_limits<double>::infinity()}; }, {"inf"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { oft::CayleyNeumannTolerance(1e-6, oft::OnDivergence::Throw, -2); }, {"-2"}));
}

// --- values outside the domain ----------------------------------------------------------------

TEST(Errors, NonFiniteThetaNamesGeneratorAndElement) {
  const double values[] = {std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity()};
  const char* names[] = {"nan", "inf", "-inf"};
  for (int v = 0; v < 3; ++v) {
    Fixture f;
    const RowMat<double> before = f.op.dense();
    oft::Generators<double> bad = f.theta;
    bad.row(2)[oft::packed_index(1, 3, kB)] = values[v];  // generator 2, element (1,3)
    EXPECT_TRUE(throws_with<std::domain_error>([&] { f.op.set_generators(bad); },
                                               {names[v], "generator 2", "(1,3)"}))
        << names[v];
    EXPECT_TRUE(oft_test::all_equal(f.op.dense(), before)) << names[v];
    EXPECT_TRUE(oft_test::all_equal(f.op.generators().values(), f.theta.values())) << names[v];

    // The first non-finite entry is the one reported.
    oft::Generators<double> two = f.theta;
    two.row(0)[oft::packed_index(0, 2, kB)] = values[v];
    two.row(1)[oft::packed_index(2, 3, kB)] = values[v];
    EXPECT_TRUE(throws_with<std::domain_error>([&] { f.op.set_generators(two); },
                                               {"generator 0", "(0,2)"}));
  }
  // Float, through the linear layer.
  Rng rng(2);
  const RowMat<float> w = oft_test::random_matrix<float>(6, 8, rng);
  oft::OftLinear<float, oft::CayleyNeumann> layer(oft::view(w), nullptr, 4);
  oft::Generators<float> theta(2, 4);
  theta.row(1)[oft::packed_index(0, 1, 4)] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(throws_with<std::domain_error>([&] { layer.set_generators(theta); },
                                             {"nan", "generator 1", "(0,1)"}));
  EXPECT_TRUE(oft_test::all_equal(layer.merged(), w));
}

TEST(Errors, DivergentSeriesInToleranceModeLeavesOperatorUnchanged) {
  using TolOp = oft::BlockOrthogonal<double, oft::CayleyNeumannTolerance>;
  Rng rng(3);
  const auto spec = oft::BlockSpec::from_features(kD, kB);
  TolOp op(spec, oft::CayleyNeumannTolerance(1e-6));
  const auto good = oft_test::random_generators<double>(kR, kB, 0.3, rng);
  op.set_generators(good);
  const RowMat<double> before = op.dense();
  const oft::PlanSummary plan_before = op.plan(2);
  // Generator 2 gets rho = 1.5 exactly: one rotation plane (0,1) with angle parameter 1.5.
  oft::Generators<double> bad = good;
  for (Index k = 0; k < bad.packed(); ++k) bad.row(2)[k] = 0.0;
  bad.row(2)[oft::packed_index(0, 1, kB)] = 1.5;
  EXPECT_TRUE(
      throws_with<std::domain_error>([&] { op.set_generators(bad); }, {"1.5", ">= 1", "1e-06"}));
  EXPECT_TRUE(oft_test::all_equal(op.dense(), before));
  EXPECT_TRUE(oft_test::all_equal(op.generators().values(), good.values()));
  EXPECT_EQ(op.plan(2).terms, plan_before.terms);
  EXPECT_EQ(op.plan(2).exact, plan_before.exact);
}

// --- aliasing ------------------------------------------------------------------------------------

TEST(Errors, PartialAliasingInApply) {
  Fixture f;
  // One buffer, X and Y shifted by one element: overlapping, not identical.
  std::vector<double> buffer(static_cast<size_t>(kN * kD + 1), kSentinel);
  for (Index i = 0; i < kN * kD; ++i) buffer[static_cast<size_t>(i)] = f.x.data()[i];
  const std::vector<double> saved = buffer;
  const oft::MatrixView<const double> xv(buffer.data(), kN, kD);
  const oft::MatrixView<double> shifted(buffer.data() + 1, kN, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.apply(xv, shifted); },
                                                 {"Y partially overlaps X"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.apply_transposed(xv, shifted); },
                                                 {"Y partially overlaps X"}));
  // Same start, different stride: not the same view either.
  std::vector<double> wide(static_cast<size_t>(kN * 2 * kD), 1.0);
  const std::vector<double> wide_saved = wide;
  const oft::MatrixView<const double> strided(wide.data(), kN, kD, 2 * kD);
  const oft::MatrixView<double> dense(wide.data(), kN, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { f.op.apply(strided, dense); },
                                                 {"partially overlaps"}));
  EXPECT_EQ(buffer, saved);
  EXPECT_EQ(wide, wide_saved);
}

TEST(Errors, PartialAliasingInBackward) {
  Fixture f;
  oft::Workspace<double> ws;
  oft::Generators<double> dtheta(kR, kB);
  dtheta.values().setConstant(kSentinel);
  std::vector<double> buffer(static_cast<size_t>(kN * kD + 3), 0.5);
  const std::vector<double> saved = buffer;
  const oft::MatrixView<const double> dyv(buffer.data(), kN, kD);
  const oft::MatrixView<double> dx_shift(buffer.data() + 3, kN, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(f.x), dyv, dx_shift, dtheta.view(), ws); },
      {"dX partially overlaps dY"}));
  const oft::MatrixView<const double> xv(buffer.data(), kN, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(xv, oft::view(f.dy), dx_shift, dtheta.view(), ws); },
      {"dX partially overlaps X"}));
  EXPECT_EQ(buffer, saved);
  EXPECT_TRUE(oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel));
}

// --- linear layer -------------------------------------------------------------------------------

TEST(Errors, LinearLayerShapesAndAliasing) {
  Rng rng(4);
  const Index n_out = 6;
  const RowMat<double> w = oft_test::random_matrix<double>(n_out, kD, rng);
  oft::OftLinear<double, oft::ExactCayley> layer(oft::view(w), nullptr, kB);
  layer.set_generators(oft_test::random_generators<double>(kR, kB, 0.5, rng));
  oft::Workspace<double> ws;

  const RowMat<double> wide = oft_test::random_matrix<double>(kN, kD + 1, rng);
  RowMat<double> z = sentinel_matrix(kN, n_out);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(oft::view(wide), oft::view(z), ws); }, {"13 columns", "d=12", "6x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward_weight_centric(oft::view(wide), oft::view(z)); }, {"13 columns"}));
  EXPECT_TRUE(oft_test::all_sentinel(z.data(), z.size(), kSentinel));

  const RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
  RowMat<double> z_wrong = sentinel_matrix(kN, n_out + 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(oft::view(x), oft::view(z_wrong), ws); }, {"Z has shape 5x7", "5x6"}));
  EXPECT_TRUE(oft_test::all_sentinel(z_wrong.data(), z_wrong.size(), kSentinel));

  // Z overlapping X.
  std::vector<double> buffer(static_cast<size_t>(kN * kD), 0.25);
  const std::vector<double> saved = buffer;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.forward(oft::MatrixView<const double>(buffer.data(), kN, kD),
                      oft::MatrixView<double>(buffer.data() + 2, kN, n_out), ws);
      },
      {"Z overlaps X"}));
  EXPECT_EQ(buffer, saved);

  // backward: dZ shape, dX overlapping dZ.
  const RowMat<double> dz_wrong = RowMat<double>::Zero(kN, n_out + 2);
  RowMat<double> dx = sentinel_matrix(kN, kD);
  oft::Generators<double> dtheta(kR, kB);
  dtheta.values().setConstant(kSentinel);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.backward(oft::view(x), oft::view(dz_wrong), oft::view(dx), dtheta.view(), ws); },
      {"dZ has shape 5x8", "5x6"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward_weight_centric(oft::view(x), oft::view(dz_wrong), oft::view(dx),
                                      dtheta.view());
      },
      {"dZ has shape 5x8", "5x6"}));
  std::vector<double> grad(static_cast<size_t>(kN * kD), 0.75);
  const std::vector<double> grad_saved = grad;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(oft::view(x), oft::MatrixView<const double>(grad.data(), kN, n_out),
                       oft::MatrixView<double>(grad.data() + 1, kN, kD), dtheta.view(), ws);
      },
      {"dX overlaps dZ"}));
  EXPECT_EQ(grad, grad_saved);
  EXPECT_TRUE(oft_test::all_sentinel(dx.data(), dx.size(), kSentinel));
  EXPECT_TRUE(oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel));

  // unmerge: wrong shape of the merged weight.
  const RowMat<double> merged_wrong = RowMat<double>::Zero(n_out, kD + 4);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)layer.unmerge(oft::view(merged_wrong)); }, {"6x16", "6x12"}));
}

}  // namespace

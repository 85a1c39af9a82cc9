// Lazy expressions oft::skew / oft::cayley / oft::cayley_neumann (expressions.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/expressions.hpp>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::Mat;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

template <class Config>
class Expressions : public ::testing::Test {};
using Configs = ::testing::Types<oft_test::Config<float, 2>, oft_test::Config<float, 3>,
                                 oft_test::Config<float, 8>, oft_test::Config<float, 32>,
                                 oft_test::Config<double, 2>, oft_test::Config<double, 3>,
                                 oft_test::Config<double, 8>, oft_test::Config<double, 32>>;
TYPED_TEST_SUITE(Expressions, Configs, oft_test::ConfigNames);

constexpr double kRowNorm = 0.5;  // ||Q||_F / sqrt(2): rho <= 0.5
const int kTerms[] = {0, 1, 3, 4};
const Index kRows[] = {1, 3, 17};

/// sum_j c_j rho^j, the scale of the Neumann polynomial's intermediates.
double poly_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 0; j <= k + 1; ++j) p += oft::neumann_coefficient(j, k) * std::pow(rho, j);
  return p;
}

/// Row-wise bound of ||y_t - x_t R|| : c * unit * ||x_t||_2 (every row, as a column vector).
template <class Scalar>
MatD rowwise_bound(const RowMat<Scalar>& x, double unit, Index cols) {
  MatD bound(x.rows(), cols);
  for (Index t = 0; t < x.rows(); ++t)
    bound.row(t).setConstant(unit * x.row(t).template cast<double>().norm());
  return bound;
}

TYPED_TEST(Expressions, SkewEvalAndRightMultiply) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(10 + b);
  const auto theta = oft_test::random_generators<Scalar>(1, b, kRowNorm, rng);
  const auto q = oft::skew(theta.row(0), b);
  EXPECT_EQ(q.size(), b);
  EXPECT_TRUE(oft_test::all_equal(q.eval(), theta.dense(0)));
  // Through a generator view.
  EXPECT_TRUE(oft_test::all_equal(oft::skew(theta.view(), 0).eval(), theta.dense(0)));

  for (Index n : kRows) {
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, b, rng);
    RowMat<Scalar> out(n, b);
    q.right_multiply(x, out);
    const RowMat<Scalar> expected = x * theta.dense(0);
    // Two dot products of length b in different orders: 2 gamma_b |X| |Q| (Higham 3.5).
    const MatD bound =
        2.0 * oft_test::gamma<Scalar>(b) * (oft_test::abs_d(x) * oft_test::abs_d(theta.dense(0)));
    EXPECT_TRUE(oft_test::within_bound(out, expected, bound)) << "N=" << n;
  }
}

TYPED_TEST(Expressions, CayleyEvalAndApply) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(20 + b);
  const auto theta = oft_test::random_generators<Scalar>(1, b, kRowNorm, rng);
  const Mat<Scalar> q = theta.dense(0);
  Mat<Scalar> reference;
  oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, reference);

  const auto expr = oft::cayley(oft::skew(theta.row(0), b));
  EXPECT_EQ(expr.size(), b);
  const Mat<Scalar> r = expr.eval();
  // LU solves of the same system; c = 4, kappa = sqrt(1 + rho^2) <= sqrt(1.25).
  const double unit = 4.0 * b * oft_test::eps<Scalar>() * std::sqrt(1.25);
  EXPECT_TRUE(oft_test::within_abs(r, reference, unit));
  // The dense-matrix generator overload.
  EXPECT_TRUE(oft_test::within_abs(oft::cayley(q).eval(), reference, unit));

  for (Index n : kRows) {
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, b, rng);
    const RowMat<Scalar> expected = x * r;
    // Matrix-free apply (one solve with I + Q) vs x * R: per row ||error||_2 <= 2 unit ||x||_2
    // (two differently rounded evaluations of the same orthogonal map).
    const MatD bound = rowwise_bound(x, 2.0 * unit, b);
    EXPECT_TRUE(oft_test::within_bound(expr.apply(x), expected, bound)) << "N=" << n;
    EXPECT_TRUE(oft_test::within_bound(oft::cayley(q).apply(x), expected, bound)) << "N=" << n;
  }
}

TYPED_TEST(Expressions, CayleyNeumannEvalAndApply) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(30 + b);
  const auto theta = oft_test::random_generators<Scalar>(1, b, kRowNorm, rng);
  const Mat<Scalar> q = theta.dense(0);
  for (int k : kTerms) {
    Mat<Scalar> reference;
    oft::CayleyNeumann{k}.rotation(q, oft::CayleyNeumann::Plan{}, reference);
    const auto expr = oft::cayley_neumann(oft::skew(theta.row(0), b), k);
    EXPECT_EQ(expr.terms(), k);
    EXPECT_EQ(expr.size(), b);
    const Mat<Scalar> r = expr.eval();
    // Same polynomial by the same Horner pass.
    const double unit = 2.0 * (k + 2) * b * oft_test::eps<Scalar>() * poly_scale(kRowNorm, k);
    EXPECT_TRUE(oft_test::within_abs(r, reference, unit)) << "k=" << k;
    EXPECT_TRUE(oft_test::within_abs(oft::cayley_neumann(q, k).eval(), reference, unit))
        << "k=" << k;
    for (Index n : kRows) {
      const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, b, rng);
      const RowMat<Scalar> expected = x * r;
      // Horner on rows (k+1 products x*Q) vs x * R_k: 2 unit ||x_t||_2 per row.
      const MatD bound = rowwise_bound(x, 2.0 * unit, b);
      EXPECT_TRUE(oft_test::within_bound(expr.apply(x), expected, bound))
          << "k=" << k << " N=" << n;
      EXPECT_TRUE(oft_test::within_bound(oft::cayley_neumann(q, k).apply(x), expected, bound))
          << "k=" << k << " N=" << n;
    }
  }
}

// Expressions compose with a compile-time block size.
TEST(ExpressionsFixed, CompileTimeBlockSize) {
  Rng rng(1);
  const auto theta = oft_test::random_generators<double>(1, 4, kRowNorm, rng);
  const auto fixed = oft::skew<4>(theta.row(0), 4);
  const RowMat<double> x = oft_test::random_matrix<double>(5, 4, rng);
  const RowMat<double> by_fixed = oft::cayley_neumann(fixed, 3).apply(x);
  const RowMat<double> by_dynamic = oft::cayley_neumann(oft::skew(theta.row(0), 4), 3).apply(x);
  // Same arithmetic on the same data; only the storage of Q differs.
  const double unit = 2.0 * 5 * 4 * oft_test::eps<double>() * poly_scale(kRowNorm, 3);
  EXPECT_TRUE(oft_test::within_bound(by_fixed, by_dynamic, rowwise_bound(x, unit, 4)));
  EXPECT_TRUE(oft_test::within_abs(oft::cayley(fixed).eval(),
                                   oft::cayley(oft::skew(theta.row(0), 4)).eval(),
                                   4.0 * 4 * oft_test::eps<double>() * std::sqrt(1.25)));
}

// Eigen matrices and Eigen expressions select the dense-generator overloads (regression: the
// generic by-value overload used to win and failed to compile for any Eigen type).
TEST(ExpressionsDense, EigenArgumentsUseDenseOverloads) {
  Rng rng(3);
  const Index b = 5;
  const MatD q = oft_test::random_skew_with_rho(b, 0.4, rng);
  static_assert(
      std::is_same_v<decltype(oft::cayley(q)), oft::CayleyExpr<oft::DenseSkewExpr<double>>>);
  static_assert(std::is_same_v<decltype(oft::cayley_neumann(q, 2)),
                               oft::CayleyNeumannExpr<oft::DenseSkewExpr<double>>>);
  static_assert(
      std::is_same_v<decltype(oft::cayley(-q)), oft::CayleyExpr<oft::DenseSkewExpr<double>>>);
  // R(-Q) = R(Q)^T through an Eigen expression argument.
  const double unit = 4.0 * b * oft_test::eps<double>() * std::sqrt(1.16);
  EXPECT_TRUE(
      oft_test::within_abs(oft::cayley(-q).eval(), oft::cayley(q).eval().transpose(), 2.0 * unit));
  EXPECT_TRUE(oft_test::within_abs(oft::cayley_neumann(0.5 * q, 0).eval(),
                                   MatD(MatD::Identity(b, b) + 0.5 * q), 0.0));
}

// Zero generator: every expression is the identity and apply returns X.
TEST(ExpressionsZero, IdentityEverywhere) {
  const Index b = 6;
  const std::vector<double> zero(static_cast<size_t>(oft::packed_size(b)), 0.0);
  Rng rng(2);
  const RowMat<double> x = oft_test::random_matrix<double>(4, b, rng);
  EXPECT_TRUE(
      oft_test::all_equal(oft::cayley(oft::skew(zero.data(), b)).eval(), MatD::Identity(b, b)));
  EXPECT_TRUE(oft_test::all_equal(oft::cayley_neumann(oft::skew(zero.data(), b), 4).eval(),
                                  MatD::Identity(b, b)));
  EXPECT_TRUE(oft_test::all_equal(oft::cayley_neumann(oft::skew(zero.data(), b), 4).apply(x), x));
  EXPECT_TRUE(oft_test::all_equal(oft::cayley(oft::skew(zero.data(), b)).apply(x), x));
}

TEST(ExpressionsErrors, ShapesAndTerms) {
  const Index b = 4;
  const std::vector<double> row(static_cast<size_t>(oft::packed_size(b)), 0.1);
  const RowMat<double> wrong = RowMat<double>::Zero(2, b + 1);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::cayley(oft::skew(row.data(), b)).apply(wrong); }, {"5", "b=4"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::cayley_neumann(oft::skew(row.data(), b), 2).apply(wrong); }, {"5", "b=4"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::cayley_neumann(oft::skew(row.data(), b), -1); }, {"-1"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::cayley(MatD::Zero(3, 4)); }, {"3x4"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::skew<4>(row.data(), 3); }, {"3", "4"}));
}

}  // namespace

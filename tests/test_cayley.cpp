// Exact Cayley transform R(Q) = (I + Q)(I - Q)^-1 (cayley.hpp, SPEC section 3).

#include <gtest/gtest.h>

#include <cmath>
#include <oft/cayley.hpp>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

template <class Scalar>
oft_test::Mat<Scalar> cayley(const oft_test::Mat<Scalar>& q) {
  oft_test::Mat<Scalar> r;
  oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, r);
  return r;
}

template <class Config>
class ExactCayleyTyped : public ::testing::Test {};
using Configs = ::testing::Types<
    oft_test::Config<float, 2>, oft_test::Config<float, 3>, oft_test::Config<float, 8>,
    oft_test::Config<float, 16>, oft_test::Config<float, 32>, oft_test::Config<float, 64>,
    oft_test::Config<double, 2>, oft_test::Config<double, 3>, oft_test::Config<double, 8>,
    oft_test::Config<double, 16>, oft_test::Config<double, 32>, oft_test::Config<double, 64>>;
TYPED_TEST_SUITE(ExactCayleyTyped, Configs, oft_test::ConfigNames);

// Orthogonality and det R = +1. Bound: c * b * eps * kappa with c = 4 and kappa = sqrt(1 + rho^2)
// = cond_2(I - Q) (the singular values of I - Q are sqrt(1 + lambda^2)): the LU solve's forward
// error grows with the condition number. In the OFT regime (rho <= 1) that is at most
// 4 * sqrt(2) * b * eps, about 1e-14 for b = 32 in double (SPEC section 7).
TYPED_TEST(ExactCayleyTyped, OrthogonalWithUnitDeterminant) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(100 + b);
  for (double rho : {1e-8, 0.05, 0.3, 0.9, 1.0, 3.0, 10.0, 100.0}) {
    for (int trial = 0; trial < 3; ++trial) {
      const oft_test::Mat<Scalar> q = oft_test::random_skew_with_rho(b, rho, rng).cast<Scalar>();
      const oft_test::Mat<Scalar> r = cayley(q);
      const double kappa = std::sqrt(1.0 + rho * rho);
      const double tol = 4.0 * b * oft_test::eps<Scalar>() * kappa;
      EXPECT_LE(oft_test::orthogonality_defect(r), tol) << "rho=" << rho;
      const MatD rd = r.template cast<double>();
      EXPECT_LE(std::abs(rd.determinant() - 1.0), tol) << "rho=" << rho;
    }
  }
}

// R(-Q) = R(Q)^T (since R(Q)^T = (I - Q)^-T (I + Q)^T = (I + Q)^-1 (I - Q) = R(-Q)).
TYPED_TEST(ExactCayleyTyped, NegatedGeneratorGivesTranspose) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(200 + b);
  for (double rho : {0.1, 0.9, 5.0}) {
    const oft_test::Mat<Scalar> q = oft_test::random_skew_with_rho(b, rho, rng).cast<Scalar>();
    const oft_test::Mat<Scalar> minus_q = -q;
    // Both sides are entries of an orthogonal matrix (|.| <= 1) from two LU solves:
    // c = 4 as above, times kappa.
    const double tol = 4.0 * b * oft_test::eps<Scalar>() * std::sqrt(1.0 + rho * rho);
    EXPECT_TRUE(oft_test::within_abs(cayley(minus_q), cayley(q).transpose(), tol)) << "rho=" << rho;
  }
}

// (I + Q)(I - Q)^-1 = (I - Q)^-1 (I + Q), both computed independently of the policy.
TYPED_TEST(ExactCayleyTyped, MatchesBothTextbookForms) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  Rng rng(300 + b);
  const double rho = 0.7;
  const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
  const oft_test::Mat<Scalar> qs = q.cast<Scalar>();
  // Reference in double from the rounded Scalar generator.
  const MatD qd = qs.template cast<double>();
  const MatD identity = MatD::Identity(b, b);
  const MatD right = (identity + qd) * (identity - qd).inverse();
  const MatD left = (identity - qd).fullPivLu().solve(identity + qd);
  EXPECT_TRUE(oft_test::within_abs(right, left, 8.0 * b * oft_test::eps<double>()));
  const double tol = 4.0 * b * oft_test::eps<Scalar>() * std::sqrt(1.0 + rho * rho) +
                     8.0 * b * oft_test::eps<double>();
  EXPECT_TRUE(oft_test::within_abs(cayley(qs).template cast<double>(), right, tol));
}

TYPED_TEST(ExactCayleyTyped, ZeroGeneratorGivesIdentityExactly) {
  using Scalar = typename TypeParam::Scalar;
  constexpr Index b = TypeParam::b;
  const oft_test::Mat<Scalar> q = oft_test::Mat<Scalar>::Zero(b, b);
  EXPECT_TRUE(oft_test::all_equal(cayley(q), oft_test::Mat<Scalar>::Identity(b, b)));
}

// Q = [[0, a], [-a, 0]]: I - Q = [[1, -a], [a, 1]], (I - Q)^-1 = [[1, a], [-a, 1]] / (1 + a^2),
// so R = (I + Q)(I - Q)^-1 = [[1, a], [-a, 1]]^2 / (1 + a^2)
//      = [[1 - a^2, 2a], [-2a, 1 - a^2]] / (1 + a^2).
TEST(ExactCayley, HandComputed2x2) {
  for (double a : {0.5, 2.0, -0.25, 1.0, 1e-3, 37.0}) {
    const double packed[1] = {a};  // (0,1) is the only packed entry
    MatD q;
    oft::unpack_skew(packed, 2, q);
    MatD expected(2, 2);
    const double s = 1.0 + a * a;
    expected << (1.0 - a * a) / s, 2.0 * a / s,  //
        -2.0 * a / s, (1.0 - a * a) / s;
    // Both sides are a handful of roundings of O(1) values.
    EXPECT_TRUE(oft_test::within_abs(cayley(q), expected, 8.0 * oft_test::eps<double>()))
        << "a=" << a;
  }
  // a = 1/2 gives the exact Pythagorean matrix [[3/5, 4/5], [-4/5, 3/5]].
  MatD q(2, 2);
  q << 0.0, 0.5, -0.5, 0.0;
  MatD expected(2, 2);
  expected << 0.6, 0.8, -0.8, 0.6;
  EXPECT_TRUE(oft_test::within_abs(cayley(q), expected, 2.0 * oft_test::eps<double>()));
}

TEST(ExactCayley, PlanSummaryIsExact) {
  const oft::PlanSummary s = oft::ExactCayley::summary(oft::ExactCayley::Plan{});
  EXPECT_TRUE(s.exact);
  EXPECT_EQ(s.terms, -1);
  EXPECT_STREQ(oft::ExactCayley::name, "cayley");
}

// The Cayley map works on non-skew input too (the VJP tests rely on that): R = (I+Q)(I-Q)^-1.
TEST(ExactCayley, GeneralMatrixInput) {
  Rng rng(7);
  const Index b = 6;
  MatD q(b, b);
  for (Index i = 0; i < b; ++i)
    for (Index j = 0; j < b; ++j) q(i, j) = 0.2 * rng.uniform();
  const MatD identity = MatD::Identity(b, b);
  const MatD expected = (identity - q).fullPivLu().solve(identity + q);
  // Two different LU solves of the same system: c = 8 (one per side, 4 each) times b eps times
  // cond_2(I - Q), measured, times the size of the solution.
  const double kappa = oft_test::spectral_norm(identity - q) *
                       oft_test::spectral_norm(MatD((identity - q).inverse()));
  EXPECT_TRUE(oft_test::within_abs(cayley(q), expected,
                                   8.0 * b * oft_test::eps<double>() * kappa * expected.norm()));
}

}  // namespace

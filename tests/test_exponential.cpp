// Matrix exponential parameterization R = exp(Q) (exponential.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <oft/exponential.hpp>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

template <class Scalar>
oft_test::Mat<Scalar> expm(const oft_test::Mat<Scalar>& q) {
  oft_test::Mat<Scalar> r;
  oft::MatrixExponential{}.rotation(q, oft::MatrixExponential::Plan{}, r);
  return r;
}

// Q = a J with J = [[0, 1], [-1, 0]], J^2 = -I, so exp(aJ) = cos(a) I + sin(a) J.
TEST(MatrixExponential, HandComputed2x2) {
  for (double a : {0.0, 0.5, 1.0, -2.0, 3.0, 10.0}) {
    MatD q(2, 2);
    q << 0.0, a, -a, 0.0;
    MatD expected(2, 2);
    expected << std::cos(a), std::sin(a), -std::sin(a), std::cos(a);
    // Scaling and squaring: s = log2(|a|) squarings, each a few ulps; c = 8 (1 + |a|).
    EXPECT_TRUE(oft_test::within_abs(expm(q), expected,
                                     8.0 * oft_test::eps<double>() * (1.0 + std::abs(a))))
        << "a=" << a;
  }
}

TEST(MatrixExponential, ZeroGivesIdentity) {
  for (Index b : {1, 2, 7, 32}) {
    const MatD q = MatD::Zero(b, b);
    EXPECT_TRUE(oft_test::within_abs(expm(q), MatD::Identity(b, b), oft_test::eps<double>()));
  }
}

// Orthogonal with det +1 for every skew Q, no restriction on rho. Scaling and squaring with
// s = ceil(log2(rho)) squarings of products of size b: bound c * b * eps * (1 + rho) with c = 4.
template <class Scalar>
void check_orthogonal(Index b, double rho, Rng& rng) {
  const oft_test::Mat<Scalar> q = oft_test::random_skew_with_rho(b, rho, rng).cast<Scalar>();
  const oft_test::Mat<Scalar> r = expm(q);
  const double tol = 4.0 * b * oft_test::eps<Scalar>() * (1.0 + rho);
  EXPECT_LE(oft_test::orthogonality_defect(r), tol) << "b=" << b << " rho=" << rho;
  EXPECT_LE(std::abs(r.template cast<double>().determinant() - 1.0), tol)
      << "b=" << b << " rho=" << rho;
  // exp(-Q) = exp(Q)^T = exp(Q)^-1.
  const oft_test::Mat<Scalar> minus_q = -q;
  EXPECT_TRUE(oft_test::within_abs(expm(minus_q), r.transpose(), 2.0 * tol));
}

TEST(MatrixExponential, OrthogonalDouble) {
  Rng rng(1);
  for (Index b : {2, 3, 8, 16, 64})
    for (double rho : {1e-8, 0.3, 1.0, 5.0, 30.0}) check_orthogonal<double>(b, rho, rng);
}

TEST(MatrixExponential, OrthogonalFloat) {
  Rng rng(2);
  for (Index b : {2, 3, 8, 16, 64})
    for (double rho : {1e-4, 0.3, 1.0, 5.0}) check_orthogonal<float>(b, rho, rng);
}

// exp(Q) = sum Q^j / j! (Taylor series to convergence in double, small rho).
TEST(MatrixExponential, MatchesTaylorSeries) {
  Rng rng(3);
  const Index b = 9;
  const double rho = 0.4;
  const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
  MatD sum = MatD::Identity(b, b), term = MatD::Identity(b, b);
  for (int j = 1; j <= 30; ++j) {
    term = term * q / j;
    sum += term;
  }
  EXPECT_TRUE(oft_test::within_abs(expm(q), sum, 8.0 * b * oft_test::eps<double>()));
}

TEST(MatrixExponential, PlanSummaryIsExact) {
  const oft::PlanSummary s = oft::MatrixExponential::summary(oft::MatrixExponential::Plan{});
  EXPECT_TRUE(s.exact);
  EXPECT_EQ(s.terms, -1);
}

}  // namespace

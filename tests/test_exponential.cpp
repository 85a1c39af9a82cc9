// Matrix exponential parameterization R = exp(Q) (exponential.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <oft/exponential.hpp>
#include <oft/finite_difference.hpp>
#include <vector>

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

// --- the vector-Jacobian product -----------------------------------------------------------------

/// Gauss-Legendre nodes and weights on [0, 1] (Newton on the Legendre polynomial P_n).
void gauss_legendre(int n, std::vector<double>& nodes, std::vector<double>& weights) {
  nodes.assign(static_cast<size_t>(n), 0.0);
  weights.assign(static_cast<size_t>(n), 0.0);
  const double pi = std::acos(-1.0);
  for (int i = 0; i < n; ++i) {
    double x = std::cos(pi * (i + 0.75) / (n + 0.5)), derivative = 1.0;
    for (int iteration = 0; iteration < 100; ++iteration) {
      double p_previous = 1.0, p = x;
      for (int j = 2; j <= n; ++j) {
        const double p_next = ((2 * j - 1) * x * p - (j - 1) * p_previous) / j;
        p_previous = p;
        p = p_next;
      }
      derivative = n * (x * p - p_previous) / (x * x - 1.0);
      const double step = p / derivative;
      x -= step;
      if (std::abs(step) < 1e-17) break;
    }
    nodes[size_t(i)] = 0.5 * (x + 1.0);
    weights[size_t(i)] = 1.0 / ((1.0 - x * x) * derivative * derivative);  // 2/(...) halved
  }
}

/// The adjoint Frechet derivative of exp at Q applied to G by its integral formula,
///   dQ = int_0^1 exp(t Q^T) G exp((1 - t) Q^T) dt,
/// with 24-point Gauss-Legendre quadrature: exact for polynomials of degree 47, and the
/// integrand is entire with derivatives of size ||Q||^j, so for ||Q|| <= 3 the quadrature error is
/// below 3^48 / 48! ~ 1e-37 relative. Independent of the block-matrix identity and of any scaling
/// of G (G enters linearly, outside every exponential).
MatD expm_vjp_by_quadrature(const MatD& q, const MatD& g) {
  std::vector<double> nodes, weights;
  gauss_legendre(24, nodes, weights);
  MatD sum = MatD::Zero(q.rows(), q.cols());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const MatD left = expm(MatD(nodes[i] * q.transpose()));
    const MatD right = expm(MatD((1.0 - nodes[i]) * q.transpose()));
    sum += weights[i] * (left * g * right);
  }
  return sum;
}

MatD expm_vjp(const MatD& q, const MatD& g) {
  MatD r = expm(q), dq;
  oft::MatrixExponential{}.rotation_vjp(q, r, oft::MatrixExponential::Plan{}, g, dq);
  return dq;
}

double relative_error(const MatD& actual, const MatD& expected) {
  return (actual - expected).norm() / expected.norm();
}

// The VJP is linear in G; its relative error must not grow with |G|. The block exponential of
// [[Q^T, G], [0, Q^T]] would scale and square by |G| (about 1e-7 relative at |G| = 1e8); the
// policy scales G to unit size first. Reference: the integral formula above, evaluated with G
// itself; and, as a second reference, |G| times the plain block exponential at unit |G|.
// Bound: 8 b eps relative (a few products of size 2b in the Pade evaluation and squarings).
TEST(MatrixExponential, VjpRelativeErrorIndependentOfGradientScale) {
  Rng rng(4);
  for (Index b : {3, 8, 16})
    for (double rho : {0.5, 3.0}) {
      const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
      MatD unit = oft_test::random_matrix<double>(b, b, rng).cast<double>();
      unit /= unit.norm();
      MatD block = MatD::Zero(2 * b, 2 * b);
      block.topLeftCorner(b, b) = q.transpose();
      block.bottomRightCorner(b, b) = q.transpose();
      block.topRightCorner(b, b) = unit;
      const MatD unit_reference = expm(block).topRightCorner(b, b);
      for (double scale : {1.0, 1e4, 1e8}) {
        const MatD g = scale * unit;
        const MatD dq = expm_vjp(q, g);
        const double bound = 8.0 * b * oft_test::eps<double>();
        const double error = relative_error(dq, expm_vjp_by_quadrature(q, g));
        EXPECT_LE(error, bound) << "b=" << b << " rho=" << rho << " |G|=" << scale;
        EXPECT_LE(relative_error(dq, MatD(scale * unit_reference)), bound)
            << "b=" << b << " rho=" << rho << " |G|=" << scale;
        std::printf("  b=%2td rho=%.1f |G|=%.0e: relative error %.2e (unscaled block exp: %.2e)\n",
                    b, rho, scale, error,
                    relative_error(MatD([&] {
                                     MatD m = block;
                                     m.topRightCorner(b, b) = g;
                                     return MatD(expm(m).topRightCorner(b, b));
                                   }()),
                                   expm_vjp_by_quadrature(q, g)));
      }
    }
  // A zero G gives exactly zero.
  const MatD q = oft_test::random_skew_with_rho(5, 1.0, rng);
  EXPECT_TRUE(oft_test::all_equal(expm_vjp(q, MatD::Zero(5, 5)), MatD::Zero(5, 5)));
}

// The VJP against central differences of <G, exp(Q)> over every entry of a dense Q, for a large
// and a small G (the scaling must not change the result's meaning). Tolerance: 1e-6 of the
// largest entry plus 4 eps |L|_abs / h (as in test_backward_gradcheck.cpp).
TEST(MatrixExponential, VjpMatchesFiniteDifferences) {
  Rng rng(5);
  const Index b = 4;
  for (double scale : {1e-6, 1.0, 1e8}) {
    const MatD q = oft_test::random_matrix<double>(b, b, rng).cast<double>();
    const MatD g = scale * oft_test::random_matrix<double>(b, b, rng).cast<double>();
    const MatD dq = expm_vjp(q, g);
    MatD work = q;
    auto loss = [&] { return (g.array() * expm(work).array()).sum(); };
    const std::vector<double> fd = oft::numerical_gradient(work.data(), b * b, loss, 1e-6);
    const double loss_abs = (g.cwiseAbs().array() * expm(q).cwiseAbs().array()).sum();
    const double allowed =
        1e-6 * dq.cwiseAbs().maxCoeff() + 4.0 * oft_test::eps<double>() * loss_abs / 1e-6;
    for (Index j = 0; j < b * b; ++j)
      EXPECT_NEAR(dq.data()[j], fd[size_t(j)], allowed) << "|G|=" << scale << " entry " << j;
  }
}

TEST(MatrixExponential, PlanSummaryIsExact) {
  const oft::PlanSummary s = oft::MatrixExponential::summary(oft::MatrixExponential::Plan{});
  EXPECT_TRUE(s.exact);
  EXPECT_EQ(s.terms, -1);
}

}  // namespace

// Per-block norm clipping (norm_clipping.hpp): oft::Clipped<Inner, Norm> around each map.
//
// Gradient checks are central differences in double over the packed theta (skew directions:
// the spectral norm has no gradient off them, see the header), with the tolerance of
// tests/test_backward_gradcheck.cpp: |fd - analytic| <= 1e-6 max|analytic| + 4 eps |L|_abs / h.
// The points are chosen away from the clip boundary (||Q|| at least 30% above or below c), so
// the h = 1e-6 stencil never straddles the kink.

#include <gtest/gtest.h>

#include <oft/oft.hpp>
#include <oft/newton_schulz.hpp>
#include <oft/norm_clipping.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

constexpr double kStep = 1e-6;
constexpr double kRelative = 1e-6;

/// |fd_j - analytic_j| within the file's tolerance for every coordinate of `values`.
template <class Loss>
void check_gradient(double* values, Index count, const std::vector<double>& analytic, Loss&& loss,
                    double loss_abs, const std::string& what) {
  double scale = 0.0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  // scale may be 0: for b = 2 a clipped Q has a fixed norm, so R does not depend on theta.
  const double tol = kRelative * scale + 4.0 * oft_test::eps<double>() * loss_abs / kStep;
  for (Index j = 0; j < count; ++j) {
    const double fd = oft::numerical_gradient(values + j, 1, loss, kStep)[0];
    EXPECT_NEAR(analytic[static_cast<size_t>(j)], fd, tol) << what << ": coordinate " << j;
  }
}

/// rotation_vjp of `policy` at the packed row `theta` against central differences of
/// L(theta) = <G, R(Q(theta))>.
template <class Policy>
void gradcheck_vjp(const Policy& policy, std::vector<double> theta, Index b, Rng& rng,
                   const std::string& what) {
  MatD q(b, b), r, dq;
  oft::unpack_skew(theta.data(), b, q);
  const auto plan = policy.plan(q);
  policy.rotation(q, plan, r);
  const MatD g = oft_test::random_matrix<double>(b, b, rng);
  policy.rotation_vjp(q, r, plan, g, dq);
  std::vector<double> analytic(theta.size());
  oft::pack_skew_gradient(dq, analytic.data());
  auto loss = [&] {
    MatD qq(b, b), rr;
    oft::unpack_skew(theta.data(), b, qq);
    policy.rotation(qq, policy.plan(qq), rr);
    return (g.array() * rr.array()).sum();
  };
  const double loss_abs = (g.cwiseAbs().array() * r.cwiseAbs().array()).sum() + 1.0;
  check_gradient(theta.data(), static_cast<Index>(theta.size()), analytic, loss, loss_abs, what);
}

/// A packed row with ||Q||_2 = rho.
std::vector<double> row_with_rho(Index b, double rho, Rng& rng) {
  const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
  std::vector<double> row(static_cast<size_t>(oft::packed_size(b)));
  oft::pack_skew(q, row.data());
  return row;
}

template <class Inner, class Norm>
oft::Clipped<Inner, Norm> clip(Inner inner, double c) {
  return oft::Clipped<Inner, Norm>(inner, c);
}

// ---------------------------------------------------------------------------------------------

TEST(NormClipping, RefusesBadMaxNorm) {
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    try {
      oft::Clipped<oft::ExactCayley, oft::FrobeniusNorm> p(oft::ExactCayley{}, bad);
      ADD_FAILURE() << "max_norm=" << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_TRUE(oft_test::contains(e.what(), "max_norm=")) << e.what();
      EXPECT_TRUE(oft_test::contains(e.what(), "frobenius")) << e.what();
    }
  }
  // A field changed by hand is refused by plan(), not trusted.
  oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm> p(oft::CayleyNeumann{4}, 0.5);
  p.max_norm = -2.0;
  const MatD q = MatD::Zero(4, 4);
  EXPECT_THROW(p.plan(q), std::invalid_argument);
  // The wrapped map's own checks still apply.
  EXPECT_THROW((clip<oft::CayleyNeumann, oft::SpectralNorm>(oft::CayleyNeumann{-1}, 0.5)),
               std::invalid_argument);
}

TEST(NormClipping, Names) {
  EXPECT_EQ(std::string(oft::Clipped<oft::ExactCayley, oft::FrobeniusNorm>::name),
            "cayley_clipped_frobenius");
  EXPECT_EQ(std::string(oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>::name),
            "cayley_neumann_clipped_spectral");
  EXPECT_EQ(std::string(oft::Clipped<oft::MatrixExponential, oft::SpectralNorm>::name),
            "exponential_clipped_spectral");
}

// The spectral norm against an SVD, and the Frobenius norm against its definition.
TEST(NormClipping, NormValues) {
  Rng rng(1);
  for (Index b : {1, 2, 3, 8, 33}) {
    const MatD q = oft_test::random_skew(b, rng);
    const double svd = oft_test::spectral_norm(q);
    // Eigenvalues of Q^T Q to about b eps ||Q||^2 absolute: rho to b eps relative (c = 4).
    EXPECT_NEAR(oft::SpectralNorm::value(q), svd, 4.0 * b * oft_test::eps<double>() * svd) << b;
    EXPECT_NEAR(oft::FrobeniusNorm::value(q), std::sqrt(q.array().square().sum()),
                4.0 * b * oft_test::eps<double>() * q.norm());
  }
}

/// Below the limit the wrapper passes Q on: R, the plan's decision and dQ are bit for bit the
/// wrapped map's, in the operator too.
template <class Scalar, class Inner, class Norm>
void check_unclipped_identical(const Inner& inner, Rng& rng) {
  const Index b = 8;
  const auto spec = oft::BlockSpec::from_features(3 * b, b);
  const oft::Generators<Scalar> theta =
      oft_test::random_generators<Scalar>(spec.generators(), b, 0.3, rng);
  const oft::Clipped<Inner, Norm> clipped(inner, 10.0);
  oft::BlockOrthogonal<Scalar, Inner> plain_op(spec, inner);
  oft::BlockOrthogonal<Scalar, oft::Clipped<Inner, Norm>> clipped_op(spec, clipped);
  plain_op.set_generators(theta);
  clipped_op.set_generators(theta);
  const RowMat<Scalar> d_plain = plain_op.dense(), d_clipped = clipped_op.dense();
  EXPECT_TRUE((d_plain.array() == d_clipped.array()).all()) << oft::Clipped<Inner, Norm>::name;

  const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(5, spec.features(), rng);
  const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(5, spec.features(), rng);
  RowMat<Scalar> dx1(5, spec.features()), dx2(5, spec.features());
  oft::Generators<Scalar> dt1(spec.generators(), b), dt2(spec.generators(), b);
  oft::Workspace<Scalar> ws;
  plain_op.backward(oft::view(x), oft::view(dy), oft::view(dx1), dt1.view(), ws);
  clipped_op.backward(oft::view(x), oft::view(dy), oft::view(dx2), dt2.view(), ws);
  EXPECT_TRUE((dx1.array() == dx2.array()).all()) << oft::Clipped<Inner, Norm>::name;
  EXPECT_TRUE((dt1.values().array() == dt2.values().array()).all())
      << oft::Clipped<Inner, Norm>::name;
}

TEST(NormClipping, BelowTheLimitBitIdentical) {
  Rng rng(2);
  check_unclipped_identical<float, oft::ExactCayley, oft::FrobeniusNorm>(oft::ExactCayley{}, rng);
  check_unclipped_identical<double, oft::ExactCayley, oft::SpectralNorm>(oft::ExactCayley{}, rng);
  check_unclipped_identical<float, oft::CayleyNeumann, oft::SpectralNorm>(oft::CayleyNeumann{4},
                                                                          rng);
  check_unclipped_identical<double, oft::CayleyNeumann, oft::FrobeniusNorm>(oft::CayleyNeumann{3},
                                                                            rng);
  check_unclipped_identical<double, oft::MatrixExponential, oft::SpectralNorm>(
      oft::MatrixExponential{}, rng);
  check_unclipped_identical<float, oft::CayleyNeumannTolerance, oft::FrobeniusNorm>(
      oft::CayleyNeumannTolerance(1e-6), rng);
}

// Above the limit R is the wrapped map at c Q / ||Q|| (same arithmetic: bit for bit), whose norm
// is c to rounding; spectral clipping with c < 1 keeps the Neumann series convergent and its
// orthogonality error at c^(2k+2) (k even) whatever ||Q||.
TEST(NormClipping, AboveTheLimit) {
  Rng rng(3);
  for (Index b : {2, 3, 8, 16}) {
    const MatD q = oft_test::random_skew_with_rho(b, 5.0, rng);
    {
      const auto p = clip<oft::ExactCayley, oft::FrobeniusNorm>(oft::ExactCayley{}, 0.7);
      const auto plan = p.plan(q);
      ASSERT_TRUE(plan.clipped);
      const MatD qc = q * (0.7 / oft::FrobeniusNorm::value(q));
      EXPECT_NEAR(qc.norm(), 0.7, 4.0 * b * oft_test::eps<double>());
      MatD r, expected;
      p.rotation(q, plan, r);
      oft::ExactCayley{}.rotation(qc, {}, expected);
      EXPECT_TRUE((r.array() == expected.array()).all()) << b;
      EXPECT_LE(oft_test::orthogonality_defect(r), 8.0 * b * oft_test::eps<double>());
    }
    {
      const auto p = clip<oft::CayleyNeumann, oft::SpectralNorm>(oft::CayleyNeumann{4}, 0.5);
      MatD r;
      p.rotation(q, p.plan(q), r);
      EXPECT_NEAR(oft_test::spectral_norm(MatD(q * (0.5 / oft::SpectralNorm::value(q)))), 0.5,
                  8.0 * b * oft_test::eps<double>());
      // rho^10 with rho = 0.5, plus rounding of a degree-5 polynomial (c = 16 b eps).
      EXPECT_LE(oft_test::orthogonality_defect(r),
                std::pow(0.5, 10) * (1 + 1e-10) + 16.0 * b * oft_test::eps<double>());
      EXPECT_GE(oft_test::orthogonality_defect(r), std::pow(0.5, 10) * (1 - 1e-6));
    }
  }
}

// rotation_vjp against central differences, clipped and not, every wrapped map, both norms.
TEST(NormClipping, RotationVjpGradcheck) {
  Rng rng(4);
  for (Index b : {2, 3, 5, 8, 16}) {
    for (double rho : {0.2, 1.3}) {  // c = 0.6 below: rho = 1.3 is clipped by both norms
      const std::vector<double> theta = row_with_rho(b, rho, rng);
      const std::string at = " b=" + std::to_string(b) + " rho=" + std::to_string(rho);
      // Frobenius >= rho, so a rho = 0.2 row is unclipped by Frobenius only when ||Q||_F < 0.6.
      gradcheck_vjp(clip<oft::ExactCayley, oft::FrobeniusNorm>(oft::ExactCayley{}, 0.6), theta, b,
                    rng, "cayley frobenius" + at);
      gradcheck_vjp(clip<oft::ExactCayley, oft::SpectralNorm>(oft::ExactCayley{}, 0.6), theta, b,
                    rng, "cayley spectral" + at);
      gradcheck_vjp(clip<oft::CayleyNeumann, oft::FrobeniusNorm>(oft::CayleyNeumann{3}, 0.6),
                    theta, b, rng, "neumann frobenius" + at);
      gradcheck_vjp(clip<oft::CayleyNeumann, oft::SpectralNorm>(oft::CayleyNeumann{4}, 0.6), theta,
                    b, rng, "neumann spectral" + at);
      gradcheck_vjp(clip<oft::MatrixExponential, oft::SpectralNorm>(oft::MatrixExponential{}, 0.6),
                    theta, b, rng, "exponential spectral" + at);
      gradcheck_vjp(clip<oft::MatrixExponential, oft::FrobeniusNorm>(oft::MatrixExponential{}, 0.6),
                    theta, b, rng, "exponential frobenius" + at);
      gradcheck_vjp(clip<oft::NewtonSchulz, oft::SpectralNorm>(oft::NewtonSchulz{3}, 0.6), theta,
                    b, rng, "newton-schulz spectral" + at);
    }
  }
}

// Where two pairs of eigenvalues tie (|lambda_1| = |lambda_2|), rho has no gradient; the one
// returned is the mean of the pairs', so its inner product with any skew direction E lies between
// the one-sided derivatives (rho(Q + hE) - rho(Q)) / h and (rho(Q) - rho(Q - hE)) / h.
TEST(NormClipping, SpectralTieSubgradient) {
  Rng rng(5);
  for (Index b : {4, 5, 9}) {
    // Q = V diag-blocks V^T with blocks lambda J: two pairs at 1.0, the rest smaller.
    MatD block = MatD::Zero(b, b);
    const double lambdas[] = {1.0, 1.0, 0.4, 0.1};
    for (Index j = 0; 2 * j + 1 < b; ++j) {
      block(2 * j, 2 * j + 1) = lambdas[j];
      block(2 * j + 1, 2 * j) = -lambdas[j];
    }
    const Eigen::HouseholderQR<MatD> qr(oft_test::random_matrix<double>(b, b, rng));
    const MatD v = qr.householderQ();
    const MatD q = v * block * v.transpose();
    const double rho = oft::SpectralNorm::value(q);
    ASSERT_NEAR(rho, 1.0, 16 * b * oft_test::eps<double>());
    MatD grad;
    oft::SpectralNorm::gradient(q, rho, grad);
    for (int trial = 0; trial < 5; ++trial) {
      const MatD e = oft_test::random_skew(b, rng);
      const double h = 1e-6;
      const double forward = (oft::SpectralNorm::value(MatD(q + h * e)) - rho) / h;
      const double backward = (rho - oft::SpectralNorm::value(MatD(q - h * e))) / h;
      const double ours = (grad.array() * e.array()).sum();
      // One-sided differences err by O(h) (curvature ~ 1/gap) plus rounding eps / h.
      const double slack = 1e-5 + 1e-9;
      EXPECT_LE(ours, std::max(forward, backward) + slack) << "b=" << b;
      EXPECT_GE(ours, std::min(forward, backward) - slack) << "b=" << b;
    }
    // Along Q itself the tie persists and rho is smooth: d rho / dt (Q + t Q) = rho.
    EXPECT_NEAR((grad.array() * q.array()).sum(), rho, 16 * b * oft_test::eps<double>());
  }
}

/// dtheta of BlockOrthogonal<double, P>::backward against central differences of
/// L = sum(dY .* apply(X)), with some blocks clipped and some not.
template <class Policy>
void gradcheck_operator(const Policy& policy, Index b, bool shared, Rng& rng) {
  const auto spec = oft::BlockSpec::from_features(3 * b, b, shared);
  oft::Generators<double> theta(spec.generators(), b);
  for (Index g = 0; g < spec.generators(); ++g) {
    const std::vector<double> row = row_with_rho(b, g % 2 == 0 ? 1.3 : 0.2, rng);
    std::copy(row.begin(), row.end(), theta.row(g));
  }
  const Index n = 4, d = spec.features();
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
  oft::BlockOrthogonal<double, Policy> op(spec, policy);
  op.set_generators(theta);
  RowMat<double> dx(n, d), y(n, d);
  oft::Generators<double> dtheta(spec.generators(), b);
  oft::Workspace<double> ws;
  op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), ws);
  const Index count = spec.generators() * spec.packed();
  const std::vector<double> analytic(dtheta.values().data(), dtheta.values().data() + count);
  oft::BlockOrthogonal<double, Policy> probe(spec, policy);
  oft::Generators<double> work = theta;
  auto loss = [&] {
    probe.set_generators(work);
    probe.apply(oft::view(x), oft::view(y));
    return (dy.array() * y.array()).sum();
  };
  const RowMat<double> dense = op.dense();
  const double loss_abs = (dy.cwiseAbs().array() * (x.cwiseAbs() * dense.cwiseAbs()).array()).sum();
  check_gradient(work.values().data(), count, analytic, loss, loss_abs,
                 std::string(Policy::name) + " operator b=" + std::to_string(b));
  // dX = dY R^T.
  EXPECT_TRUE(oft_test::within_abs(dx, RowMat<double>(dy * dense.transpose()),
                                   8.0 * d * oft_test::eps<double>() * dy.cwiseAbs().maxCoeff()));
}

TEST(NormClipping, OperatorBackwardGradcheck) {
  Rng rng(6);
  for (Index b : {3, 8}) {
    for (bool shared : {false, true}) {
      gradcheck_operator(clip<oft::ExactCayley, oft::FrobeniusNorm>(oft::ExactCayley{}, 0.6), b,
                         shared, rng);
      gradcheck_operator(clip<oft::CayleyNeumann, oft::SpectralNorm>(oft::CayleyNeumann{4}, 0.6), b,
                         shared, rng);
      gradcheck_operator(
          clip<oft::CayleyNeumannTolerance, oft::SpectralNorm>(oft::CayleyNeumannTolerance(1e-8),
                                                               0.6),
          b, shared, rng);
    }
  }
}

// The same policy in the layer and in the butterfly operator (which take any parameterization).
TEST(NormClipping, LayerAndButterfly) {
  Rng rng(7);
  using Policy = oft::Clipped<oft::ExactCayley, oft::SpectralNorm>;
  const Policy policy(oft::ExactCayley{}, 0.6);
  const Index b = 4, d = 16, n_out = 6, n = 3;
  {
    const RowMat<double> w = oft_test::random_matrix<double>(n_out, d, rng);
    oft::OftLinear<double, Policy> layer(oft::view(w), nullptr, b, false, policy);
    oft::Generators<double> theta(d / b, b);
    for (Index g = 0; g < d / b; ++g) {
      const std::vector<double> row = row_with_rho(b, 1.3, rng);
      std::copy(row.begin(), row.end(), theta.row(g));
    }
    layer.set_generators(theta);
    const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
    const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
    RowMat<double> z(n, n_out), dx(n, d);
    oft::Generators<double> dtheta(d / b, b);
    oft::Workspace<double> ws;
    layer.backward(oft::view(x), oft::view(dz), oft::view(dx), dtheta.view(), ws);
    const Index count = theta.values().size();
    const std::vector<double> analytic(dtheta.values().data(), dtheta.values().data() + count);
    auto loss = [&] {
      layer.set_generators(theta);
      oft::Workspace<double> w2;
      layer.forward(oft::view(x), oft::view(z), w2);
      return (dz.array() * z.array()).sum();
    };
    check_gradient(theta.values().data(), count, analytic, loss, 100.0, "OftLinear");
  }
  {
    const auto spec = oft::ButterflySpec::from_features(d, b, 2);
    oft::Butterfly<double, Policy> op(spec, policy);
    oft::Generators<double> theta(spec.generators(), b);
    for (Index g = 0; g < spec.generators(); ++g) {
      const std::vector<double> row = row_with_rho(b, g % 2 ? 1.3 : 0.2, rng);
      std::copy(row.begin(), row.end(), theta.row(g));
    }
    op.set_generators(theta);
    EXPECT_LE(op.orthogonality_error(), 16.0 * d * oft_test::eps<double>());
    const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
    const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
    RowMat<double> y(n, d), dx(n, d);
    oft::Generators<double> dtheta(spec.generators(), b);
    oft::Workspace<double> ws;
    op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), ws);
    const Index count = theta.values().size();
    const std::vector<double> analytic(dtheta.values().data(), dtheta.values().data() + count);
    auto loss = [&] {
      op.set_generators(theta);
      op.apply(oft::view(x), oft::view(y));
      return (dy.array() * y.array()).sum();
    };
    check_gradient(theta.values().data(), count, analytic, loss, 100.0, "Butterfly");
  }
  // float operators compile and run too.
  {
    using PolicyF = oft::Clipped<oft::CayleyNeumann, oft::FrobeniusNorm>;
    const auto spec = oft::BlockSpec::from_features(32, 8);
    oft::BlockOrthogonal<float, PolicyF> op(spec, PolicyF(oft::CayleyNeumann{4}, 0.5));
    op.set_generators(oft_test::random_generators<float>(spec.generators(), 8, 3.0, rng));
    // ||Q||_F = 0.5 so rho <= 0.35: rho^10 < 3e-5, plus float rounding.
    EXPECT_LE(op.orthogonality_error(), std::pow(0.5 / std::sqrt(2.0), 10) + 64 * 8 * 1.2e-7);
  }
}

}  // namespace

// Newton–Schulz orthogonalization (newton_schulz.hpp): the closed-form error against exact
// Cayley, the Linear base's polar limit, the unrolled backward against central differences in
// double (rotation_vjp and the operators), and bad settings.
//
// Gradient tolerance as in tests/test_backward_gradcheck.cpp:
// |fd - analytic| <= 1e-6 max|analytic| + 4 eps |L|_abs / h, h = 1e-6.

#include <gtest/gtest.h>

#include <oft/oft.hpp>
#include <oft/newton_schulz.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft::NewtonSchulz;
using oft::NewtonSchulzBase;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

constexpr double kStep = 1e-6;
constexpr double kRelative = 1e-6;

template <class Loss>
void check_gradient(double* values, Index count, const std::vector<double>& analytic, Loss&& loss,
                    double loss_abs, const std::string& what) {
  double scale = 0.0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  ASSERT_GT(scale, 0.0) << what << ": analytic gradient is identically zero";
  const double tol = kRelative * scale + 4.0 * oft_test::eps<double>() * loss_abs / kStep;
  for (Index j = 0; j < count; ++j) {
    const double fd = oft::numerical_gradient(values + j, 1, loss, kStep)[0];
    EXPECT_NEAR(analytic[static_cast<size_t>(j)], fd, tol) << what << ": coordinate " << j;
  }
}

MatD rotation(const NewtonSchulz& p, const MatD& q) {
  MatD r;
  p.rotation(q, p.plan(q), r);
  return r;
}

MatD cayley(const MatD& q) {
  MatD r;
  oft::ExactCayley{}.rotation(q, {}, r);
  return r;
}

/// f^j(s) with f(s) = s (3 - s^2) / 2.
double iterate(double s, int j) {
  for (int i = 0; i < j; ++i) s = s * (3.0 - s * s) / 2.0;
  return s;
}

TEST(NewtonSchulz, RefusesBadSettings) {
  for (int bad : {0, -1, NewtonSchulz::kMaxIterations + 1}) {
    try {
      NewtonSchulz p(bad);
      ADD_FAILURE() << "iterations=" << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_TRUE(oft_test::contains(e.what(), "iterations=" + std::to_string(bad))) << e.what();
    }
  }
  EXPECT_THROW(NewtonSchulz(3, static_cast<NewtonSchulzBase>(7)), std::invalid_argument);
  NewtonSchulz p(3);
  p.iterations = 0;  // changed by hand: plan() refuses it
  const MatD zero = MatD::Zero(3, 3);
  EXPECT_THROW(p.plan(zero), std::invalid_argument);
  EXPECT_EQ(std::string(NewtonSchulz::name), "newton_schulz");
}

TEST(NewtonSchulz, ZeroGivesIdentity) {
  for (Index b : {1, 2, 7}) {
    const MatD q = MatD::Zero(b, b);
    for (auto base : {NewtonSchulzBase::CayleySquare, NewtonSchulzBase::Linear})
      EXPECT_TRUE((rotation(NewtonSchulz(4, base), q).array() == MatD::Identity(b, b).array()).all());
  }
}

// A = (I + Q)^2 is normal with the Cayley transform as polar factor, so
// ||R_j - R_cayley||_2 = 1 - f^j(s_min) and ||R_j^T R_j - I||_2 = 1 - f^j(s_min)^2 exactly, with
// s_min = (1 + lambda_min^2) / beta, beta = 1 + ||Q||_F^2 / 2. Rounding: each iteration is two
// products of size b with entries <= 1, c = 8 b eps per iteration.
TEST(NewtonSchulz, ClosedFormErrorAgainstCayley) {
  Rng rng(1);
  for (Index b : {3, 4, 8, 17}) {
    for (double rho : {0.05, 0.3, 0.8, 2.0}) {
      const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
      const Eigen::SelfAdjointEigenSolver<MatD> eig(MatD(q.transpose() * q),
                                                    Eigen::EigenvaluesOnly);
      const double lambda_min_sq = std::max(0.0, eig.eigenvalues()(0));
      const double beta = 1.0 + q.squaredNorm() / 2.0;
      const MatD exact = cayley(q);
      for (int j : {1, 2, 3, 5, 8}) {
        const MatD r = rotation(NewtonSchulz(j), q);
        const double s = iterate((1.0 + lambda_min_sq) / beta, j);
        const double rounding = 8.0 * b * (j + 2) * oft_test::eps<double>();
        const std::string at = "b=" + std::to_string(b) + " rho=" + std::to_string(rho) +
                               " j=" + std::to_string(j);
        EXPECT_NEAR(oft_test::spectral_norm(MatD(r - exact)), 1.0 - s, rounding) << at;
        EXPECT_NEAR(oft_test::orthogonality_defect(r), 1.0 - s * s, 2.0 * rounding) << at;
        EXPECT_LE(1.0 - s, oft::newton_schulz_distance_bound(q.norm(), j) + 1e-15) << at;
      }
    }
  }
}

// A = I + Q: the limit is the polar factor U V^T of I + Q (SVD), with eigenvalue angles
// atan(lambda), half of Cayley's.
TEST(NewtonSchulz, LinearBaseConvergesToPolarFactor) {
  Rng rng(2);
  for (Index b : {2, 5, 16}) {
    const MatD q = oft_test::random_skew_with_rho(b, 0.4, rng);
    const MatD a = MatD::Identity(b, b) + q;
    const Eigen::JacobiSVD<MatD> svd(a, Eigen::ComputeFullU | Eigen::ComputeFullV);
    const MatD polar = svd.matrixU() * svd.matrixV().transpose();
    const MatD r = rotation(NewtonSchulz(12, NewtonSchulzBase::Linear), q);
    EXPECT_TRUE(oft_test::within_abs(r, polar, 64.0 * b * oft_test::eps<double>())) << b;
    // R^2 = Cayley(Q): the eigenvalue angles double.
    EXPECT_TRUE(oft_test::within_abs(MatD(r * r), cayley(q), 64.0 * b * oft_test::eps<double>()))
        << b;
  }
}

/// rotation_vjp at the packed row against central differences of L = <G, R(Q(theta))>.
void gradcheck_vjp(const NewtonSchulz& policy, Index b, double rho, Rng& rng) {
  const MatD q0 = oft_test::random_skew_with_rho(b, rho, rng);
  std::vector<double> theta(static_cast<size_t>(oft::packed_size(b)));
  oft::pack_skew(q0, theta.data());
  MatD q(b, b), r, dq;
  oft::unpack_skew(theta.data(), b, q);
  r = rotation(policy, q);
  const MatD g = oft_test::random_matrix<double>(b, b, rng);
  policy.rotation_vjp(q, r, policy.plan(q), g, dq);
  std::vector<double> analytic(theta.size());
  oft::pack_skew_gradient(dq, analytic.data());
  auto loss = [&] {
    MatD qq(b, b);
    oft::unpack_skew(theta.data(), b, qq);
    return (g.array() * rotation(policy, qq).array()).sum();
  };
  const double loss_abs = (g.cwiseAbs().array() * r.cwiseAbs().array()).sum() + 1.0;
  check_gradient(theta.data(), static_cast<Index>(theta.size()), analytic, loss, loss_abs,
                 "b=" + std::to_string(b) + " rho=" + std::to_string(rho) +
                     " j=" + std::to_string(policy.iterations) +
                     (policy.base == NewtonSchulzBase::Linear ? " linear" : " square"));
  // The VJP of the full matrix map too (every entry of Q, not only skew directions): the
  // unrolled backward differentiates the map on all matrices.
  MatD work = q;
  auto loss_full = [&] { return (g.array() * rotation(policy, work).array()).sum(); };
  const std::vector<double> analytic_full(dq.data(), dq.data() + b * b);
  check_gradient(work.data(), b * b, analytic_full, loss_full, loss_abs, "full matrix");
}

TEST(NewtonSchulz, RotationVjpGradcheck) {
  Rng rng(3);
  for (Index b : {2, 3, 8, 16})
    for (double rho : {0.2, 1.5})
      for (int j : {1, 2, 5})
        for (auto base : {NewtonSchulzBase::CayleySquare, NewtonSchulzBase::Linear})
          gradcheck_vjp(NewtonSchulz(j, base), b, rho, rng);
}

// Many iterations: the map is exact Cayley to rounding, and so is its derivative (the
// iteration's derivative converges with it), so the VJP tends to exact Cayley's.
TEST(NewtonSchulz, ConvergedGradientIsCayleys) {
  Rng rng(4);
  for (Index b : {3, 8}) {
    const MatD q = oft_test::random_skew_with_rho(b, 0.3, rng);
    const MatD g = oft_test::random_matrix<double>(b, b, rng);
    const NewtonSchulz ns(10);
    MatD dq_ns, dq_cayley;
    const MatD r = rotation(ns, q);
    ns.rotation_vjp(q, r, ns.plan(q), g, dq_ns);
    oft::ExactCayley{}.rotation_vjp(q, cayley(q), {}, g, dq_cayley);
    // Compared on skew directions (the packed gradient), where both maps are defined alike.
    std::vector<double> a(static_cast<size_t>(oft::packed_size(b))), e(a.size());
    oft::pack_skew_gradient(dq_ns, a.data());
    oft::pack_skew_gradient(dq_cayley, e.data());
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], e[i], 1e-10 * (1.0 + std::abs(e[i]))) << "b=" << b << " i=" << i;
  }
}

template <class Operator, class Loss>
void check_operator(Operator& op, oft::Generators<double>& theta, const RowMat<double>& x,
                    const RowMat<double>& dy, Loss&& loss, const std::string& what) {
  op.set_generators(theta);
  RowMat<double> dx(x.rows(), x.cols());
  oft::Generators<double> dtheta(theta.count(), theta.block_size());
  oft::Workspace<double> ws;
  op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), ws);
  const Index count = theta.values().size();
  const std::vector<double> analytic(dtheta.values().data(), dtheta.values().data() + count);
  check_gradient(theta.values().data(), count, analytic, loss, 100.0, what);
}

// The full backward through BlockOrthogonal and Butterfly, and the layer.
TEST(NewtonSchulz, OperatorsBackwardGradcheck) {
  Rng rng(5);
  const NewtonSchulz policy(3);
  const Index b = 4, d = 16, n = 3;
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
  RowMat<double> y(n, d);
  for (bool shared : {false, true}) {
    const auto spec = oft::BlockSpec::from_features(d, b, shared);
    oft::Generators<double> theta =
        oft_test::random_generators<double>(spec.generators(), b, 0.5, rng);
    oft::BlockOrthogonal<double, NewtonSchulz> op(spec, policy), probe(spec, policy);
    auto loss = [&] {
      probe.set_generators(theta);
      probe.apply(oft::view(x), oft::view(y));
      return (dy.array() * y.array()).sum();
    };
    check_operator(op, theta, x, dy, loss, shared ? "BlockOrthogonal shared" : "BlockOrthogonal");
  }
  {
    const auto spec = oft::ButterflySpec::from_features(d, b, 2);
    oft::Generators<double> theta =
        oft_test::random_generators<double>(spec.generators(), b, 0.5, rng);
    oft::Butterfly<double, NewtonSchulz> op(spec, policy), probe(spec, policy);
    auto loss = [&] {
      probe.set_generators(theta);
      probe.apply(oft::view(x), oft::view(y));
      return (dy.array() * y.array()).sum();
    };
    check_operator(op, theta, x, dy, loss, "Butterfly");
  }
  {
    const Index n_out = 5;
    const RowMat<double> w = oft_test::random_matrix<double>(n_out, d, rng);
    const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
    oft::OftLinear<double, NewtonSchulz> layer(oft::view(w), nullptr, b, false, policy);
    oft::Generators<double> theta = oft_test::random_generators<double>(d / b, b, 0.5, rng);
    layer.set_generators(theta);
    RowMat<double> dx(n, d), z(n, n_out);
    oft::Generators<double> dtheta(d / b, b);
    oft::Workspace<double> ws;
    layer.backward(oft::view(x), oft::view(dz), oft::view(dx), dtheta.view(), ws);
    const std::vector<double> analytic(dtheta.values().data(),
                                       dtheta.values().data() + dtheta.values().size());
    auto loss = [&] {
      layer.set_generators(theta);
      oft::Workspace<double> w2;
      layer.forward(oft::view(x), oft::view(z), w2);
      return (dz.array() * z.array()).sum();
    };
    check_gradient(theta.values().data(), theta.values().size(), analytic, loss, 100.0,
                   "OftLinear");
  }
}

// float operator: orthogonal to the closed form plus float rounding.
TEST(NewtonSchulz, FloatOperator) {
  Rng rng(6);
  const Index b = 16;
  const auto spec = oft::BlockSpec::from_features(4 * b, b);
  const oft::Generators<float> theta =
      oft_test::random_generators<float>(spec.generators(), b, 0.3, rng);
  oft::BlockOrthogonal<float, NewtonSchulz> op(spec, NewtonSchulz(5));
  op.set_generators(theta);
  // ||Q||_F^2 / 2 = 0.09: the closed-form bound after 5 iterations is far below float eps.
  const double bound = 2.0 * oft::newton_schulz_distance_bound(0.3 * std::sqrt(2.0), 5);
  EXPECT_LE(op.orthogonality_error(), bound + 8.0 * b * 7 * oft_test::eps<float>());
}

}  // namespace

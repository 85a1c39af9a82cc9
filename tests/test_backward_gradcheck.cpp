// Every backward against central finite differences in double (finite_difference.hpp):
// BlockOrthogonal::backward (dtheta and dX) for each parameterization, shared and unshared
// blocks, b in {2, 3, 8, 32, 64}, N in {1, 7, 128}; and each policy's rotation_vjp on its own.
//
// Loss L(theta, X) = sum(dY .* apply(X)), so dL/dtheta and dL/dX are exactly what backward
// returns for upstream gradient dY. Generators are scaled to ||Q||_F / sqrt(2) = 0.3 (rho <= 0.3,
// safely inside the Neumann series' disc).
//
// Tolerance: central differences with h = 1e-6 have truncation error h^2/6 |L'''| ~ 1e-13 of the
// gradient scale here (L is a polynomial or rational function of theta with O(1) derivatives at
// rho <= 0.3) and rounding error about eps |L|_abs / h, where |L|_abs = sum |dY| (|X| |R|) bounds
// the rounding of each loss evaluation. So
//     |fd_j - analytic_j| <= 1e-6 ||analytic||_inf + 4 eps |L|_abs / h,
// where the first term leaves a margin of 100-1000x over the observed 1e-9..1e-8 relative error
// while still catching any wrong term of the gradient, and the second is the rigorous rounding
// allowance of two loss evaluations (it matters only for the largest N d).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/exponential.hpp>
#include <oft/finite_difference.hpp>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

constexpr double kStep = 1e-6;      // finite-difference step h
constexpr double kRelative = 1e-6;  // relative to the gradient's max entry
constexpr double kRowNorm = 0.3;    // ||Q||_F / sqrt(2)
constexpr Index kSampled = 24;      // coordinates checked for b >= 32
constexpr int kDirections = 3;      // random directional derivatives for every size

const Index kBlockSizes[] = {2, 3, 8, 32, 64};
const Index kTokens[] = {1, 7, 128};

/// Coordinates to check: all of them when `all`, else kSampled distinct random ones.
std::vector<Index> pick_coordinates(Index count, bool all, Rng& rng) {
  std::vector<Index> picked;
  if (all || count <= kSampled) {
    for (Index j = 0; j < count; ++j) picked.push_back(j);
    return picked;
  }
  while (static_cast<Index>(picked.size()) < kSampled) {
    const Index j = rng.index(count);
    if (std::find(picked.begin(), picked.end(), j) == picked.end()) picked.push_back(j);
  }
  return picked;
}

/// Checks the analytic gradient `analytic` (count values) of `loss` with respect to the values at
/// `values`: per-coordinate central differences on `coordinates`, plus kDirections random
/// directional derivatives over all values.
template <class Loss>
void check_gradient(double* values, Index count, const std::vector<double>& analytic, Loss&& loss,
                    const std::vector<Index>& coordinates, double loss_abs, Rng& rng,
                    const std::string& what) {
  double scale = 0.0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  ASSERT_GT(scale, 0.0) << what << ": analytic gradient is identically zero";
  const double tol = kRelative * scale + 4.0 * oft_test::eps<double>() * loss_abs / kStep;

  for (Index j : coordinates) {
    const double fd = oft::numerical_gradient(values + j, 1, loss, kStep)[0];
    EXPECT_NEAR(analytic[static_cast<size_t>(j)], fd, tol)
        << what << ": coordinate " << j << " of " << count << " (scale " << scale << ")";
  }

  std::vector<double> base(values, values + count);
  for (int k = 0; k < kDirections; ++k) {
    std::vector<double> direction(static_cast<size_t>(count));
    double norm = 0.0;
    for (double& v : direction) {
      v = rng.uniform();
      norm += v * v;
    }
    double expected = 0.0;
    for (Index j = 0; j < count; ++j) {
      direction[static_cast<size_t>(j)] /= std::sqrt(norm);
      expected += analytic[static_cast<size_t>(j)] * direction[static_cast<size_t>(j)];
    }
    double t = 0.0;
    auto along = [&] {
      for (Index j = 0; j < count; ++j)
        values[j] = base[static_cast<size_t>(j)] + t * direction[static_cast<size_t>(j)];
      return loss();
    };
    const double fd = oft::numerical_gradient(&t, 1, along, kStep)[0];
    for (Index j = 0; j < count; ++j) values[j] = base[static_cast<size_t>(j)];
    // A unit direction: the directional derivative is bounded by sqrt(count) * scale.
    EXPECT_NEAR(expected, fd,
                kRelative * scale * std::sqrt(double(count)) +
                    4.0 * oft_test::eps<double>() * loss_abs / kStep)
        << what << ": direction " << k;
  }
}

/// Gradient check of BlockOrthogonal<double, Policy>::backward for one configuration.
template <class Policy>
void gradcheck_operator(const Policy& policy, Index b, Index n, bool shared, Rng& rng) {
  const Index r = b <= 8 ? 3 : 2;
  const Index d = r * b;
  const auto spec = oft::BlockSpec::from_features(d, b, shared);
  const std::string what = std::string(Policy::name) + " b=" + std::to_string(b) +
                           " N=" + std::to_string(n) + (shared ? " shared" : " unshared");
  const oft::Generators<double> theta =
      oft_test::random_generators<double>(spec.generators(), b, kRowNorm, rng);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);

  oft::BlockOrthogonal<double, Policy> op(spec, policy);
  op.set_generators(theta);
  RowMat<double> dx(n, d);
  oft::Generators<double> dtheta(spec.generators(), b);
  oft::Workspace<double> workspace;
  op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
  const RowMat<double> dense = op.dense();
  const double loss_abs = (dy.cwiseAbs().array() * (x.cwiseAbs() * dense.cwiseAbs()).array()).sum();

  // dL/dtheta.
  oft::Generators<double> work = theta;
  oft::BlockOrthogonal<double, Policy> probe(spec, policy);
  RowMat<double> y(n, d);
  auto loss_theta = [&] {
    probe.set_generators(work);
    probe.apply(oft::view(x), oft::view(y));
    return (dy.array() * y.array()).sum();
  };
  const Index count = spec.generators() * spec.packed();
  const std::vector<double> analytic(dtheta.values().data(), dtheta.values().data() + count);
  check_gradient(work.values().data(), count, analytic, loss_theta,
                 pick_coordinates(count, b <= 8, rng), loss_abs, rng, what + " dtheta");

  // dL/dX (L is linear in X, so this checks dX = dY R^T through the same machinery).
  RowMat<double> x_work = x;
  auto loss_x = [&] {
    op.apply(oft::view(x_work), oft::view(y));
    return (dy.array() * y.array()).sum();
  };
  const std::vector<double> analytic_x(dx.data(), dx.data() + n * d);
  check_gradient(x_work.data(), n * d, analytic_x, loss_x,
                 pick_coordinates(n * d, b <= 8 && n <= 7, rng), loss_abs, rng, what + " dX");
}

template <class Policy>
void gradcheck_grid(const Policy& policy, std::uint64_t seed) {
  Rng rng(seed);
  for (Index b : kBlockSizes)
    for (Index n : kTokens)
      for (bool shared : {false, true}) gradcheck_operator(policy, b, n, shared, rng);
}

TEST(GradcheckOperator, ExactCayley) { gradcheck_grid(oft::ExactCayley{}, 1); }
TEST(GradcheckOperator, CayleyNeumannK0) { gradcheck_grid(oft::CayleyNeumann{0}, 2); }
TEST(GradcheckOperator, CayleyNeumannK1) { gradcheck_grid(oft::CayleyNeumann{1}, 3); }
TEST(GradcheckOperator, CayleyNeumannK3) { gradcheck_grid(oft::CayleyNeumann{3}, 4); }
TEST(GradcheckOperator, CayleyNeumannK4) { gradcheck_grid(oft::CayleyNeumann{4}, 5); }
TEST(GradcheckOperator, CayleyNeumannTolerance) {
  gradcheck_grid(oft::CayleyNeumannTolerance{1e-8}, 6);
}
TEST(GradcheckOperator, MatrixExponential) { gradcheck_grid(oft::MatrixExponential{}, 7); }

// --- rotation_vjp on its own ------------------------------------------------------------------

// dQ = rotation_vjp(Q, R, plan, G) against central differences of <G, R(Q)> over all b^2 entries
// of a dense (not necessarily skew) Q, with the plan fixed at the base point.
template <class Policy>
void gradcheck_vjp(const Policy& policy, Index b, double rho, Rng& rng) {
  const std::string what =
      std::string(Policy::name) + " b=" + std::to_string(b) + " rho=" + std::to_string(rho);
  const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
  const MatD g = oft_test::random_matrix<double>(b, b, rng);
  const auto plan = policy.plan(q);
  MatD r, dq;
  policy.rotation(q, plan, r);
  policy.rotation_vjp(q, r, plan, g, dq);

  MatD work = q, rw;
  auto loss = [&] {
    policy.rotation(work, plan, rw);
    return (g.array() * rw.array()).sum();
  };
  const std::vector<double> analytic(dq.data(), dq.data() + b * b);
  const double loss_abs = (g.cwiseAbs().array() * r.cwiseAbs().array()).sum() + 1.0;
  check_gradient(work.data(), b * b, analytic, loss, pick_coordinates(b * b, true, rng), loss_abs,
                 rng, what + " rotation_vjp");
}

TEST(GradcheckRotationVjp, EveryPolicy) {
  Rng rng(20);
  for (Index b : {2, 3, 8, 16}) {
    for (double rho : {0.3, 2.0}) {
      gradcheck_vjp(oft::ExactCayley{}, b, rho, rng);
      gradcheck_vjp(oft::MatrixExponential{}, b, rho, rng);
      // Tolerance mode beyond the series' radius: the exact-Cayley fallback's VJP.
      gradcheck_vjp(oft::CayleyNeumannTolerance(1e-8, oft::OnDivergence::UseExactCayley), b, rho,
                    rng);
    }
    for (int k : {0, 1, 2, 3, 4, 6}) gradcheck_vjp(oft::CayleyNeumann{k}, b, 0.3, rng);
    gradcheck_vjp(oft::CayleyNeumannTolerance(1e-10), b, 0.3, rng);
    // The polynomial's VJP is exact for every Q, also where the series itself diverges.
    gradcheck_vjp(oft::CayleyNeumann{3}, b, 1.5, rng);
  }
}

}  // namespace

// Tolerance mode as a trainer uses it (CayleyNeumannTolerance, cayley_neumann.hpp; SPEC sections 3
// and 8; docs/conventions.md section 5): the jumps of theta -> R where k changes, the gradient
// away from the switches and at theta = 0, the caps on max_terms, and both error measures.
//
// Sweeps follow Q(s) = s Q0 with ||Q0||_2 = 1, so rho = s. Switch points are found on a grid that
// is uniform in the real-valued k of the distance formula (s = tol^(1/(u+1)), u in steps of 1/8,
// so no two switches of the exact-rho choice fall between neighbours) plus a uniform grid on small
// s (where the free bound decides), then located by bisection on s to 1e-13 relative.
//
// Rounding allowances (test_support.hpp's policy): an R_k evaluated by Horner in double is within
// 2 (k + 2) b eps P(rho) of the polynomial (P(rho) = sum_j c_j rho^j, see test_cayley_neumann.cpp)
// and exact Cayley within 4 b eps sqrt(1 + rho^2); a difference of two such matrices and its SVD
// norm get the sum plus b eps.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/finite_difference.hpp>
#include <oft/neumann.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;
using Policy = oft::CayleyNeumannTolerance;
using Plan = Policy::Plan;

// --- helpers ------------------------------------------------------------------------------------

bool same_choice(const Plan& a, const Plan& b) {
  return a.exact == b.exact && (a.exact || a.terms == b.terms);
}

MatD rotation(const Policy& policy, const MatD& q, const Plan& plan) {
  MatD r;
  policy.rotation(q, plan, r);
  return r;
}

std::string format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

MatD exact_cayley(const MatD& q) {
  MatD r;
  oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, r);
  return r;
}

/// Q^m by repeated products (a reference independent of the Horner pass).
MatD power(const MatD& q, int m) {
  MatD p = MatD::Identity(q.rows(), q.cols());
  for (int j = 0; j < m; ++j) p = p * q;
  return p;
}

/// Rounding allowance of one R evaluated by `plan` at spectral norm rho (see the file comment).
double evaluation_allowance(const Plan& plan, double rho, Index b) {
  const double eps = oft_test::eps<double>();
  if (plan.exact) return 4.0 * b * eps * std::sqrt(1.0 + rho * rho);
  return 2.0 * (plan.terms + 2) * b * eps * oft_test::neumann_scale(rho, plan.terms);
}

/// What the theory says the jump between the choices `lo` and `hi` at Q is: R_k = R (I - Q^(k+1))
/// (Q commutes with R, R orthogonal), so ||R_k2 - R_k1||_2 = ||Q^(k1+1) - Q^(k2+1)||_2 and
/// ||R - R_k||_2 = ||Q^(k+1)||_2.
double predicted_jump(const MatD& q, const Plan& lo, const Plan& hi) {
  if (lo.exact && hi.exact) return 0.0;
  if (lo.exact) return oft_test::spectral_norm(power(q, hi.terms + 1));
  if (hi.exact) return oft_test::spectral_norm(power(q, lo.terms + 1));
  return oft_test::spectral_norm(MatD(power(q, lo.terms + 1) - power(q, hi.terms + 1)));
}

struct Switch {
  double s_lo, s_hi;
  Plan lo, hi;
};

/// The sweep grid of the file comment on (0, s_max].
std::vector<double> sweep_grid(double tol, int max_terms, double s_max) {
  std::vector<double> grid{0.0};
  for (int i = 1; i <= 400; ++i) grid.push_back(0.25 * i / 400.0);  // the free bound's region
  // Up to 2 (max_terms + 4): the orthogonality measure's switches sit at u = 2k + 1.
  for (int i = 0; i <= 16 * (max_terms + 4); ++i) {
    const double s = std::pow(tol, 1.0 / (1.0 + i / 8.0));
    if (s < s_max) grid.push_back(s);
  }
  for (int i = 0; i <= 100; ++i) grid.push_back(0.9 + (s_max - 0.9) * i / 100.0);
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  return grid;
}

/// Every change of the policy's choice between neighbours of the grid, bisected on s.
std::vector<Switch> find_switches(const Policy& policy, const MatD& q0, double s_max) {
  const std::vector<double> grid = sweep_grid(policy.tolerance, policy.max_terms, s_max);
  std::vector<Switch> switches;
  Plan previous = policy.plan(MatD(grid[0] * q0));
  for (size_t i = 1; i < grid.size(); ++i) {
    const Plan current = policy.plan(MatD(grid[i] * q0));
    if (!same_choice(previous, current)) {
      Switch sw{grid[i - 1], grid[i], previous, current};
      for (int iteration = 0; iteration < 200 && sw.s_hi - sw.s_lo > 1e-13 * sw.s_hi; ++iteration) {
        const double mid = 0.5 * (sw.s_lo + sw.s_hi);
        const Plan at_mid = policy.plan(MatD(mid * q0));
        if (same_choice(at_mid, sw.lo)) {
          sw.s_lo = mid;
        } else {
          sw.s_hi = mid;
          sw.hi = at_mid;
        }
      }
      switches.push_back(sw);
    }
    previous = current;
  }
  return switches;
}

struct JumpReport {
  double largest_jump = 0.0;        ///< max ||R(s+) - R(s-)||_2 over the switches
  double largest_ratio = 0.0;       ///< the same divided by the measure's per-choice bound
  double largest_down_ratio = 0.0;  ///< the same over the switches to a smaller k
  int switches = 0, decreasing = 0, to_exact = 0;
  int largest_terms = 0;
};

/// Sweeps s over (0, s_max], finds every switch and checks each jump against the theory:
///   - the jump is the predicted ||Q^(k1+1) - Q^(k2+1)||_2 (or ||Q^(k+1)||_2 next to exact
///     Cayley) up to the continuous change ||R_k1(Q(s+)) - R_k1(Q(s-))||_2 and rounding;
///   - it is at most 2 * bound, bound = tol (distance) or sqrt(tol) (orthogonality), the distance
///     of every admissible choice to exact Cayley;
///   - at a k -> k + step switch where both sides used the exact rho (= s), the jump is
///     bound * |1 - (i s)^step| = bound sqrt(1 + s^2) (step 1) or bound (1 + s^2) (step 2).
JumpReport check_sweep(const Policy& policy, const MatD& q0, double s_max,
                       const std::string& what) {
  const Index b = q0.rows();
  const double eps = oft_test::eps<double>();
  const bool orthogonality = policy.measure == oft::ToleranceMeasure::Orthogonality;
  const double bound = orthogonality ? std::sqrt(policy.tolerance) : policy.tolerance;
  JumpReport report;
  for (const Switch& sw : find_switches(policy, q0, s_max)) {
    const std::string where = what + " s=" + std::to_string(sw.s_hi) + " k " +
                              (sw.lo.exact ? "exact" : std::to_string(sw.lo.terms)) + " -> " +
                              (sw.hi.exact ? "exact" : std::to_string(sw.hi.terms));
    const MatD q_lo = sw.s_lo * q0, q_hi = sw.s_hi * q0;
    const MatD r_lo = rotation(policy, q_lo, sw.lo), r_hi = rotation(policy, q_hi, sw.hi);
    const double jump = oft_test::spectral_norm(MatD(r_hi - r_lo));
    const double continuous = oft_test::spectral_norm(MatD(rotation(policy, q_hi, sw.lo) - r_lo));
    const double allowance = evaluation_allowance(sw.lo, sw.s_hi, b) +
                             2.0 * evaluation_allowance(sw.hi, sw.s_hi, b) + 2.0 * b * eps;
    // The predicted value's own rounding: powers up to k + 1 of Q, each product (k + 1) b eps.
    const int highest = std::max(sw.lo.exact ? 0 : sw.lo.terms, sw.hi.exact ? 0 : sw.hi.terms);
    const double prediction_allowance = 2.0 * (highest + 2) * b * eps;

    EXPECT_NEAR(jump, predicted_jump(q_hi, sw.lo, sw.hi),
                continuous + allowance + prediction_allowance)
        << where;
    EXPECT_LE(jump, 2.0 * bound + continuous + allowance) << where;
    // The switch is a jump, not the continuous change of R over [s-, s+].
    EXPECT_LT(continuous, 1e-3 * jump) << where;

    const bool exact_rho_both = !sw.lo.exact && !sw.hi.exact &&
                                std::abs(sw.lo.rho - sw.s_lo) <= 1e-12 &&
                                std::abs(sw.hi.rho - sw.s_hi) <= 1e-12;
    const int step = orthogonality ? 2 : 1;
    if (exact_rho_both && sw.hi.terms == sw.lo.terms + step) {
      const double s = sw.s_hi;
      const double expected = bound * (orthogonality ? 1.0 + s * s : std::sqrt(1.0 + s * s));
      // bound = s*^(k+1) at the switch s*: over [s-, s+] it changes by (k + 1) (s+ - s-) / s.
      const double drift = bound * (sw.lo.terms + 1) * (sw.s_hi - sw.s_lo) / sw.s_lo;
      EXPECT_NEAR(jump, expected, continuous + allowance + drift) << where;
    }
    if (orthogonality) {
      // The orthogonality measure still bounds what it promises, on both sides.
      const MatD* sides[2] = {&r_lo, &r_hi};
      const Plan* plans[2] = {&sw.lo, &sw.hi};
      const double rhos[2] = {sw.s_lo, sw.s_hi};
      for (int side = 0; side < 2; ++side) {
        if (plans[side]->exact) continue;
        const int k = plans[side]->terms;
        const double p = oft_test::neumann_scale(rhos[side], k);
        EXPECT_LE(oft_test::orthogonality_defect(*sides[side]),
                  policy.tolerance + 2.0 * (k + 2) * b * eps * p * p)
            << where;
      }
    }
    ++report.switches;
    const bool down = !sw.lo.exact && !sw.hi.exact && sw.hi.terms < sw.lo.terms;
    report.decreasing += down;
    if (down) report.largest_down_ratio = std::max(report.largest_down_ratio, jump / bound);
    report.to_exact += sw.hi.exact;
    report.largest_terms = std::max(report.largest_terms, sw.lo.exact ? 0 : sw.lo.terms);
    report.largest_jump = std::max(report.largest_jump, jump);
    report.largest_ratio = std::max(report.largest_ratio, jump / bound);
  }
  std::printf("  %-36s %4d switches, largest jump %.3e = %.4f x %s (bound 2); %d down, %.4f\n",
              what.c_str(), report.switches, report.largest_jump, report.largest_ratio,
              orthogonality ? "sqrt(tol)" : "tol", report.decreasing, report.largest_down_ratio);
  return report;
}

/// A random skew b x b generator with ||Q0||_2 = 1, so that rho(s Q0) = s.
MatD unit_generator(Index b, Rng& rng) { return oft_test::random_skew_with_rho(b, 1.0, rng); }

/// A skew generator (b even) whose eigenvalues are all +-i: U J U^T with J = diag([[0, 1],
/// [-1, 0]], ...) and U a random orthogonal matrix. ||Q0||_2 = 1 and ||Q0||_F / sqrt(2) =
/// sqrt(b/2): the free bound's worst case.
MatD flat_spectrum_generator(Index b, Rng& rng) {
  MatD j = MatD::Zero(b, b);
  for (Index i = 0; i + 1 < b; i += 2) {
    j(i, i + 1) = 1.0;
    j(i + 1, i) = -1.0;
  }
  const Eigen::HouseholderQR<MatD> qr(oft_test::random_matrix<double>(b, b, rng).cast<double>());
  const MatD u = qr.householderQ();
  return u * j * u.transpose();
}

// --- settings ------------------------------------------------------------------------------------

TEST(ToleranceMode, DefaultsAndSourceCompatibleConstructor) {
  const Policy defaults;
  EXPECT_EQ(defaults.tolerance, 1e-6);
  EXPECT_EQ(defaults.on_divergence, oft::OnDivergence::Throw);
  EXPECT_EQ(defaults.max_terms, 64);
  EXPECT_EQ(defaults.min_terms, 1);
  EXPECT_EQ(defaults.measure, oft::ToleranceMeasure::DistanceToCayley);
  // The three-argument constructor of earlier releases.
  const Policy old_style(1e-4, oft::OnDivergence::UseExactCayley, 100);
  EXPECT_EQ(old_style.tolerance, 1e-4);
  EXPECT_EQ(old_style.on_divergence, oft::OnDivergence::UseExactCayley);
  EXPECT_EQ(old_style.max_terms, 100);
  // with_* return modified copies and leave the original alone.
  const Policy tuned =
      old_style.with_measure(oft::ToleranceMeasure::Orthogonality).with_min_terms(0);
  EXPECT_EQ(tuned.measure, oft::ToleranceMeasure::Orthogonality);
  EXPECT_EQ(tuned.min_terms, 0);
  EXPECT_EQ(tuned.tolerance, 1e-4);
  EXPECT_EQ(tuned.max_terms, 100);
  EXPECT_EQ(old_style.measure, oft::ToleranceMeasure::DistanceToCayley);
  EXPECT_EQ(old_style.min_terms, 1);
}

TEST(ToleranceMode, SettingsAreChecked) {
  using oft_test::throws_with;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { Policy(1e-6, oft::OnDivergence::Throw, oft::kMaxNeumannTerms + 1); },
      {"1025", "kMaxNeumannTerms"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { Policy(1e-6, oft::OnDivergence::Throw, INT_MAX); }, {"2147483647"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { Policy(1e-6, oft::OnDivergence::Throw, INT_MIN); }, {"-2147483648"}));
  EXPECT_NO_THROW(Policy(1e-6, oft::OnDivergence::Throw, oft::kMaxNeumannTerms));
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { (void)Policy(1e-6).with_min_terms(-1); },
                                                 {"min_terms", "-1"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)Policy(1e-6, oft::OnDivergence::Throw, 8).with_min_terms(9); },
      {"min_terms", "9", "max_terms=8"}));
  // The orthogonality measure needs an even k in [min_terms, max_terms].
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] {
        (void)Policy(1e-6, oft::OnDivergence::Throw, 1)
            .with_measure(oft::ToleranceMeasure::Orthogonality);
      },
      {"even", "min_terms=1", "max_terms=1"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)Policy(1e-6).with_measure(static_cast<oft::ToleranceMeasure>(7)); }, {"7"}));
  // A field changed by hand is refused by plan(), not trusted.
  Policy edited(1e-6);
  edited.max_terms = INT_MAX;
  const MatD q = MatD::Zero(3, 3);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { edited.plan(q); }, {"2147483647"}));
}

// --- the jump bound ------------------------------------------------------------------------------

// Every switch of k (and the switch to exact Cayley past max_terms) moves R by at most 2 tol, and
// by exactly the predicted ||Q^(k1+1) - Q^(k2+1)||_2; k -> k+1 from the exact rho by
// tol sqrt(1 + rho^2). The sweep reaches every k up to max_terms, then exact Cayley, up to
// rho = 0.999. The flat-spectrum generators (free bound sqrt(b/2) rho) also switch from a k the
// free bound picked down to a smaller k of the exact rho where the exact rho takes over
// (b = 16, tol = 1e-2: bound 2.8 rho gives k = 2 up to rho = 0.077, where rho^2 <= tol gives
// k = 1), and that jump is within the bound too.
TEST(ToleranceMode, DistanceMeasureJumpsAtMostTwiceTheTolerance) {
  Rng rng(1);
  int decreasing = 0;
  for (int kind = 0; kind < 3; ++kind) {
    const Index b = kind == 0 ? 8 : (kind == 1 ? 16 : 32);
    const MatD q0 = kind == 0 ? unit_generator(b, rng) : flat_spectrum_generator(b, rng);
    ASSERT_NEAR(oft_test::spectral_norm(q0), 1.0, 8.0 * b * oft_test::eps<double>());
    for (double tol : {1e-2, 1e-4, 1e-6}) {
      const Policy policy(tol, oft::OnDivergence::UseExactCayley);
      const JumpReport report = check_sweep(policy, q0, 0.999,
                                            std::string(kind == 0 ? "distance" : "distance flat") +
                                                " b=" + std::to_string(b) + " tol=" + format(tol));
      EXPECT_LE(report.largest_ratio, 2.0);
      EXPECT_GE(report.switches, policy.max_terms);  // every k from 1 (or 2) to max_terms
      EXPECT_EQ(report.largest_terms, policy.max_terms);
      EXPECT_EQ(report.to_exact, 1);         // then exact Cayley, once
      EXPECT_GT(report.largest_ratio, 1.0);  // the bound sqrt(1 + rho^2) is reached
      decreasing += report.decreasing;
    }
  }
  EXPECT_GE(decreasing, 2);  // the free-bound / exact-rho switch was exercised
}

// With max_terms = kMaxNeumannTerms the series is used up to rho = tol^(1/1025) (0.9955 for
// tol = 1e-2): 1024 switches, each within the bound.
TEST(ToleranceMode, DistanceMeasureUpToRhoNearOne) {
  Rng rng(2);
  const MatD q0 = unit_generator(6, rng);
  const Policy policy(1e-2, oft::OnDivergence::UseExactCayley, oft::kMaxNeumannTerms);
  const JumpReport report = check_sweep(policy, q0, 0.9995, "distance b=6 tol=1e-2 max=1024");
  EXPECT_LE(report.largest_ratio, 2.0);
  EXPECT_EQ(report.largest_terms, oft::kMaxNeumannTerms);
  EXPECT_GE(report.switches, oft::kMaxNeumannTerms);
  EXPECT_EQ(report.to_exact, 1);
}

// The orthogonality measure: even k, each R_k orthogonal to tol, but only sqrt(tol) from exact
// Cayley: its switches jump by sqrt(tol) (1 + rho^2), far more than 2 tol. That is why it is not
// the default (docs/conventions.md section 5).
TEST(ToleranceMode, OrthogonalityMeasureJumpsBySqrtTolerance) {
  Rng rng(3);
  const MatD q0 = unit_generator(8, rng);
  for (double tol : {1e-2, 1e-4, 1e-6}) {
    const Policy policy = Policy(tol, oft::OnDivergence::UseExactCayley)
                              .with_measure(oft::ToleranceMeasure::Orthogonality);
    const JumpReport report =
        check_sweep(policy, q0, 0.999, "orthogonality b=8 tol=" + format(tol));
    EXPECT_LE(report.largest_ratio, 2.0);  // relative to sqrt(tol)
    EXPECT_GT(report.largest_ratio, 1.0);
    EXPECT_GT(report.largest_jump, 0.5 * std::sqrt(tol));  // > 2 tol: the sqrt(tol) scale
    EXPECT_EQ(report.to_exact, 1);
  }
}

// --- gradients -----------------------------------------------------------------------------------

// dtheta of BlockOrthogonal<double, CayleyNeumannTolerance>::backward against central differences
// of L(theta) = <dY, X R(theta)>, re-planning at every evaluation (the policy as a trainer sees
// it), at generators chosen between two switches: s = tol^(1/(k+1/2)) picks k (k = 1 from
// s = tol^(1/1.2), deeper inside, so that the free bound gives k = 1 too), and h = 1e-6 moves rho
// by far less than the distance to either switch. The plans at every perturbed theta are checked to
// equal the base plans. One generator has rho > 1 (exact Cayley fallback). Tolerance as in
// test_backward_gradcheck.cpp: 1e-6 of the gradient's largest entry (truncation h^2 ~ 1e-12
// relative, far below) plus 4 eps |L|_abs / h of rounding.
TEST(ToleranceMode, GradientMatchesFiniteDifferencesAwayFromSwitches) {
  Rng rng(4);
  const Index b = 6, n = 5;
  const double h = 1e-6;
  for (double tol : {1e-2, 1e-6}) {
    const Policy policy(tol, oft::OnDivergence::UseExactCayley);
    const std::vector<double> scales = {std::pow(tol, 1.0 / 1.2), std::pow(tol, 1.0 / 4.5),
                                        std::pow(tol, 1.0 / 17.5), 1.4};
    const Index r = static_cast<Index>(scales.size()), d = r * b;
    const auto spec = oft::BlockSpec::from_features(d, b);
    oft::Generators<double> theta(r, b);
    for (Index g = 0; g < r; ++g)
      oft::pack_skew(MatD(scales[size_t(g)] * unit_generator(b, rng)), theta.row(g));
    const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
    const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);

    oft::BlockOrthogonal<double, Policy> op(spec, policy);
    op.set_generators(theta);
    std::vector<oft::PlanSummary> base(static_cast<size_t>(r));
    for (Index g = 0; g < r; ++g) base[size_t(g)] = op.plan(g);
    EXPECT_EQ(base[0].terms, 1);
    EXPECT_EQ(base[1].terms, 4);
    EXPECT_EQ(base[2].terms, 17);
    EXPECT_TRUE(base[3].exact);
    oft::Generators<double> dtheta(r, b);
    oft::Workspace<double> workspace;
    op.backward(oft::view(x), oft::view(dy), {}, dtheta.view(), workspace);

    oft::Generators<double> work = theta;
    oft::BlockOrthogonal<double, Policy> probe(spec, policy);
    RowMat<double> y(n, d);
    int replanned = 0;
    auto loss = [&] {
      probe.set_generators(work);
      for (Index g = 0; g < r; ++g)
        replanned += probe.plan(g).terms != base[size_t(g)].terms ||
                     probe.plan(g).exact != base[size_t(g)].exact;
      probe.apply(oft::view(x), oft::view(y));
      return (dy.array() * y.array()).sum();
    };
    const double loss_abs =
        (dy.cwiseAbs().array() * (x.cwiseAbs() * op.dense().cwiseAbs()).array()).sum();
    const double scale = dtheta.values().cwiseAbs().maxCoeff();
    ASSERT_GT(scale, 0.0);
    const double allowed = 1e-6 * scale + 4.0 * oft_test::eps<double>() * loss_abs / h;
    for (Index j = 0; j < r * spec.packed(); ++j) {
      const double fd = oft::numerical_gradient(work.values().data() + j, 1, loss, h)[0];
      EXPECT_NEAR(dtheta.values().data()[j], fd, allowed) << "tol=" << tol << " coordinate " << j;
    }
    EXPECT_EQ(replanned, 0) << "a finite-difference step crossed a switch";
  }
}

/// dtheta of `policy` at theta = 0 (r generators of size b, one backward).
template <class P>
oft::Generators<double> gradient_at_zero(const P& policy, Index r, Index b, const RowMat<double>& x,
                                         const RowMat<double>& dy) {
  const auto spec = oft::BlockSpec::from_features(r * b, b);
  oft::BlockOrthogonal<double, P> op(spec, policy);
  op.set_generators(oft::Generators<double>(r, b));
  oft::Generators<double> dtheta(r, b);
  oft::Workspace<double> workspace;
  op.backward(oft::view(x), oft::view(dy), {}, dtheta.view(), workspace);
  return dtheta;
}

/// Central differences of <dY, X R(theta)> at theta = 0 through set_generators (re-planning).
template <class P>
std::vector<double> numerical_gradient_at_zero(const P& policy, Index r, Index b,
                                               const RowMat<double>& x, const RowMat<double>& dy) {
  const auto spec = oft::BlockSpec::from_features(r * b, b);
  oft::BlockOrthogonal<double, P> probe(spec, policy);
  oft::Generators<double> work(r, b);
  RowMat<double> y(x.rows(), x.cols());
  auto loss = [&] {
    probe.set_generators(work);
    probe.apply(oft::view(x), oft::view(y));
    return (dy.array() * y.array()).sum();
  };
  return oft::numerical_gradient(work.values().data(), r * spec.packed(), loss, 1e-6);
}

// SPEC section 8: theta -> R first-order exact at theta = 0. With min_terms = 1 (default) the
// plan at Q = 0 is k = 1, whose adjoint Horner pass gives dQ = c_1 G = 2G, exactly what exact
// Cayley's (I + R)^T G (I - Q)^-T gives at Q = 0: equal to rounding (both are 2 G computed
// without cancellation: a few roundings of the same G, bound 4 eps |dtheta|). With
// min_terms = 0 the plan is k = 0, R_0 = I + Q, and the gradient is exactly half. Both are also
// what central differences through set_generators see (tolerance 1e-4 keeps k = 0 at
// rho = h = 1e-6 for min_terms = 0).
TEST(ToleranceMode, GradientAtZeroEqualsExactCayley) {
  Rng rng(5);
  const Index r = 3, b = 5, n = 7, d = r * b;
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
  const auto exact = gradient_at_zero(oft::ExactCayley{}, r, b, x, dy);
  const auto trainer = gradient_at_zero(Policy(1e-4), r, b, x, dy);
  const auto half = gradient_at_zero(Policy(1e-4).with_min_terms(0), r, b, x, dy);
  const double scale = exact.values().cwiseAbs().maxCoeff();
  ASSERT_GT(scale, 0.0);
  const double rounding = 4.0 * oft_test::eps<double>() * scale;
  EXPECT_TRUE(oft_test::within_abs(trainer.values(), exact.values(), rounding));
  EXPECT_TRUE(oft_test::within_abs(half.values(), 0.5 * exact.values(), rounding));
  EXPECT_GT((half.values() - exact.values()).cwiseAbs().maxCoeff(), 0.25 * scale);

  // The same through finite differences (1e-6 relative, as above; L is linear in X and dY of
  // size 1, so |L|_abs <= n d b and its rounding term is below 1e-8 of the scale).
  const double allowed = 1e-6 * scale + 4.0 * oft_test::eps<double>() * double(n * d * b) / 1e-6;
  const auto fd_trainer = numerical_gradient_at_zero(Policy(1e-4), r, b, x, dy);
  const auto fd_half = numerical_gradient_at_zero(Policy(1e-4).with_min_terms(0), r, b, x, dy);
  const auto fd_exact = numerical_gradient_at_zero(oft::ExactCayley{}, r, b, x, dy);
  for (size_t j = 0; j < fd_exact.size(); ++j) {
    EXPECT_NEAR(fd_trainer[j], exact.values().data()[j], allowed) << j;
    EXPECT_NEAR(fd_exact[j], exact.values().data()[j], allowed) << j;
    EXPECT_NEAR(fd_half[j], 0.5 * exact.values().data()[j], allowed) << j;
  }
}

// --- caps and extreme settings -------------------------------------------------------------------

// The k search is closed-form: max_terms near INT_MAX with rho near 1 (where the old
// `for (k = 0; k <= max_terms; k += 2)` looped ~1e9 times and overflowed) answers at once, and
// correctly. The policy caps max_terms at kMaxNeumannTerms; at rho = 1 - 1e-12 it refuses with
// the reason, or falls back to exact Cayley, immediately.
TEST(ToleranceMode, HugeMaxTermsNearRhoOneFinishesQuickly) {
  const auto start = std::chrono::steady_clock::now();
  // rho = 1 - 1e-9, tol = e^-2: k + 1 = ceil(2 / -log(rho)) ~ 2e9 - 1, just below INT_MAX.
  const double rho = 1.0 - 1e-9, tol = std::exp(-2.0);
  for (oft::ToleranceMeasure measure :
       {oft::ToleranceMeasure::DistanceToCayley, oft::ToleranceMeasure::Orthogonality}) {
    const double tol_m = measure == oft::ToleranceMeasure::Orthogonality ? tol * tol : tol;
    const int k = oft::neumann_terms_for(measure, rho, tol_m, 0, INT_MAX);
    EXPECT_GT(k, 1900000000);
    const auto error = [&](int terms) {
      return measure == oft::ToleranceMeasure::Orthogonality
                 ? oft::neumann_orthogonality_bound(rho, terms)
                 : oft::neumann_distance_to_cayley(rho, terms);
    };
    EXPECT_LE(error(k), tol_m);
    EXPECT_GT(error(k - (measure == oft::ToleranceMeasure::Orthogonality ? 2 : 1)), tol_m);
    // Beyond INT_MAX terms: no answer, not an overflow.
    EXPECT_EQ(oft::neumann_terms_for(measure, 1.0 - 0x1p-52, 1e-300, 0, INT_MAX), -1);
    EXPECT_EQ(oft::neumann_terms_for(measure, 1.0 - 0x1p-52, 1e-300, INT_MAX, INT_MAX), -1);
    EXPECT_EQ(oft::neumann_terms_for(measure, 0.5, 1e-300, INT_MAX - 1, INT_MAX), INT_MAX - 1);
  }
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.999999, 1e-300, INT_MAX) % 2, 0);

  MatD q(2, 2);
  q << 0.0, 1.0 - 1e-12, -(1.0 - 1e-12), 0.0;
  const Policy capped(1e-6, oft::OnDivergence::Throw, oft::kMaxNeumannTerms);
  EXPECT_TRUE(oft_test::throws_with<std::domain_error>(
      [&] { capped.plan(q); }, {"needs more than max_terms", "max_terms=1024", "1e-06"}));
  const Plan fallback =
      Policy(1e-6, oft::OnDivergence::UseExactCayley, oft::kMaxNeumannTerms).plan(q);
  EXPECT_TRUE(fallback.exact);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);  // microseconds of work; a loop over k would take seconds
}

// max_terms caps the k of every plan: at rho = 1/2 and tol = 2^-7 the distance needs k = 6.
TEST(ToleranceMode, MaxTermsCapsTheChoice) {
  MatD q(2, 2);
  q << 0.0, 0.5, -0.5, 0.0;   // rho = 1/2 exactly; the free bound is 1/2 too
  const double tol = 0x1p-7;  // rho^(k+1) <= 2^-7  <=>  k >= 6
  EXPECT_EQ(Policy(tol).plan(q).terms, 6);
  EXPECT_EQ(Policy(tol, oft::OnDivergence::Throw, 6).plan(q).terms, 6);
  EXPECT_TRUE(oft_test::throws_with<std::domain_error>(
      [&] { Policy(tol, oft::OnDivergence::Throw, 5).plan(q); }, {"0.5", "max_terms=5"}));
  EXPECT_TRUE(Policy(tol, oft::OnDivergence::UseExactCayley, 5).plan(q).exact);
  // min_terms raises k, up to max_terms.
  EXPECT_EQ(Policy(tol).with_min_terms(9).plan(q).terms, 9);
  EXPECT_EQ(Policy(tol, oft::OnDivergence::Throw, 9).with_min_terms(9).plan(q).terms, 9);
  // The orthogonality measure, same rho: rho^(2(k+1)) <= 2^-7 needs k + 1 >= 3.5, even k = 4.
  const Policy orth = Policy(tol).with_measure(oft::ToleranceMeasure::Orthogonality);
  EXPECT_EQ(orth.plan(q).terms, 4);
  EXPECT_TRUE(oft_test::throws_with<std::domain_error>(
      [&] {
        Policy(tol, oft::OnDivergence::Throw, 3)
            .with_measure(oft::ToleranceMeasure::Orthogonality)
            .plan(q);
      },
      {"||R_k^T R_k - I||_2", "max_terms=3"}));
  // R of the chosen plans: within tol of exact Cayley (here exactly at it: rho^7 = 2^-7), or
  // orthogonal to tol; rounding allowances of the file comment.
  const Plan plan6 = Policy(tol).plan(q);
  const MatD r6 = rotation(Policy(tol), q, plan6);
  EXPECT_LE(oft_test::spectral_norm(MatD(r6 - exact_cayley(q))),
            tol + evaluation_allowance(plan6, 0.5, 2) + 4.0 * 2 * oft_test::eps<double>() * 1.2);
  const MatD r4 = rotation(orth, q, orth.plan(q));
  EXPECT_LE(oft_test::orthogonality_defect(r4), tol);
}

}  // namespace

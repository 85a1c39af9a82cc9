// Cayley–Neumann parameterization (cayley_neumann.hpp, neumann.hpp, SPEC section 3):
// fixed k, tolerance mode, error formulas.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/neumann.hpp>
#include <stdexcept>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

MatD exact_cayley(const MatD& q) {
  MatD r;
  oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, r);
  return r;
}

template <class Scalar>
oft_test::Mat<Scalar> neumann(const oft_test::Mat<Scalar>& q, int k) {
  oft_test::Mat<Scalar> r;
  oft::CayleyNeumann{k}.rotation(q, oft::CayleyNeumann::Plan{}, r);
  return r;
}

/// P(rho) = sum_j c_j rho^j >= ||R_k||_2: the scale of every intermediate of the Horner pass.
double poly_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 0; j <= k + 1; ++j) p += oft::neumann_coefficient(j, k) * std::pow(rho, j);
  return p;
}

/// ||R_k^T R_k - I||_2 from SPEC section 3, with the sign for even m = k + 1 made explicit:
/// eigenvalues of R_k^T R_k - I are |1 - (i lambda)^m|^2 - 1 = -2 Re((i lambda)^m) + lambda^(2m),
/// i.e. lambda^(2m) for odd m, -2 lambda^m + lambda^(2m) for m = 0 mod 4 and
/// +2 lambda^m + lambda^(2m) for m = 2 mod 4; the largest magnitude is at lambda = rho.
double orthogonality_formula(double rho, int k) {
  const int m = k + 1;
  const double rm = std::pow(rho, m);
  if (m % 2 == 1) return rm * rm;
  return m % 4 == 0 ? 2.0 * rm - rm * rm : 2.0 * rm + rm * rm;
}

// --- scalar facts (neumann.hpp) -------------------------------------------------------------

TEST(NeumannCoefficients, OneTwoTwoOne) {
  for (int k = 0; k <= 6; ++k) {
    EXPECT_EQ(oft::neumann_coefficient(-1, k), 0);
    EXPECT_EQ(oft::neumann_coefficient(0, k), 1);
    for (int j = 1; j <= k; ++j) EXPECT_EQ(oft::neumann_coefficient(j, k), 2) << j << " " << k;
    EXPECT_EQ(oft::neumann_coefficient(k + 1, k), 1);
    EXPECT_EQ(oft::neumann_coefficient(k + 2, k), 0);
  }
  static_assert(oft::neumann_coefficient(1, 0) == 1);  // R_0 = I + Q
}

// At k = INT_MAX the last index k + 1 is not an int: the coefficient must come out without
// computing it (signed overflow is undefined; a constant expression refuses it, UBSan reports it).
TEST(NeumannCoefficients, NoOverflowAtIntMax) {
  constexpr int kMax = std::numeric_limits<int>::max();
  constexpr int kMin = std::numeric_limits<int>::min();
  static_assert(oft::neumann_coefficient(kMax, kMax) == 2);
  static_assert(oft::neumann_coefficient(kMin, kMax) == 0);
  static_assert(oft::neumann_coefficient(0, kMax) == 1);
  // The same at run time, through volatile so that no constant folding hides the arithmetic.
  volatile int k = kMax;
  volatile int j_max = kMax;
  volatile int j_min = kMin;
  EXPECT_EQ(oft::neumann_coefficient(j_max, k), 2);
  EXPECT_EQ(oft::neumann_coefficient(j_min, k), 0);
  EXPECT_EQ(oft::neumann_coefficient(1, k), 2);
  EXPECT_EQ(oft::neumann_coefficient(kMax - 1, kMax - 1), 2);
  EXPECT_EQ(oft::neumann_coefficient(kMax, kMax - 1), 1);
}

TEST(NeumannBounds, FormulasAndParity) {
  EXPECT_DOUBLE_EQ(oft::neumann_distance_to_cayley(0.5, 3), 0.0625);
  // k = 4 (m = 5, odd): rho^10; k = 3 (m = 4, even): bound 2 rho^4 + rho^8.
  EXPECT_DOUBLE_EQ(oft::neumann_orthogonality_bound(0.5, 4), std::pow(0.5, 10));
  EXPECT_DOUBLE_EQ(oft::neumann_orthogonality_bound(0.5, 3), 2 * 0.0625 + 0.0625 * 0.0625);
  // The bound is exact for odd m and an upper bound of the SPEC formula for even m.
  for (double rho : {0.0, 0.1, 0.5, 0.9})
    for (int k = 0; k <= 8; ++k) {
      if ((k + 1) % 2 == 1) {
        EXPECT_DOUBLE_EQ(oft::neumann_orthogonality_bound(rho, k), orthogonality_formula(rho, k));
      } else {
        EXPECT_GE(oft::neumann_orthogonality_bound(rho, k), orthogonality_formula(rho, k));
      }
    }
}

TEST(NeumannTermsForTolerance, EdgeCases) {
  // rho = 0: k = 0 already exact.
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.0, 1e-12, 64), 0);
  // Divergent or undefined rho.
  EXPECT_EQ(oft::neumann_terms_for_tolerance(1.0, 1e-3, 64), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(1.5, 1e-3, 64), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(std::nan(""), 1e-3, 64), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(std::numeric_limits<double>::infinity(), 1e-3, 64),
            -1);
  // Non-positive or NaN tolerance.
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 0.0, 64), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, -1.0, 64), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, std::nan(""), 64), -1);
  // Exact threshold: rho = 1/2, k = 2 gives (1/8)^2 = 1/64 exactly (powers of two are exact).
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 1.0 / 64.0, 64), 2);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, std::nextafter(1.0 / 64.0, 0.0), 64), 4);
  // A loose tolerance: k = 0 (bound rho^2 = 1/4).
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 0.25, 64), 0);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 10.0, 64), 0);
  // max_terms limits the search: 0 and 1 allow only k = 0.
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 1.0 / 64.0, 0), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 1.0 / 64.0, 1), -1);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 1.0 / 64.0, 2), 2);
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 0.25, 0), 0);
  // Always even, and the smallest even k meeting the bound.
  for (double rho : {0.01, 0.2, 0.5, 0.9, 0.99})
    for (double tol : {1e-2, 1e-6, 1e-12}) {
      const int k = oft::neumann_terms_for_tolerance(rho, tol, 5000);
      ASSERT_GE(k, 0) << rho << " " << tol;
      EXPECT_EQ(k % 2, 0);
      EXPECT_LE(oft::neumann_orthogonality_bound(rho, k), tol);
      if (k >= 2) {
        EXPECT_GT(oft::neumann_orthogonality_bound(rho, k - 2), tol);
      }
    }
}

// Reference for the closed-form searches: the smallest k of the right parity in
// [min_terms, max_terms] meeting the measure's bound, by trying every k (small max_terms only).
int smallest_terms_by_scan(oft::ToleranceMeasure measure, double rho, double tol, int min_terms,
                           int max_terms) {
  if (!(rho >= 0.0 && rho < 1.0) || !(tol > 0.0)) return -1;
  const bool even = measure == oft::ToleranceMeasure::Orthogonality;
  for (int k = std::max(min_terms, 0); k <= max_terms; ++k) {
    if (even && k % 2 != 0) continue;
    const double error =
        even ? oft::neumann_orthogonality_bound(rho, k) : oft::neumann_distance_to_cayley(rho, k);
    if (error <= tol) return k;
  }
  return -1;
}

TEST(NeumannTermsFor, ClosedFormEqualsScan) {
  int found = 0;
  for (oft::ToleranceMeasure measure :
       {oft::ToleranceMeasure::DistanceToCayley, oft::ToleranceMeasure::Orthogonality})
    for (double rho : {0.0, 1e-9, 0.01, 0.2, 0.5, 0.7, 0.9, 0.99, 0.999, 1.0, 1.5})
      for (double tol : {10.0, 1.0, 0.3, 1e-2, 1e-6, 1e-12, 1e-300})
        for (int min_terms : {0, 1, 2, 3, 7})
          for (int max_terms : {0, 1, 2, 5, 64, 1000}) {
            const int expected = smallest_terms_by_scan(measure, rho, tol, min_terms, max_terms);
            EXPECT_EQ(oft::neumann_terms_for(measure, rho, tol, min_terms, max_terms), expected)
                << "measure=" << int(measure) << " rho=" << rho << " tol=" << tol
                << " min=" << min_terms << " max=" << max_terms;
            found += expected >= 0;
          }
  EXPECT_GT(found, 500);  // most of the grid has an answer, so the comparison is not vacuous
  // Exact thresholds (powers of two are exact): rho = 1/2, distance 1/8 = rho^3 -> k = 2.
  EXPECT_EQ(oft::neumann_terms_for_distance(0.5, 0.125, 0, 64), 2);
  EXPECT_EQ(oft::neumann_terms_for_distance(0.5, std::nextafter(0.125, 0.0), 0, 64), 3);
  EXPECT_EQ(oft::neumann_terms_for_distance(0.5, 0.125, 3, 64), 3);  // min_terms binds
  EXPECT_EQ(oft::neumann_terms_for_orthogonality(0.5, 1.0 / 64.0, 0, 64), 2);
  EXPECT_EQ(oft::neumann_terms_for_orthogonality(0.5, 1.0 / 64.0, 3, 64), 4);  // even k >= 3
  // The legacy name is the orthogonality measure from k = 0.
  EXPECT_EQ(oft::neumann_terms_for_tolerance(0.5, 1.0 / 64.0, 64),
            oft::neumann_terms_for_orthogonality(0.5, 1.0 / 64.0, 0, 64));
}

// --- the polynomial itself ------------------------------------------------------------------

TEST(CayleyNeumann, PolynomialForm) {
  Rng rng(1);
  for (Index b : {2, 5, 16}) {
    const double rho = 0.6;
    const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
    // k = 0: I + Q, bit for bit (products with the identity and adding 1 to a zero diagonal
    // are exact).
    EXPECT_TRUE(oft_test::all_equal(neumann(q, 0), MatD(MatD::Identity(b, b) + q)));
    for (int k = 1; k <= 6; ++k) {
      // sum_j c_j Q^j from explicit powers.
      MatD expected = MatD::Identity(b, b), power = MatD::Identity(b, b);
      for (int j = 1; j <= k + 1; ++j) {
        power = power * q;
        expected += oft::neumann_coefficient(j, k) * power;
      }
      // Two evaluations of a degree k+1 polynomial with k+1 b x b products each: c = 2 per
      // side, scale (k + 2) b eps P(rho).
      const double tol = 4.0 * (k + 2) * b * oft_test::eps<double>() * poly_scale(rho, k);
      EXPECT_TRUE(oft_test::within_abs(neumann(q, k), expected, tol)) << "b=" << b << " k=" << k;
    }
    // k = 1 spelled out: I + 2Q + Q^2.
    const MatD by_hand = MatD::Identity(b, b) + 2.0 * q + q * q;
    EXPECT_TRUE(oft_test::within_abs(neumann(q, 1), by_hand,
                                     4.0 * 3 * b * oft_test::eps<double>() * poly_scale(rho, 1)));
  }
}

// ||R - R_k||_2 = rho^(k+1) and ||R_k^T R_k - I||_2 per SPEC, on random Q of exact spectral norm
// rho. Tolerance: c = 2 times (k + 2) b eps P(rho) (distance) or P(rho)^2 (orthogonality): the
// Horner pass does k + 1 products whose intermediates are bounded by P(rho); the Cayley
// reference and the SVD/eigen norms each add a few b eps. Every checked value is >= 100x its
// tolerance, so the check is never vacuous.
TEST(CayleyNeumann, ErrorFormulasOnRandomGenerators) {
  Rng rng(2);
  for (Index b : {3, 8, 16, 32})
    for (double rho_target : {0.3, 0.5, 0.7, 0.9, 0.95})
      for (int k = 0; k <= 6; ++k) {
        const MatD q = oft_test::random_skew_with_rho(b, rho_target, rng);
        const double rho = oft_test::spectral_norm(q);
        const MatD rk = neumann(q, k);
        const double p = poly_scale(rho, k);
        const double unit = 2.0 * (k + 2) * b * oft_test::eps<double>();

        const double distance = oft_test::spectral_norm(MatD(exact_cayley(q) - rk));
        const double expected_distance = std::pow(rho, k + 1);
        ASSERT_GT(expected_distance, 100.0 * unit * p);
        EXPECT_NEAR(distance, expected_distance, unit * p)
            << "b=" << b << " rho=" << rho << " k=" << k;
        EXPECT_NEAR(expected_distance, oft::neumann_distance_to_cayley(rho, k), unit * p);

        const double orth = oft_test::orthogonality_defect(rk);
        const double expected_orth = orthogonality_formula(rho, k);
        ASSERT_GT(expected_orth, 100.0 * unit * p * p);
        EXPECT_NEAR(orth, expected_orth, unit * p * p)
            << "b=" << b << " rho=" << rho << " k=" << k << " m=" << k + 1;
        EXPECT_LE(orth, oft::neumann_orthogonality_bound(rho, k) + unit * p * p);
      }
}

// Float evaluation against the double polynomial: same c = 2 (k + 2) b eps_float P(rho) bound.
TEST(CayleyNeumann, FloatMatchesDouble) {
  Rng rng(3);
  for (Index b : {4, 32})
    for (int k : {0, 3, 4, 6}) {
      const double rho = 0.8;
      const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
      const oft_test::Mat<float> qf = q.cast<float>();
      const MatD reference = neumann(MatD(qf.cast<double>()), k);
      const double tol = 2.0 * (k + 2) * b * (oft_test::eps<float>() + oft_test::eps<double>()) *
                         poly_scale(rho, k);
      EXPECT_TRUE(oft_test::within_abs(neumann(qf, k), reference, tol)) << "b=" << b << " k=" << k;
    }
}

TEST(CayleyNeumann, ConstructionAndSummary) {
  EXPECT_EQ(oft::CayleyNeumann{}.terms, 4);
  for (int k : {0, 1, 3, 10}) {
    const oft::CayleyNeumann policy{k};
    const oft::PlanSummary s = policy.summary(oft::CayleyNeumann::Plan{});
    EXPECT_FALSE(s.exact);
    EXPECT_EQ(s.terms, k);
  }
  EXPECT_THROW(oft::CayleyNeumann{-1}, std::invalid_argument);
}

// Operators default their policy argument with `= {}`: copy-list-initialization, which needs a
// non-explicit default constructor (regression: an explicit `CayleyNeumann(int k = 4)` made
// `BlockOrthogonal<S, CayleyNeumann> op(spec)` ill-formed).
TEST(CayleyNeumann, DefaultPolicyArgumentOfOperators) {
  const auto spec = oft::BlockSpec::from_features(8, 4);
  const oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec);
  EXPECT_EQ(op.parameterization().terms, 4);
  const oft::BlockOrthogonal<float, oft::CayleyNeumannTolerance> tol_op(spec);
  EXPECT_EQ(tol_op.parameterization().tolerance, 1e-6);
  EXPECT_EQ(tol_op.parameterization().on_divergence, oft::OnDivergence::Throw);
  EXPECT_EQ(tol_op.parameterization().max_terms, 64);
  EXPECT_EQ(tol_op.parameterization().min_terms, 1);
  EXPECT_EQ(tol_op.parameterization().measure, oft::ToleranceMeasure::DistanceToCayley);
  const oft::CayleyNeumann copy_initialized = {};
  EXPECT_EQ(copy_initialized.terms, 4);
}

// --- tolerance mode ---------------------------------------------------------------------------

// Whenever a k <= max_terms can meet the tolerance for the true rho, the policy must not refuse;
// it must pick the smallest admissible k for the rho bound it used (k >= min_terms = 1 for the
// distance, even k >= 0 for the orthogonality measure with min_terms = 0, the old behaviour), and
// the resulting R_k must meet the tolerance in that measure: ||R - R_k||_2 <= tol, or
// ||R_k^T R_k - I||_2 <= tol, measured in double with rounding allowance 2 (k + 2) b eps P (P^2
// for orthogonality) as above; pairs where that allowance exceeds tol / 2 only get the plan
// checks.
void check_meets_tolerance(const oft::CayleyNeumannTolerance& base, std::uint64_t seed) {
  Rng rng(seed);
  const bool orthogonality = base.measure == oft::ToleranceMeasure::Orthogonality;
  int planned = 0, measured = 0;
  for (Index b : {2, 3, 8, 32})
    for (double rho_target : {0.05, 0.2, 0.5, 0.8, 0.95})
      for (double tol : {1e-2, 1e-4, 1e-8, 1e-12}) {
        const MatD q = oft_test::random_skew_with_rho(b, rho_target, rng);
        const double rho = oft_test::spectral_norm(q);
        const oft::CayleyNeumannTolerance policy(tol, base.on_divergence, base.max_terms);
        const oft::CayleyNeumannTolerance tuned =
            policy.with_measure(base.measure).with_min_terms(base.min_terms);
        if (tuned.terms_for(rho * (1 + 1e-12)) < 0) {
          EXPECT_THROW(tuned.plan(q), std::domain_error) << "rho=" << rho << " tol=" << tol;
          continue;
        }
        const auto plan = tuned.plan(q);
        ASSERT_FALSE(plan.exact) << "rho=" << rho << " tol=" << tol;
        if (orthogonality) {
          EXPECT_EQ(plan.terms % 2, 0);
        }
        EXPECT_GE(plan.terms, tuned.min_terms);
        EXPECT_LE(plan.terms, tuned.max_terms);
        // The rho used is an upper bound of the true one (up to the SVD's rounding).
        EXPECT_GE(plan.rho, rho * (1.0 - 8.0 * b * oft_test::eps<double>()));
        EXPECT_EQ(plan.terms, tuned.terms_for(plan.rho));
        const oft::PlanSummary summary = oft::CayleyNeumannTolerance::summary(plan);
        EXPECT_FALSE(summary.exact);
        EXPECT_EQ(summary.terms, plan.terms);

        MatD r;
        tuned.rotation(q, plan, r);
        EXPECT_TRUE(oft_test::all_equal(r, neumann(q, plan.terms)));
        const double p = poly_scale(rho, plan.terms);
        const double allowance =
            2.0 * (plan.terms + 2) * b * oft_test::eps<double>() * (orthogonality ? p * p : p);
        ++planned;
        if (allowance > 0.5 * tol) continue;  // tol below what double can verify here
        const double error = orthogonality ? oft_test::orthogonality_defect(r)
                                           : oft_test::spectral_norm(MatD(exact_cayley(q) - r));
        EXPECT_LE(error, tol + allowance)
            << "b=" << b << " rho=" << rho << " tol=" << tol << " k=" << plan.terms;
        ++measured;
      }
  EXPECT_GE(planned, 55);   // most of the grid is feasible
  EXPECT_GE(measured, 50);  // and most of it verifiable in double
}

TEST(CayleyNeumannTolerance, MeetsDistanceTolerance) {
  check_meets_tolerance(oft::CayleyNeumannTolerance{}, 4);
}

TEST(CayleyNeumannTolerance, MeetsOrthogonalityToleranceWithEvenK) {
  check_meets_tolerance(oft::CayleyNeumannTolerance{}
                            .with_measure(oft::ToleranceMeasure::Orthogonality)
                            .with_min_terms(0),
                        14);
}

// A generator whose cheap bounds (||Q||_F / sqrt 2 and ||Q||_1) are >= 1 while rho < 1 must not
// be refused: the policy falls back to the exact spectral norm.
TEST(CayleyNeumannTolerance, LooseBoundDoesNotRefuse) {
  Rng rng(5);
  const Index b = 32;
  const MatD q = oft_test::random_skew_with_rho(b, 0.9, rng);
  ASSERT_GE(q.norm() / std::sqrt(2.0), 1.0);
  ASSERT_GE(q.cwiseAbs().colwise().sum().maxCoeff(), 1.0);
  const oft::CayleyNeumannTolerance policy(1e-2);
  const auto plan = policy.plan(q);
  EXPECT_FALSE(plan.exact);
  EXPECT_NEAR(plan.rho, 0.9, 8.0 * b * oft_test::eps<double>());
  EXPECT_EQ(plan.terms, policy.terms_for(plan.rho));
}

// The free bound can overestimate rho by up to sqrt(b/2); whenever it would need more than
// kFreeBoundTerms terms the policy must use the exact rho, so k is never larger than the exact
// rho needs (beyond kFreeBoundTerms). Would fail if k came from the free bound alone: for a
// spread spectrum at b = 32 that bound is several times rho.
TEST(CayleyNeumannTolerance, NoMoreTermsThanExactRhoNeeds) {
  Rng rng(6);
  int tight = 0;
  for (Index b : {8, 32, 64})
    for (double rho_target : {0.05, 0.3, 0.6})
      for (double tol : {1e-3, 1e-6, 1e-10}) {
        const MatD q = oft_test::random_skew_with_rho(b, rho_target, rng);
        const double rho = oft_test::spectral_norm(q);
        const oft::CayleyNeumannTolerance policy(tol);
        const int needed = policy.terms_for(rho * (1.0 + 1e-9));
        ASSERT_GE(needed, 0);
        const auto plan = policy.plan(q);
        EXPECT_LE(plan.terms, std::max(needed, oft::CayleyNeumannTolerance::kFreeBoundTerms))
            << "b=" << b << " rho=" << rho << " tol=" << tol << " rho used=" << plan.rho;
        if (needed > oft::CayleyNeumannTolerance::kFreeBoundTerms) ++tight;
      }
  EXPECT_GE(tight, 10);  // most of the grid exercises the exact-rho path
}

TEST(CayleyNeumannTolerance, DivergentSeriesThrows) {
  // rho = 1 exactly (2 x 2, a = 1) and rho > 1.
  for (double a : {1.0, 1.5, 40.0}) {
    MatD q(2, 2);
    q << 0.0, a, -a, 0.0;
    const oft::CayleyNeumannTolerance policy(1e-6, oft::OnDivergence::Throw);
    EXPECT_TRUE(
        oft_test::throws_with<std::domain_error>([&] { policy.plan(q); }, {">= 1", "1e-06"}))
        << "a=" << a;
  }
  // rho < 1 but more than max_terms terms needed: refused with that reason.
  MatD q(2, 2);
  q << 0.0, 0.9, -0.9, 0.0;
  const oft::CayleyNeumannTolerance few(1e-12, oft::OnDivergence::Throw, 4);
  EXPECT_TRUE(oft_test::throws_with<std::domain_error>([&] { few.plan(q); },
                                                       {"max_terms", "0.9", "max_terms=4"}));
}

TEST(CayleyNeumannTolerance, FallsBackToExactCayley) {
  Rng rng(6);
  for (Index b : {2, 8, 16})
    for (double rho : {1.0, 1.5, 4.0}) {
      const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
      const oft::CayleyNeumannTolerance policy(1e-6, oft::OnDivergence::UseExactCayley);
      const auto plan = policy.plan(q);
      EXPECT_TRUE(plan.exact) << "b=" << b << " rho=" << rho;
      const oft::PlanSummary s = oft::CayleyNeumannTolerance::summary(plan);
      EXPECT_TRUE(s.exact);
      EXPECT_EQ(s.terms, -1);
      MatD r;
      policy.rotation(q, plan, r);
      // Exact Cayley, as the ExactCayley policy computes it (bound as in test_cayley.cpp).
      EXPECT_TRUE(oft_test::within_abs(
          r, exact_cayley(q), 4.0 * b * oft_test::eps<double>() * std::sqrt(1.0 + rho * rho)));
      EXPECT_LE(oft_test::orthogonality_defect(r),
                4.0 * b * oft_test::eps<double>() * std::sqrt(1.0 + rho * rho));
    }
}

// Per-generator decisions inside the operator: a mix of convergent and divergent generators.
TEST(CayleyNeumannTolerance, PerGeneratorPlansInOperator) {
  Rng rng(7);
  const Index b = 8, r = 3;
  const double tol = 1e-8;
  using Op = oft::BlockOrthogonal<double, oft::CayleyNeumannTolerance>;
  const double rhos[r] = {0.5, 2.0, 0.2};
  oft::Generators<double> theta(r, b);
  for (Index g = 0; g < r; ++g) {
    const MatD q = oft_test::random_skew_with_rho(b, rhos[g], rng);
    oft::pack_skew(q, theta.row(g));
  }
  Op fallback(oft::BlockSpec::from_features(r * b, b),
              oft::CayleyNeumannTolerance(tol, oft::OnDivergence::UseExactCayley));
  fallback.set_generators(theta);
  for (Index g = 0; g < r; ++g) {
    const oft::PlanSummary s = fallback.plan(g);
    const MatD q = theta.dense(g);
    if (rhos[g] >= 1.0) {
      EXPECT_TRUE(s.exact);
      EXPECT_TRUE(oft_test::within_abs(fallback.block(g), exact_cayley(q),
                                       4.0 * b * oft_test::eps<double>() * std::sqrt(5.0)));
    } else {
      EXPECT_FALSE(s.exact);
      EXPECT_GE(s.terms, 1);
      EXPECT_TRUE(oft_test::all_equal(fallback.block(g), neumann(q, s.terms)));
      // ||R - R_k||_2 <= tol, and so ||R_k^T R_k - I||_2 <= 2 tol + tol^2 (rounding allowance
      // 2 (k + 2) b eps P(rho), times P(rho) for the product R_k^T R_k, as above).
      const double p = poly_scale(rhos[g], s.terms);
      const double allowance = 2.0 * (s.terms + 2) * b * oft_test::eps<double>() * p;
      EXPECT_LE(oft_test::spectral_norm(MatD(fallback.block(g) - exact_cayley(q))),
                tol + allowance);
      EXPECT_LE(oft_test::orthogonality_defect(fallback.block(g)),
                2.0 * tol + tol * tol + allowance * p);
    }
  }
  // With OnDivergence::Throw the same theta is refused.
  Op strict(oft::BlockSpec::from_features(r * b, b), oft::CayleyNeumannTolerance(tol));
  EXPECT_THROW(strict.set_generators(theta), std::domain_error);
}

}  // namespace

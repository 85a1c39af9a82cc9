#pragma once
/// \file neumann.hpp
/// Scalar facts about the truncated Cayley–Neumann series (SPEC section 3), shared by the CPU and
/// CUDA backends (host/device code).
///
/// With k terms, R_k(Q) = (I + Q)(I + Q + ... + Q^k) = sum_j c_j Q^j with c_0 = 1, c_j = 2 for
/// 1 <= j <= k and c_{k+1} = 1. For skew Q with rho = ||Q||_2 < 1 and m = k + 1:
///   ||R - R_k||_2 = rho^m, ||R_k^T R_k - I||_2 = rho^(2m) (m odd) or 2 rho^m +- rho^(2m) (m even).
///
/// Polynomials in Q are described by a *coefficient sequence*: any type `C` with
/// `int C::degree() const` (n >= 0) and `double C::operator()(int j) const` (c_j for 0 <= j <= n).
/// NeumannCoefficients is R_k's, CoefficientList wraps a caller's array, and
/// peft::NeumannBranchCoefficients (peft_polynomial.hpp) is PEFT's. The CPU evaluates any of them
/// with one Horner pass forward and one adjoint Horner pass backward (cayley_neumann.hpp).

#include <cmath>

#include "config.hpp"

namespace oft {

/// Coefficient c_j of Q^j in R_k (0 <= j <= k+1; 0 outside). Defined for every int j and k:
/// the last index k + 1 is tested as j - 1 == k with j > 0, which cannot overflow (k + 1 would at
/// k = INT_MAX), as the bounds below compute m = k + 1 in double.
OFT_HOST_DEVICE constexpr int neumann_coefficient(int j, int k) {
  return (j == 0 || (j > 0 && j - 1 == k)) ? 1 : (j > 0 && j <= k ? 2 : 0);
}

/// The coefficient sequence of R_k: degree k + 1, coefficients 1, 2, ..., 2, 1.
struct NeumannCoefficients {
  int terms;  ///< k >= 0
  OFT_HOST_DEVICE constexpr int degree() const { return terms + 1; }
  OFT_HOST_DEVICE constexpr double operator()(int j) const { return neumann_coefficient(j, terms); }
};

/// A caller's coefficients c_0, ..., c_(size-1) (not owned; size >= 1), e.g. to evaluate and
/// differentiate an arbitrary polynomial in Q with the same Horner passes.
struct CoefficientList {
  const double* values;
  int size;
  OFT_HOST_DEVICE constexpr int degree() const { return size - 1; }
  OFT_HOST_DEVICE constexpr double operator()(int j) const { return values[j]; }
};

/// Upper bound on ||R_k^T R_k - I||_2 for spectral radius rho (exact when m = k+1 is odd).
OFT_HOST_DEVICE inline double neumann_orthogonality_bound(double rho, int k) {
  // m = k + 1 in double: no int overflow for any k.
  const double rho_m = std::pow(rho, static_cast<double>(k) + 1.0);
  return (k % 2 == 0) ? rho_m * rho_m : 2.0 * rho_m + rho_m * rho_m;
}

/// ||R(Q) - R_k(Q)||_2 = rho^(k+1).
OFT_HOST_DEVICE inline double neumann_distance_to_cayley(double rho, int k) {
  return std::pow(rho, static_cast<double>(k) + 1.0);
}

/// What tolerance mode (CayleyNeumannTolerance, cayley_neumann.hpp) bounds by its tolerance.
enum class ToleranceMeasure {
  /// ||R(Q) - R_k(Q)||_2 = rho^(k+1), any k: every admissible k keeps R within tol of exact
  /// Cayley, so a change of k moves R by at most 2 tol. The measure for training.
  DistanceToCayley,
  /// ||R_k^T R_k - I||_2 = rho^(2(k+1)), even k only (the more orthogonal parity): fewer terms
  /// for the same tol, but R_k is only within sqrt(tol) of exact Cayley, so R jumps by about
  /// sqrt(tol) when k changes. Unfit for training; for evaluation or export.
  Orthogonality,
};

namespace detail {

OFT_HOST_DEVICE inline bool neumann_meets(ToleranceMeasure measure, double rho, long long k,
                                          double tolerance) {
  const int terms = static_cast<int>(k);  // callers keep 0 <= k <= max_terms <= INT_MAX
  const double error = measure == ToleranceMeasure::Orthogonality
                           ? neumann_orthogonality_bound(rho, terms)
                           : neumann_distance_to_cayley(rho, terms);
  return error <= tolerance;
}

/// The smallest k of the measure's parity in [min_terms, max_terms] meeting the tolerance, or -1.
/// Closed form from logarithms plus a fixed number of correction steps: no loop over k, so any
/// max_terms (up to INT_MAX) costs the same, and no k + step can overflow (long long).
OFT_HOST_DEVICE inline int neumann_terms_search(ToleranceMeasure measure, double rho,
                                                double tolerance, int min_terms, int max_terms) {
  if (!(rho >= 0.0 && rho < 1.0) || !(tolerance > 0.0) || max_terms < 0) return -1;
  const long long step = measure == ToleranceMeasure::Orthogonality ? 2 : 1;
  long long lowest = min_terms < 0 ? 0 : min_terms;
  lowest += lowest % step;
  if (lowest > max_terms) return -1;
  if (neumann_meets(measure, rho, lowest, tolerance)) return static_cast<int>(lowest);
  // Here 0 < rho < 1 and tol < 1 (rho = 0 or tol >= 1 is met by every k). The real solution of
  // rho^(step' (k+1)) = tol, step' = 2 for orthogonality, is m = log(tol) / (step' log(rho)).
  const double exponent_per_power = measure == ToleranceMeasure::Orthogonality ? 2.0 : 1.0;
  const double power = std::log(tolerance) / (exponent_per_power * std::log(rho));
  const long long highest = static_cast<long long>(max_terms) - max_terms % step;
  long long k = highest;
  if (power - 1.0 < static_cast<double>(highest)) {  // also false for NaN: keeps k = highest
    k = static_cast<long long>(std::ceil(power)) - 1;
    k += k % step;
    if (k < lowest) k = lowest;
  }
  // The logarithms are accurate to a few ulps, so for k <= INT_MAX the estimate is at most one
  // step off (relative error ~1e-15 times 2^31 << 1); four steps each way leave a margin.
  for (int i = 0; i < 4 && k - step >= lowest && neumann_meets(measure, rho, k - step, tolerance);
       ++i)
    k -= step;
  for (int i = 0; i < 4 && k <= highest && !neumann_meets(measure, rho, k, tolerance); ++i)
    k += step;
  return (k <= highest && neumann_meets(measure, rho, k, tolerance)) ? static_cast<int>(k) : -1;
}

}  // namespace detail

/// Smallest k in [min_terms, max_terms] with ||R - R_k||_2 = rho^(k+1) <= tolerance, or -1 when
/// rho >= 1 (or NaN), tolerance <= 0 (or NaN) or no such k exists.
OFT_HOST_DEVICE inline int neumann_terms_for_distance(double rho, double tolerance, int min_terms,
                                                      int max_terms) {
  return detail::neumann_terms_search(ToleranceMeasure::DistanceToCayley, rho, tolerance, min_terms,
                                      max_terms);
}

/// Smallest even k in [min_terms, max_terms] with neumann_orthogonality_bound(rho, k) <=
/// tolerance, or -1 as above.
OFT_HOST_DEVICE inline int neumann_terms_for_orthogonality(double rho, double tolerance,
                                                           int min_terms, int max_terms) {
  return detail::neumann_terms_search(ToleranceMeasure::Orthogonality, rho, tolerance, min_terms,
                                      max_terms);
}

/// Either of the two above, by measure.
OFT_HOST_DEVICE inline int neumann_terms_for(ToleranceMeasure measure, double rho, double tolerance,
                                             int min_terms, int max_terms) {
  return detail::neumann_terms_search(measure, rho, tolerance, min_terms, max_terms);
}

/// The orthogonality measure from k = 0: smallest even k <= max_terms with
/// neumann_orthogonality_bound(rho, k) <= tolerance, or -1. Kept for existing callers; tolerance
/// mode's default measure is the distance to exact Cayley (neumann_terms_for_distance).
OFT_HOST_DEVICE inline int neumann_terms_for_tolerance(double rho, double tolerance,
                                                       int max_terms) {
  return neumann_terms_for_orthogonality(rho, tolerance, 0, max_terms);
}

}  // namespace oft

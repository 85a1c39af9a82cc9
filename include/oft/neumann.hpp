#pragma once
/// \file neumann.hpp
/// Scalar facts about the truncated Cayley–Neumann series (SPEC section 3), shared by the CPU and
/// CUDA backends (host/device code).
///
/// With k terms, R_k(Q) = (I + Q)(I + Q + ... + Q^k) = sum_j c_j Q^j with c_0 = 1, c_j = 2 for
/// 1 <= j <= k and c_{k+1} = 1. For skew Q with rho = ||Q||_2 < 1 and m = k + 1:
///   ||R - R_k||_2 = rho^m, ||R_k^T R_k - I||_2 = rho^(2m) (m odd) or 2 rho^m +- rho^(2m) (m even).

#include <cmath>

#include "config.hpp"

namespace oft {

/// Coefficient c_j of Q^j in R_k (0 <= j <= k+1; 0 outside).
OFT_HOST_DEVICE constexpr int neumann_coefficient(int j, int k) {
  return (j == 0 || j == k + 1) ? 1 : (j > 0 && j <= k ? 2 : 0);
}

/// Upper bound on ||R_k^T R_k - I||_2 for spectral radius rho (exact when m = k+1 is odd).
OFT_HOST_DEVICE inline double neumann_orthogonality_bound(double rho, int k) {
  const int m = k + 1;
  const double rho_m = std::pow(rho, m);
  return (m % 2 == 1) ? rho_m * rho_m : 2.0 * rho_m + rho_m * rho_m;
}

/// ||R(Q) - R_k(Q)||_2 = rho^(k+1).
OFT_HOST_DEVICE inline double neumann_distance_to_cayley(double rho, int k) {
  return std::pow(rho, k + 1);
}

/// Smallest even k (odd highest power k+1, the more orthogonal parity) with
/// neumann_orthogonality_bound(rho, k) <= tolerance, or -1 when rho >= 1 or no k <= max_terms
/// suffices.
OFT_HOST_DEVICE inline int neumann_terms_for_tolerance(double rho, double tolerance,
                                                       int max_terms) {
  if (!(rho < 1.0) || !(tolerance > 0.0)) return -1;
  for (int k = 0; k <= max_terms; k += 2)
    if (neumann_orthogonality_bound(rho, k) <= tolerance) return k;
  return -1;
}

}  // namespace oft

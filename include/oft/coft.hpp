#pragma once
/// \file coft.hpp
/// Constrained OFT (COFT, SPEC section 3): after an optimizer step, each generator Q is projected
/// onto the Frobenius ball of radius eps': Q <- eps' * Q / ||Q||_F when ||Q||_F > eps'. PEFT uses
/// eps' = eps / sqrt(r) (r = number of rows of theta, i.e. of generators). In packed form
/// ||Q||_F = sqrt(2) * ||theta_row||_2, so the projection scales the packed row.

#include <cmath>

#include "errors.hpp"
#include "skew.hpp"

namespace oft {

/// PEFT's radius eps / sqrt(generators).
inline double coft_radius(double eps, Index generators) {
  detail::require(generators >= 1, "COFT radius needs >= 1 generator, got ", generators);
  return eps / std::sqrt(static_cast<double>(generators));
}

/// Projects every generator of `theta` onto ||Q||_F <= radius, in place. Returns how many
/// generators were scaled. Throws std::invalid_argument for a negative or non-finite radius.
template <class Scalar>
Index coft_project(GeneratorView<Scalar> theta, double radius) {
  static_assert(!std::is_const_v<Scalar>, "coft_project writes theta: pass a mutable view");
  detail::require(radius >= 0.0 && std::isfinite(radius),
                  "COFT radius must be finite and >= 0, got ", radius);
  Index scaled = 0;
  for (Index g = 0; g < theta.count(); ++g) {
    Scalar* row = theta.row(g);
    double squares = 0.0;
    for (Index k = 0; k < theta.packed(); ++k) squares += double(row[k]) * double(row[k]);
    const double frobenius = std::sqrt(2.0 * squares);
    if (frobenius <= radius) continue;
    const Scalar factor = static_cast<Scalar>(radius / frobenius);
    for (Index k = 0; k < theta.packed(); ++k) row[k] *= factor;
    ++scaled;
  }
  return scaled;
}

}  // namespace oft

#pragma once
/// \file finite_difference.hpp
/// Central finite differences, public so that users (and oft's own tests) can check any
/// gradient: dL/dv_j ~ (L(v + h e_j) - L(v - h e_j)) / (2h). Error O(h^2) + O(eps / h); in
/// double, h ~ 1e-5..1e-6 gives about 1e-9 relative accuracy on smooth functions.

#include <cmath>
#include <vector>

#include "config.hpp"
#include "errors.hpp"

namespace oft {

/// Gradient of the scalar function `loss()` with respect to the `count` values at `values`,
/// which `loss` reads; each value is perturbed in place and restored. Throws
/// std::invalid_argument for a negative count, a null pointer with values, or a step h that is
/// not finite and > 0.
template <class Scalar, class Loss>
std::vector<double> numerical_gradient(Scalar* values, Index count, Loss&& loss, double h = 1e-6) {
  detail::require(count >= 0, "numerical_gradient needs count >= 0, got ", count);
  detail::require(values != nullptr || count == 0, "numerical_gradient over a null pointer with ",
                  count, " values");
  detail::require(h > 0.0 && std::isfinite(h), "numerical_gradient step must be finite and > 0, got h=",
                  h);
  std::vector<double> gradient(static_cast<size_t>(count));
  for (Index j = 0; j < count; ++j) {
    const Scalar saved = values[j];
    values[j] = static_cast<Scalar>(saved + h);
    const double plus = static_cast<double>(loss());
    values[j] = static_cast<Scalar>(saved - h);
    const double minus = static_cast<double>(loss());
    values[j] = saved;
    gradient[static_cast<size_t>(j)] = (plus - minus) / (2.0 * h);
  }
  return gradient;
}

}  // namespace oft

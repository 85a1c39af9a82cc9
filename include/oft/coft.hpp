#pragma once
/// \file coft.hpp
/// Constrained OFT (COFT, SPEC section 3): after an optimizer step, each generator Q is projected
/// onto the Frobenius ball of radius eps': Q <- eps' * Q / ||Q||_F when ||Q||_F > eps'. PEFT uses
/// eps' = eps / sqrt(r) (r = number of rows of theta, i.e. of generators). In packed form
/// ||Q||_F = sqrt(2) * ||theta_row||_2, so the projection scales the packed row.
///
/// Two versions:
/// - oft::coft_radius / oft::coft_project: the SPEC's real-number radius eps / sqrt(r), rounded
///   once in double, and a projection computed in double (any Scalar).
/// - oft::peft::coft_radius / oft::peft::coft_project: PEFT's float32 arithmetic
///   (`OFTRotationModule._project_batch`, peft/tuners/oft/layer.py, 0.16.0 to 0.21.2), for
///   float theta, to reproduce a PEFT training step to the last bit where float allows.

#include <cmath>

#include "errors.hpp"
#include "skew.hpp"

namespace oft {

/// The SPEC's radius eps / sqrt(generators) as a real number, rounded once (double arithmetic).
/// PEFT itself computes it in float32: peft::coft_radius below.
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

namespace peft {

/// PEFT's COFT radius, `eps * 1 / torch.sqrt(torch.tensor(P))` with P = rows of theta (1 with
/// block_share), in PEFT's float32 arithmetic (SPEC section 8):
///   eps' = fl32(fl32(1 / fl32(sqrt(fl32(P)))) * fl32(eps)).
/// torch.tensor(P) is int64 and its sqrt float32; a Python float divided by a tensor is
/// `tensor.reciprocal() * eps` (Tensor.__rtruediv__), with eps rounded to the tensor's float32.
/// It can differ from fl32(oft::coft_radius(eps, P)) in the last bit (e.g. eps = 6e-5, P = 96).
/// `eps` is a double because PEFT's config value is a Python float. Throws
/// std::invalid_argument for generators < 1 or an eps that is negative or not finite.
inline float coft_radius(double eps, Index generators) {
  detail::require(generators >= 1, "COFT radius needs >= 1 generator, got ", generators);
  detail::require(eps >= 0.0 && std::isfinite(eps), "COFT eps must be finite and >= 0, got ", eps);
  const float root = std::sqrt(static_cast<float>(generators));  // float sqrt: correctly rounded
  const float reciprocal = 1.0f / root;
  return reciprocal * static_cast<float>(eps);
}

/// PEFT's projection of float theta onto ||Q||_F <= radius (use peft::coft_radius), in PEFT's
/// order of float32 operations: per generator the norm nu = ||Q||_F of the dense skew Q; rows
/// with nu <= radius are kept bit for bit; the others become fl32(fl32(theta / nu) * radius)
/// (`I + eps * (diff / norm_diff)` with I = 0 and diff = Q). Returns how many generators were
/// scaled. Throws std::invalid_argument for a negative or non-finite radius.
///
/// What may still differ from PEFT: the norm. Here nu is the exact norm rounded to float (the
/// squares are summed in double). torch sums the b^2 float32 squares (each theta twice, b zero
/// diagonal entries) in an order set by its kernel; whatever that order, its relative error is
/// at most gamma_(b^2) = b^2 u / (1 - b^2 u) in the sum (u = 2^-24, Higham eq. 3.5) and half of
/// that, plus one rounding, in nu. So the two norms differ by at most about (b^2 / 2 + 2) u
/// relative (b = 32: 5.1e-5 worst case; typical vectorized or pairwise sums stay within a few
/// ulps); each scaled entry differs by the same relative amount plus one ulp, and a row whose nu
/// lies that close to the radius may be kept by one and scaled by the other. A row with
/// ||Q||_F^2 above FLT_MAX overflows torch's float sum (nu = inf, the row becomes 0) but is
/// scaled correctly here.
inline Index coft_project(GeneratorView<float> theta, float radius) {
  detail::require(radius >= 0.0f && std::isfinite(radius),
                  "COFT radius must be finite and >= 0, got ", radius);
  Index scaled = 0;
  for (Index g = 0; g < theta.count(); ++g) {
    float* row = theta.row(g);
    double squares = 0.0;
    for (Index k = 0; k < theta.packed(); ++k) squares += double(row[k]) * double(row[k]);
    const float norm = static_cast<float>(std::sqrt(2.0 * squares));
    if (norm <= radius) continue;  // torch.where(norm_diff <= eps, oft_R, ...)
    for (Index k = 0; k < theta.packed(); ++k) {
      const float direction = row[k] / norm;
      // + 0.0f: PEFT adds the zero matrix I, which turns -0 into +0 (and nothing else).
      row[k] = direction * radius + 0.0f;
    }
    ++scaled;
  }
  return scaled;
}

}  // namespace peft

}  // namespace oft

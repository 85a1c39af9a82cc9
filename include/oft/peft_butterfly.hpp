#pragma once
/// \file peft_butterfly.hpp
/// Hugging Face PEFT's BOFT parameters as oft::Butterfly's generators (peft 0.21.2,
/// `tuners/boft/layer.py`; docs/families.md section 1).
///
/// PEFT stores `boft_R` [m, N, b, b] dense, uses its skew part S = (A - A^T) / 2 and the block
/// R = (I - S)(I + S)^-1, i.e. oft's exact Cayley R(Q) = (I + Q)(I - Q)^-1 at Q = -S. So the
/// packed generator of block (i, g) is theta[i N + g](p, q) = (A[q][p] - A[p][q]) / 2, and back,
/// dL/dA[p][q] = -dtheta(p, q) / 2, dL/dA[q][p] = +dtheta(p, q) / 2, zero on the diagonal (PEFT's
/// autograd gives the same: the diagonal of A does not enter S). boft_s, PEFT's output scale,
/// is the layer's and not the rotation's: Y = ((X M) W0^T) .* s^T + bias.

#include "butterfly_spec.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "skew.hpp"

namespace oft::peft {

/// theta (m N rows of b(b-1)/2) from `boft_R`, m N b b contiguous values in PEFT's order.
template <class Source, class Scalar>
void boft_generators(const Source* boft_R, const ButterflySpec& spec, GeneratorView<Scalar> theta) {
  spec.validate();
  detail::require(theta.count() == spec.generators() && theta.block_size() == spec.block_size,
                  "boft theta has ", theta.count(), " generators of b=", theta.block_size(),
                  ", expected m N = ", spec.generators(), " of b=", spec.block_size);
  const Index b = spec.block_size, area = b * b;
  for (Index g = 0; g < spec.generators(); ++g) {
    const Source* a = boft_R + g * area;
    Scalar* row = theta.row(g);
    for (Index p = 0; p < b; ++p)
      for (Index q = p + 1; q < b; ++q)
        row[packed_index(p, q, b)] =
            static_cast<Scalar>((static_cast<double>(a[q * b + p]) - static_cast<double>(a[p * b + q])) / 2);
  }
}

/// d boft_R (m N b b values, PEFT's order) from oft's dtheta.
template <class Scalar, class Target>
void boft_gradient(GeneratorView<const Scalar> dtheta, const ButterflySpec& spec, Target* d_boft_R) {
  spec.validate();
  detail::require(dtheta.count() == spec.generators() && dtheta.block_size() == spec.block_size,
                  "boft dtheta has ", dtheta.count(), " generators of b=", dtheta.block_size(),
                  ", expected m N = ", spec.generators(), " of b=", spec.block_size);
  const Index b = spec.block_size, area = b * b;
  for (Index g = 0; g < spec.generators(); ++g) {
    Target* a = d_boft_R + g * area;
    const Scalar* row = dtheta.row(g);
    for (Index p = 0; p < b; ++p) {
      a[p * b + p] = Target(0);
      for (Index q = p + 1; q < b; ++q) {
        const double half = static_cast<double>(row[packed_index(p, q, b)]) / 2;
        a[p * b + q] = static_cast<Target>(-half);
        a[q * b + p] = static_cast<Target>(half);
      }
    }
  }
}

}  // namespace oft::peft

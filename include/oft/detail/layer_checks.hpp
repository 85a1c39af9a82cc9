#pragma once
/// \file detail/layer_checks.hpp
/// The argument checks of a linear layer's forward and backward (OftLinear, QoftLinear), made
/// before anything is written: shapes against d and n_out, and which buffers may overlap.
#include "../skew.hpp"
#include "../view.hpp"

namespace oft::detail {

/// Forward: X is N x d, the output N x n_out and disjoint from X.
template <class Scalar>
void check_layer_forward(const ConstMatrixView<Scalar>& x, const MatrixView<Scalar>& z, Index d,
                         Index n_out, const char* out_name) {
  require(x.cols() == d, "X has ", x.cols(), " columns, expected d=", d, " (W0 is ", n_out, "x", d, ")");
  require_shape(z, x.rows(), n_out, out_name);
  require_disjoint(z, x, out_name, "X");
}

/// Backward: dZ is N x n_out; dX (if wanted) N x d, disjoint from dZ, and either X itself (in
/// place, when dx_may_be_x) or disjoint from it; dtheta (if wanted) the rotation's generator
/// shape, disjoint from every matrix.
template <class Rotation, class Scalar>
void check_layer_backward(const Rotation& rotation, const ConstMatrixView<Scalar>& x,
                          const ConstMatrixView<Scalar>& dz, const MatrixView<Scalar>& dx,
                          const GeneratorView<Scalar>& dtheta, Index d, Index n_out, bool dx_may_be_x) {
  require(x.cols() == d, "X has ", x.cols(), " columns, expected d=", d);
  require_shape(dz, x.rows(), n_out, "dZ");
  if (dx.data() != nullptr) {
    require_shape(dx, x.rows(), d, "dX");
    require_disjoint(dx, dz, "dX", "dZ");
    if (dx_may_be_x)
      require_in_place_or_disjoint(dx, x, "dX", "X");
    else
      require_disjoint(dx, x, "dX", "X");
  }
  if (dtheta.data() != nullptr) {
    rotation.check_generators(dtheta, "dtheta");
    require_disjoint(dtheta.matrix(), x, "dtheta", "X");
    require_disjoint(dtheta.matrix(), dz, "dtheta", "dZ");
    if (dx.data() != nullptr) require_disjoint(dtheta.matrix(), dx, "dtheta", "dX");
  }
}

}  // namespace oft::detail

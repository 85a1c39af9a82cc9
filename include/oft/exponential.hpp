#pragma once
/// \file exponential.hpp
/// Matrix exponential parameterization R = exp(Q), for comparison with the Cayley maps (exactly
/// orthogonal for skew Q, no restriction on ||Q||). Uses Eigen's unsupported MatrixFunctions
/// (scaling and squaring with Pade approximants).
///
/// Gradient: dL/dQ is the adjoint Fréchet derivative of exp at Q applied to G, which equals the
/// upper-right block of exp([[Q^T, G], [0, Q^T]]) (Mathias' block-triangular identity).

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <unsupported/Eigen/MatrixFunctions>

#include "parameterization.hpp"

namespace oft {

struct MatrixExponential {
  struct Plan {};
  static constexpr const char* name = "exponential";

  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& /*q*/) const { return {}; }
  static PlanSummary summary(Plan) { return PlanSummary{true, -1}; }

  template <class Scalar>
  void rotation(const SquareMatrix<Scalar>& q, Plan, SquareMatrix<Scalar>& r) const {
    r = q.exp();
  }

  template <class Scalar>
  void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& /*r*/, Plan,
                    const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) const {
    const Index b = q.rows();
    SquareMatrix<Scalar> m = SquareMatrix<Scalar>::Zero(2 * b, 2 * b);
    m.topLeftCorner(b, b) = q.transpose();
    m.bottomRightCorner(b, b) = q.transpose();
    m.topRightCorner(b, b) = g;
    const SquareMatrix<Scalar> e = m.exp();
    dq = e.topRightCorner(b, b);
  }
};

}  // namespace oft

#pragma once
/// \file cayley.hpp
/// Exact Cayley transform R(Q) = (I + Q)(I - Q)^-1 = (I - Q)^-1 (I + Q) (SPEC section 3).
/// Orthogonal with det +1 for every skew Q: I - Q is always invertible (Q has imaginary
/// eigenvalues). Computed by an LU solve, never an explicit inverse.
///
/// Gradient: with G = dL/dR, dL/dQ = (I + R)^T G (I - Q)^-T; since (I - Q)^-T = (I + Q)^-1 the
/// same LU factorization of I - Q serves: dQ^T = (I - Q)^-1 (G^T (I + R)).

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/LU>

#include "parameterization.hpp"
#include "policies.hpp"

namespace oft {

namespace detail {
template <class Scalar>
struct PolicyOps<ExactCayley, SquareMatrix<Scalar>> {
  static void rotation(const SquareMatrix<Scalar>& q, SquareMatrix<Scalar>& r) {
    const Index b = q.rows();
    const SquareMatrix<Scalar> identity = SquareMatrix<Scalar>::Identity(b, b);
    Eigen::PartialPivLU<SquareMatrix<Scalar>> lu(identity - q);
    r = lu.solve(identity + q);
  }

  static void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& r,
                           const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) {
    const Index b = q.rows();
    const SquareMatrix<Scalar> identity = SquareMatrix<Scalar>::Identity(b, b);
    Eigen::PartialPivLU<SquareMatrix<Scalar>> lu(identity - q);
    const SquareMatrix<Scalar> rhs = g.transpose() * (identity + r);  // ((I+R)^T G)^T
    dq = lu.solve(rhs).transpose();
  }
};
}  // namespace detail

}  // namespace oft

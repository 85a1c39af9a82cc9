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

#include "detail/thread_scratch.hpp"
#include "parameterization.hpp"
#include "policies.hpp"

namespace oft {

namespace detail {
template <class Scalar>
struct ParameterizationOps<ExactCayley, SquareMatrix<Scalar>> {
  static void rotation(const SquareMatrix<Scalar>& q, SquareMatrix<Scalar>& r) {
    const Index b = q.rows();
    SquareMatrix<Scalar>& rhs = thread_matrix<Scalar, ScratchSlot::CayleyRhs>(b, b);
    rhs = q;
    rhs.diagonal().array() += Scalar(1);  // I + Q
    r = factorized(q).solve(rhs);
  }

  static void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& r,
                           const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) {
    const Index b = q.rows();
    SquareMatrix<Scalar>& rhs = thread_matrix<Scalar, ScratchSlot::CayleyRhs>(b, b);
    SquareMatrix<Scalar>& solved = thread_matrix<Scalar, ScratchSlot::CayleySolved>(b, b);
    rhs.noalias() = g.transpose() * r;  // ((I+R)^T G)^T = G^T + G^T R
    rhs += g.transpose();
    solved = factorized(q).solve(rhs);
    dq = solved.transpose();
  }

 private:
  /// This thread's LU of I - Q. The factorization and every matrix above are per-thread scratch
  /// (detail/thread_scratch.hpp), so steady-state calls allocate nothing.
  static const Eigen::PartialPivLU<SquareMatrix<Scalar>>& factorized(
      const SquareMatrix<Scalar>& q) {
    const Index b = q.rows();
    SquareMatrix<Scalar>& lhs = thread_matrix<Scalar, ScratchSlot::CayleyLhs>(b, b);
    lhs = -q;
    lhs.diagonal().array() += Scalar(1);  // I - Q
    thread_local Eigen::PartialPivLU<SquareMatrix<Scalar>> lu;
    lu.compute(lhs);
    return lu;
  }
};
}  // namespace detail

}  // namespace oft

#pragma once
/// \file parameterization.hpp
/// What a parameterization policy provides. The operators (BlockOrthogonal, OftLinear) are
/// templates over a policy type P that maps one skew-symmetric generator Q (b x b) to an
/// (approximately) orthogonal block R and back-propagates through that map:
///
///   typename P::Plan                      per-generator decision made from Q (e.g. the number
///                                         of Neumann terms chosen for a tolerance); cheap to copy
///   Plan plan(const SquareMatrix<S>& Q)   decide; may throw std::domain_error
///   void rotation(Q, plan, R)             R = f(Q)
///   void rotation_vjp(Q, R, plan, G, dQ)  dQ = dL/dQ given G = dL/dR (vector-Jacobian product)
///   static constexpr const char* name
///
/// Policies: ExactCayley (cayley.hpp), CayleyNeumann and CayleyNeumannTolerance
/// (cayley_neumann.hpp), MatrixExponential (exponential.hpp).

#include "config.hpp"

namespace oft {

/// Dense square matrix type used for per-block parameterization math (column-major, dynamic).
template <class Scalar>
using SquareMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// Dense row-major matrix type returned by operators (dense(), block()).
template <class Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// What a policy decided for one generator, as plain data (for reports and tests).
struct PlanSummary {
  bool exact = false;  ///< exact Cayley (or exponential) was used
  int terms = -1;      ///< Neumann terms k when a truncated series was used, else -1
};

}  // namespace oft

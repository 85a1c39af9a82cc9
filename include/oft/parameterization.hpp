#pragma once
/// \file parameterization.hpp
/// What a parameterization provides. The operators (BlockOrthogonal, OftLinear) are
/// templates over a parameterization type P that maps one skew-symmetric generator Q (b x b) to an
/// (approximately) orthogonal block R and back-propagates through that map:
///
///   typename P::Plan                      per-generator decision made from Q (e.g. the number
///                                         of Neumann terms chosen for a tolerance); cheap to copy
///   Plan plan(const SquareMatrix<S>& Q)   decide; may throw std::domain_error
///   void rotation(Q, plan, R)             R = f(Q)
///   void rotation_vjp(Q, R, plan, G, dQ)  dQ = dL/dQ given G = dL/dR (vector-Jacobian product)
///   static constexpr const char* name
///
/// Parameterizations: ExactCayley (cayley.hpp), CayleyNeumann and CayleyNeumannTolerance
/// (cayley_neumann.hpp), MatrixExponential (exponential.hpp).

#include <type_traits>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "config.hpp"
#include "policies.hpp"

namespace oft {

static_assert(std::is_same_v<Index, Eigen::Index>,
              "oft::Index must equal Eigen::Index (do not redefine EIGEN_DEFAULT_DENSE_INDEX_TYPE)");
static_assert(Dynamic == Eigen::Dynamic, "oft::Dynamic must equal Eigen::Dynamic");

/// Dense square matrix type used for per-block parameterization math (column-major, dynamic).
template <class Scalar>
using SquareMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// Dense row-major matrix type returned by operators (dense(), block()).
template <class Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace oft

#pragma once
/// \file orthogonality.hpp
/// How far a matrix is from orthogonal: ||R^T R - I|| in the spectral or Frobenius norm, the
/// measure that the operators' orthogonality_error(s) report per block.

#include <limits>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "config.hpp"
#include "errors.hpp"
#include "parameterization.hpp"

namespace oft {

/// Matrix norm of the orthogonality defect R^T R - I reported by orthogonality_error(s).
enum class OrthogonalityNorm {
  Spectral,   ///< ||.||_2, the largest singular value (what SPEC's bounds are stated in)
  Frobenius,  ///< ||.||_F, the root of the sum of squares (cheap, <= sqrt(b) * spectral)
};

/// ||R^T R - I|| of one square matrix, computed in double; +infinity when R has a non-finite
/// entry (a NaN R is never reported as orthogonal).
template <class Derived>
double orthogonality_error(const Eigen::MatrixBase<Derived>& r,
                           OrthogonalityNorm norm = OrthogonalityNorm::Spectral) {
  detail::require(r.rows() == r.cols(), "orthogonality_error needs a square matrix, got ", r.rows(),
                  "x", r.cols());
  const SquareMatrix<double> rd = r.template cast<double>();
  if (!rd.allFinite()) return std::numeric_limits<double>::infinity();
  const Index b = rd.rows();
  const SquareMatrix<double> defect = rd.transpose() * rd - SquareMatrix<double>::Identity(b, b);
  if (norm == OrthogonalityNorm::Frobenius) return defect.norm();
  if (b == 0) return 0.0;
  Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig(defect, Eigen::EigenvaluesOnly);
  return eig.eigenvalues().cwiseAbs().maxCoeff();
}

}  // namespace oft

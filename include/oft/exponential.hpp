#pragma once
/// \file exponential.hpp
/// Matrix exponential parameterization R = exp(Q), for comparison with the Cayley maps (exactly
/// orthogonal for skew Q, no restriction on ||Q||). Uses Eigen's unsupported MatrixFunctions
/// (scaling and squaring with Pade approximants).
///
/// Gradient: dL/dQ is the adjoint Fréchet derivative of exp at Q applied to G, which equals the
/// upper-right block of exp([[Q^T, G], [0, Q^T]]) (Mathias' block-triangular identity). It is
/// linear in G, but the exponential of the block matrix is not: its scaling and squaring picks
/// the number of squarings from the norm of the whole matrix, so a large G costs extra
/// squarings, each adding rounding: unscaled, the relative error grows from 4e-16 at |G| = 1 to
/// 3e-13 at 1e4 and 1e-9..5e-9 at 1e8 (b = 3..16, tests/test_exponential.cpp). G is therefore
/// scaled by a power of two to 1-norm below 1 first (exact) and the result scaled back (exact):
/// the relative error stays at about 4e-16 in double for every |G|.

#include <cmath>

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
    const int exponent = unit_scale_exponent(g);
    SquareMatrix<Scalar> m = SquareMatrix<Scalar>::Zero(2 * b, 2 * b);
    m.topLeftCorner(b, b) = q.transpose();
    m.bottomRightCorner(b, b) = q.transpose();
    m.topRightCorner(b, b) = g * std::ldexp(Scalar(1), -exponent);
    const SquareMatrix<Scalar> e = m.exp();
    dq = e.topRightCorner(b, b) * std::ldexp(Scalar(1), exponent);
  }

 private:
  /// e with 2^(e-1) <= ||G||_1 < 2^e (0 for a zero or non-finite G, which stays unscaled).
  /// G 2^-e has 1-norm below 1, the norm Eigen's exp() picks its Pade degree and squarings by,
  /// so G adds at most one squaring; both scalings by powers of two are exact (barring underflow
  /// of entries below 2^-1021 ||G||_1 in double, which cannot matter next to the largest).
  template <class Scalar>
  static int unit_scale_exponent(const SquareMatrix<Scalar>& g) {
    if (g.size() == 0) return 0;
    const Scalar one_norm = g.cwiseAbs().colwise().sum().maxCoeff();
    if (!(one_norm > Scalar(0)) || !std::isfinite(one_norm)) return 0;
    int exponent = 0;
    (void)std::frexp(one_norm, &exponent);
    return exponent;
  }
};

}  // namespace oft

#pragma once
/// \file newton_schulz.hpp
/// Newton–Schulz orthogonalization as a parameterization: products only, no LU, no inverse.
///
///   oft::NewtonSchulz{5}                                   // A = (I + Q)^2, 5 iterations
///   oft::NewtonSchulz{3, oft::NewtonSchulzBase::Linear}    // A = I + Q
///
/// Map. A = p(Q) is a polynomial start, X_0 = A / beta, then `iterations` steps of
/// X <- X (3I - X^T X) / 2, and R = X_iterations. The iteration drives every singular value of X
/// to 1 and keeps the singular vectors, so it converges to the polar factor of A:
///
/// - NewtonSchulzBase::CayleySquare (default): A = (I + Q)^2 = I + 2Q + Q^2 (Cayley–Neumann with
///   k = 1). Since (I + Q)^2 = R_cayley (I - Q^2) and I - Q^2 = I + Q^T Q is symmetric positive
///   definite and commutes with R_cayley, the polar factor of A is exactly the Cayley transform
///   (I + Q)(I - Q)^-1: the iteration converges to exact Cayley, for every Q. First order at
///   Q = 0 it is I + 2Q, as exact Cayley.
/// - NewtonSchulzBase::Linear: A = I + Q; the polar factor is (I + Q)(I - Q^2)^(-1/2), whose
///   eigenvalues e^(i atan(lambda)) have half the Cayley angle (first order I + Q). An orthogonal
///   map of its own, not an approximation of Cayley.
///
/// Scaling (why it converges). A is a polynomial in the normal Q, so it is normal; its singular
/// values are 1 + lambda_j^2 (CayleySquare) or sqrt(1 + lambda_j^2) (Linear), between 1 and
/// beta = 1 + ||Q||_F^2 / 2 (resp. sqrt(1 + ||Q||_F^2 / 2)), since rho^2 <= ||Q||_F^2 / 2. So the
/// singular values of X_0 lie in [1 / beta, 1]. On (0, 1] the scalar map f(s) = s (3 - s^2) / 2
/// is increasing with f(s) >= s and f(1) = 1, so every singular value rises monotonically to 1,
/// quadratically at the end: 1 - f(1 - e) = (3/2) e^2 - (1/2) e^3. beta is the Frobenius bound
/// (not rho) because it is smooth in Q and costs O(b^2); it is up to sqrt(b/2) looser than rho.
///
/// Error. All iterates are polynomials in A, so X_j = U h_j(H) with U the polar factor, and
///   ||X_j - U||_2 = 1 - f^j(s_min),  s_min = min_j sigma_j(A) / beta >= 1 / beta,
/// exactly (with s_min = 1 / beta when Q has a zero eigenvalue, always for odd b); U is exact
/// Cayley for CayleySquare. ||X_j^T X_j - I||_2 = 1 - f^j(s_min)^2 <= 2 (1 - f^j(s_min)).
/// newton_schulz_distance_bound(||Q||_F, j, base) returns 1 - f^j(1 / beta), a bound of both
/// the distance to U and half the orthogonality error. E.g. ||Q||_F^2 / 2 = 0.25 (beta = 1.25,
/// CayleySquare): 0.2, 0.056, 4.6e-3, 3.2e-5, 1.5e-9, 3.5e-18 for j = 0..5.
///
/// Gradient: the backward differentiates the iterations the forward computed (not the limit).
/// With S = X^T X and Gbar = dL/dX_(i+1), X_(i+1) = (3/2) X - (1/2) X S gives
///   dL/dX_i = (3/2) Gbar - (1/2) Gbar S - (1/2) X (M + M^T),  M = X^T Gbar,
/// then through X_0 = A / beta: dL/dA = Gbar_0 / beta and dL/dbeta = -<Gbar_0, X_0> / beta, with
/// grad beta = Q (CayleySquare) or Q / (2 beta) (Linear), and through A = p(Q) by the
/// polynomial's adjoint Horner pass (cayley_neumann.hpp). The iterates are recomputed in the
/// backward and kept (iterations + 1 matrices b x b, this thread's scratch).
///
/// Cost in b x b products (2 b^3 flops each), j iterations: forward 1 (CayleySquare; 0 for
/// Linear) + 2 j; backward recomputes the forward but its last step (1 + 2 (j - 1)), adds 4 per
/// iteration and 3 for the polynomial (CayleySquare): 6 j + 2 in all. Exact Cayley costs one LU
/// and a b-column solve (2/3 + 2 = 2.7 b^3 flops, about 1.3 products) forward and the same plus
/// one product backward, so on the CPU Newton–Schulz costs more at every iteration count that
/// gives an accurate R (docs/families.md section 6 has measured times); its use is hardware
/// where products are much cheaper than factorizations (GPU tensor cores), and agreement with a
/// trainer that uses it.

#include <cmath>
#include <vector>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "cayley_neumann.hpp"
#include "errors.hpp"
#include "neumann.hpp"
#include "parameterization.hpp"
#include "policies.hpp"

namespace oft {

/// The polynomial that Newton–Schulz orthogonalizes (see newton_schulz.hpp).
enum class NewtonSchulzBase {
  CayleySquare,  ///< A = (I + Q)^2; converges to exact Cayley
  Linear,        ///< A = I + Q; converges to the polar factor of I + Q (half the Cayley angle)
};

/// 1 - f^j(1 / beta) with f(s) = s (3 - s^2) / 2 and beta from ||Q||_F (see the file comment):
/// a bound of ||R - U||_2 (U the limit; exact Cayley for CayleySquare) and of half of
/// ||R^T R - I||_2, in exact arithmetic.
inline double newton_schulz_distance_bound(double frobenius_norm, int iterations,
                                           NewtonSchulzBase base = NewtonSchulzBase::CayleySquare) {
  const double half_square = frobenius_norm * frobenius_norm / 2.0;
  const double beta =
      base == NewtonSchulzBase::CayleySquare ? 1.0 + half_square : std::sqrt(1.0 + half_square);
  double s = 1.0 / beta;
  for (int j = 0; j < iterations; ++j) s = s * (3.0 - s * s) / 2.0;
  return 1.0 - s;
}

/// Newton–Schulz orthogonalization of A = p(Q) with a fixed number of iterations (see the file
/// comment). Settings, checked (std::invalid_argument naming the value): 1 <= iterations <=
/// kMaxIterations, base one of NewtonSchulzBase.
struct NewtonSchulz {
  struct Plan {};
  static constexpr const char* name = "newton_schulz";
  static constexpr int kMaxIterations = 64;

  /// 5 iterations on (I + Q)^2 (not explicit, see CayleyNeumann()).
  NewtonSchulz() : NewtonSchulz(5) {}
  explicit NewtonSchulz(int steps, NewtonSchulzBase start = NewtonSchulzBase::CayleySquare)
      : iterations(steps), base(start) {
    check_settings();
  }

  int iterations;
  NewtonSchulzBase base;

  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& /*q*/) const {
    check_settings();
    return {};
  }
  static PlanSummary summary(Plan) { return PlanSummary{false, -1}; }

  template <class Scalar>
  void rotation(const SquareMatrix<Scalar>& q, Plan, SquareMatrix<Scalar>& r) const {
    const Index b = q.rows();
    const double beta = start(q, r);
    r /= static_cast<Scalar>(beta);
    struct XtTag {};
    struct STag {};
    struct NextTag {};
    SquareMatrix<Scalar>& xt = scratch<Scalar, XtTag>(b);
    SquareMatrix<Scalar>& s = scratch<Scalar, STag>(b);
    SquareMatrix<Scalar>& next = scratch<Scalar, NextTag>(b);
    for (int i = 0; i < iterations; ++i) step(r, xt, s, next);
  }

  template <class Scalar>
  void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& /*r*/, Plan,
                    const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) const {
    const Index b = q.rows();
    thread_local std::vector<SquareMatrix<Scalar>> xs;
    if (xs.size() < static_cast<size_t>(iterations) + 1) xs.resize(static_cast<size_t>(iterations) + 1);
    struct XtTag {};
    struct STag {};
    struct NextTag {};
    struct MTag {};
    struct GbarTag {};
    SquareMatrix<Scalar>& xt = scratch<Scalar, XtTag>(b);
    SquareMatrix<Scalar>& s = scratch<Scalar, STag>(b);
    SquareMatrix<Scalar>& next = scratch<Scalar, NextTag>(b);
    SquareMatrix<Scalar>& m = scratch<Scalar, MTag>(b);
    SquareMatrix<Scalar>& gbar = scratch<Scalar, GbarTag>(b);

    // Forward again, keeping X_0 .. X_(iterations - 1); A is kept in xs[iterations].
    SquareMatrix<Scalar>& a = xs[static_cast<size_t>(iterations)];
    const double beta = start(q, a);
    xs[0] = a / static_cast<Scalar>(beta);
    for (int i = 0; i + 1 < iterations; ++i) {
      xs[static_cast<size_t>(i) + 1] = xs[static_cast<size_t>(i)];
      step(xs[static_cast<size_t>(i) + 1], xt, s, next);
    }

    gbar = g;
    for (int i = iterations - 1; i >= 0; --i) {
      const SquareMatrix<Scalar>& x = xs[static_cast<size_t>(i)];
      xt = x.transpose();
      detail::multiply_square(xt, x, s);     // S = X^T X
      detail::multiply_square(xt, gbar, m);  // M = X^T Gbar
      detail::multiply_square(gbar, s, next);  // Gbar S
      next *= Scalar(-0.5);
      next += Scalar(1.5) * gbar;
      xt = m + m.transpose();                           // M + M^T (xt is free again)
      detail::multiply_square(x, xt, s);                // X (M + M^T) (s is free again)
      next -= Scalar(0.5) * s;
      gbar.swap(next);
    }

    // Through X_0 = A / beta and A = p(Q).
    const double dbeta = -(gbar.template cast<double>().cwiseProduct(xs[0].template cast<double>()))
                              .sum() /
                         beta;
    gbar /= static_cast<Scalar>(beta);
    detail::polynomial_rotation_vjp(q, NeumannCoefficients{base_terms()}, gbar, dq);
    const double along = base == NewtonSchulzBase::CayleySquare ? dbeta : dbeta / (2.0 * beta);
    dq += static_cast<Scalar>(along) * q;
  }

 private:
  int base_terms() const { return base == NewtonSchulzBase::CayleySquare ? 1 : 0; }

  /// a = p(Q); returns beta.
  template <class Scalar>
  double start(const SquareMatrix<Scalar>& q, SquareMatrix<Scalar>& a) const {
    detail::polynomial_rotation(q, NeumannCoefficients{base_terms()}, a);
    const double half_square = q.template cast<double>().squaredNorm() / 2.0;
    return base == NewtonSchulzBase::CayleySquare ? 1.0 + half_square
                                                  : std::sqrt(1.0 + half_square);
  }

  /// X <- (3/2) X - (1/2) X (X^T X), with three scratch matrices.
  template <class Scalar>
  static void step(SquareMatrix<Scalar>& x, SquareMatrix<Scalar>& xt, SquareMatrix<Scalar>& s,
                   SquareMatrix<Scalar>& next) {
    xt = x.transpose();
    detail::multiply_square(xt, x, s);
    detail::multiply_square(x, s, next);
    x = Scalar(1.5) * x - Scalar(0.5) * next;
  }

  /// This thread's b x b scratch, one per Tag (not a ScratchSlot: the polynomial passes use
  /// those while these are live).
  template <class Scalar, class Tag>
  static SquareMatrix<Scalar>& scratch(Index b) {
    thread_local SquareMatrix<Scalar> matrix;
    if (matrix.rows() != b || matrix.cols() != b) matrix.resize(b, b);
    return matrix;
  }

  void check_settings() const {
    detail::require(iterations >= 1 && iterations <= kMaxIterations,
                    "NewtonSchulz needs 1 <= iterations <= ", kMaxIterations, ", got iterations=",
                    iterations);
    detail::require(base == NewtonSchulzBase::CayleySquare || base == NewtonSchulzBase::Linear,
                    "NewtonSchulz base ", static_cast<int>(base), " is no NewtonSchulzBase");
  }
};

}  // namespace oft

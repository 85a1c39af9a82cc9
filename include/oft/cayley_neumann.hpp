#pragma once
/// \file cayley_neumann.hpp
/// Cayley–Neumann parameterization (OFTv2): the inverse in the Cayley transform is replaced by a
/// truncated Neumann series, R_k(Q) = (I + Q)(I + Q + ... + Q^k) = I + 2Q + ... + 2Q^k + Q^(k+1).
/// No matrix inverse; exact as a polynomial for every Q, but only close to orthogonal when
/// rho = ||Q||_2 < 1 (see neumann.hpp for the error formulas).
///
/// Gradient: the backward differentiates the truncated polynomial that the forward computed (not
/// the exact Cayley map). For p(Q) = sum_j c_j Q^j, dL/dQ is the upper-right block of
/// p([[Q^T, G], [0, Q^T]]) (the adjoint Fréchet derivative), which one Horner pass over the
/// block-triangular matrix produces with three b x b products per term and no stored powers.
///
/// Two policies:
/// - CayleyNeumann{k}: a fixed number of terms (PEFT's num_cayley_neumann_terms t is k = t - 2,
///   see peft.hpp).
/// - CayleyNeumannTolerance{tol}: per generator, the smallest even k whose orthogonality error
///   bound meets tol, from the exact rho (or a free upper bound of it when that already gives
///   k <= 2). When rho >= 1 (series diverges) or no
///   k <= max_terms suffices it throws std::domain_error, or, with OnDivergence::UseExactCayley,
///   uses the exact Cayley transform for that generator (reported by summary()).

#include <cmath>
#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Eigenvalues>

#include "cayley.hpp"
#include "cpu/gemm_tile.hpp"
#include "errors.hpp"
#include "neumann.hpp"
#include "parameterization.hpp"

namespace oft {

namespace detail {

/// c = a * b (accumulate: c += a * b) for square column-major matrices through the CPU
/// register-tiled kernel, which is several times faster than Eigen's general product at the
/// block sizes of OFT (b = 16..128). Column-major data of M is row-major data of M^T, so the
/// kernel computes C^T = B^T A^T. `c` must not alias `a` or `b`.
template <class Scalar>
void multiply_square(const SquareMatrix<Scalar>& a, const SquareMatrix<Scalar>& b,
                     SquareMatrix<Scalar>& c, bool accumulate = false) {
  const Index n = a.rows();
  cpu_detail::gemm_small(n, n, n, b.data(), n, 1, a.data(), n, c.data(), n, accumulate);
}

/// R = sum_{j=0}^{k+1} c_j Q^j by Horner's rule. The first step (c_{k+1} I) Q + c_k I needs no
/// product, so k products in all.
template <class Scalar>
void neumann_rotation(const SquareMatrix<Scalar>& q, int k, SquareMatrix<Scalar>& r) {
  const Index b = q.rows();
  r = q;
  r.diagonal().array() += Scalar(neumann_coefficient(k, k));
  SquareMatrix<Scalar> next(b, b);
  for (int j = k - 1; j >= 0; --j) {
    multiply_square(r, q, next);
    next.diagonal().array() += Scalar(neumann_coefficient(j, k));
    r.swap(next);
  }
}

/// dQ = sum_j c_j sum_{a+b=j-1} (Q^T)^a G (Q^T)^b via Horner on [[Q^T, G], [0, Q^T]]: the state
/// [[P1, P2], [0, P1]] advances by P2 <- P1 G + P2 Q^T, P1 <- P1 Q^T + c_j I. The first step
/// from P1 = I, P2 = 0 is free, so 3k products in all and three b x b temporaries.
template <class Scalar>
void neumann_rotation_vjp(const SquareMatrix<Scalar>& q, int k, const SquareMatrix<Scalar>& g,
                          SquareMatrix<Scalar>& dq) {
  const Index b = q.rows();
  const SquareMatrix<Scalar> a = q.transpose();
  SquareMatrix<Scalar> p1 = a;
  p1.diagonal().array() += Scalar(neumann_coefficient(k, k));
  dq = g;
  SquareMatrix<Scalar> next1(b, b), next2(b, b);
  for (int j = k - 1; j >= 0; --j) {
    multiply_square(p1, g, next2);
    multiply_square(dq, a, next2, true);
    multiply_square(p1, a, next1);
    next1.diagonal().array() += Scalar(neumann_coefficient(j, k));
    p1.swap(next1);
    dq.swap(next2);
  }
}

/// Cheap guaranteed upper bound on ||Q||_2 for skew Q: min(||Q||_F / sqrt(2), ||Q||_1).
template <class Scalar>
double skew_spectral_norm_bound(const SquareMatrix<Scalar>& q) {
  const double frobenius = static_cast<double>(q.norm()) / std::sqrt(2.0);
  const double one_norm =
      q.size() == 0 ? 0.0 : static_cast<double>(q.cwiseAbs().colwise().sum().maxCoeff());
  return std::min(frobenius, one_norm);
}

/// ||Q||_2 computed exactly (largest eigenvalue of Q^T Q), O(b^3).
template <class Scalar>
double skew_spectral_norm(const SquareMatrix<Scalar>& q) {
  if (q.size() == 0) return 0.0;
  const SquareMatrix<double> qd = q.template cast<double>();
  Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig(qd.transpose() * qd,
                                                          Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
}

}  // namespace detail

namespace detail {
template <class Scalar>
struct PolicyOps<CayleyNeumann, SquareMatrix<Scalar>> {
  static void rotation(int k, const SquareMatrix<Scalar>& q, SquareMatrix<Scalar>& r) {
    neumann_rotation(q, k, r);
  }
  static void rotation_vjp(int k, const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& g,
                           SquareMatrix<Scalar>& dq) {
    neumann_rotation_vjp(q, k, g, dq);
  }
};
}  // namespace detail

/// What CayleyNeumannTolerance does for a generator whose series cannot meet the tolerance.
enum class OnDivergence {
  Throw,           ///< std::domain_error naming rho, the tolerance and the generator
  UseExactCayley,  ///< exact Cayley for that generator (orthogonal; costs one LU of size b)
};

/// Cayley–Neumann whose k is chosen per generator from an orthogonality tolerance.
struct CayleyNeumannTolerance {
  struct Plan {
    int terms = 0;       ///< chosen k (meaningless when exact)
    bool exact = false;  ///< fell back to the exact Cayley transform
    double rho = 0.0;    ///< the bound of ||Q||_2 the choice used
  };
  static constexpr const char* name = "cayley_neumann_tolerance";

  /// tol = 1e-6, OnDivergence::Throw, max_terms = 64 (not explicit, see CayleyNeumann()).
  CayleyNeumannTolerance() : CayleyNeumannTolerance(1e-6) {}
  explicit CayleyNeumannTolerance(double tol, OnDivergence on_divergence = OnDivergence::Throw,
                                  int max_terms = 64)
      : tolerance(tol), on_divergence(on_divergence), max_terms(max_terms) {
    detail::require(tol > 0.0 && std::isfinite(tol),
                    "Cayley-Neumann tolerance must be finite and > 0, got ", tol);
    detail::require(max_terms >= 0, "Cayley-Neumann max_terms must be >= 0, got ", max_terms);
  }

  double tolerance;
  OnDivergence on_divergence;
  int max_terms;

  /// Largest k accepted from the free bound without computing the exact rho.
  static constexpr int kFreeBoundTerms = 2;

  /// Uses the cheap bound min(||Q||_F/sqrt(2), ||Q||_1) when it already gives k <= 2. Otherwise
  /// the exact spectral norm is computed (an O(b^3) eigenvalue solve, about one b x b product):
  /// the free bound can be loose by up to sqrt(b/2), and every term it adds costs four products
  /// (one in theta -> R, three in the backward). So no generator with rho < 1 is refused, and no
  /// k is larger than the exact rho needs, because of a loose bound.
  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& q) const {
    Plan p;
    p.rho = detail::skew_spectral_norm_bound(q);
    p.terms = neumann_terms_for_tolerance(p.rho, tolerance, max_terms);
    if (p.terms < 0 || p.terms > kFreeBoundTerms) {
      p.rho = detail::skew_spectral_norm(q);
      p.terms = neumann_terms_for_tolerance(p.rho, tolerance, max_terms);
    }
    if (p.terms >= 0) return p;
    if (on_divergence == OnDivergence::UseExactCayley) {
      p.exact = true;
      return p;
    }
    detail::require_domain(false, "Cayley-Neumann series cannot meet tolerance ", tolerance,
                           ": ||Q||_2 = ", p.rho,
                           p.rho >= 1.0 ? " >= 1, so the series diverges"
                                        : " needs more than max_terms terms",
                           " (max_terms=", max_terms,
                           "); use OnDivergence::UseExactCayley or a smaller step");
    return p;
  }
  static PlanSummary summary(const Plan& p) {
    return p.exact ? PlanSummary{true, -1} : PlanSummary{false, p.terms};
  }

  template <class Scalar>
  void rotation(const SquareMatrix<Scalar>& q, const Plan& p, SquareMatrix<Scalar>& r) const {
    if (p.exact)
      ExactCayley{}.rotation(q, ExactCayley::Plan{}, r);
    else
      detail::neumann_rotation(q, p.terms, r);
  }
  template <class Scalar>
  void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& r, const Plan& p,
                    const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) const {
    if (p.exact)
      ExactCayley{}.rotation_vjp(q, r, ExactCayley::Plan{}, g, dq);
    else
      detail::neumann_rotation_vjp(q, p.terms, g, dq);
  }
};

}  // namespace oft

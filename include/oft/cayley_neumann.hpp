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
/// Both passes take any coefficient sequence (detail::polynomial_rotation[_vjp]); PEFT's
/// polynomials (peft_polynomial.hpp) use them too.
///
/// Two parameterizations:
/// - CayleyNeumann{k}: a fixed number of terms (PEFT's num_cayley_neumann_terms t is k = t - 2,
///   see peft.hpp).
/// - CayleyNeumannTolerance{tol}: per generator, the smallest k >= min_terms (default 1) whose
///   error meets tol, from the exact rho (or a free upper bound of it when that already gives
///   k <= 2). The error measured is, by default, the distance to exact Cayley
///   ||R - R_k||_2 = rho^(k+1) (any k), the measure for training:
///     * every R the parameterization can return for Q (R_k for any admissible k, from either rho, or exact
///       Cayley) lies within tol of exact Cayley's R(Q), so wherever the choice changes (k -> k+1
///       as rho grows, a k from the free bound next to a smaller one from the exact rho, the last
///       k <= max_terms next to exact Cayley) R moves by at most 2 tol in the spectral norm;
///       exactly ||Q^(k1+1) - Q^(k2+1)||_2 <= tol (1 + rho^(k2-k1)) between truncations k1 < k2,
///       tol sqrt(1 + rho^2) at a k -> k+1 switch from the exact rho, and <= tol next to exact
///       Cayley (in exact arithmetic with the rho used; the eigen solver's relative rounding of
///       rho, about b eps, and the rounding of R_k itself come on top);
///     * min_terms = 1 makes theta -> R first-order exact at theta = 0 (c_1 = 2, as exact
///       Cayley's R ~ I + 2Q); min_terms = 0 would admit R_0 = I + Q, with half the gradient.
///   ToleranceMeasure::Orthogonality bounds ||R_k^T R_k - I||_2 instead, with even k only: fewer
///   terms, but R_k is only sqrt(tol) from exact Cayley and R jumps by about sqrt(tol) (1 + rho^2)
///   when k changes, so it is for evaluation, not training. When rho >= 1 (series diverges) or no
///   k <= max_terms suffices it throws std::domain_error, or, with OnDivergence::UseExactCayley,
///   uses the exact Cayley transform for that generator (reported by summary()). k is found in
///   closed form (neumann.hpp), so max_terms (capped by kMaxNeumannTerms) never costs a loop.

#include <cmath>
#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Eigenvalues>

#include "cayley.hpp"
#include "cpu/gemm_tile.hpp"
#include "detail/thread_scratch.hpp"
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
  detail::cpu::gemm_small(n, n, n, b.data(), n, 1, a.data(), n, c.data(), n, accumulate);
}

/// R = sum_{j=0}^{n} c_j Q^j (n = coefficients.degree(), see neumann.hpp) by Horner's rule:
/// P <- P Q + c_j I from P = c_n I. The first step (c_n Q + c_(n-1) I) needs no product, so n - 1
/// products in all (k for R_k). For R_k, c_n = 1 and the first step is a plain copy of Q.
template <class Scalar, class Coefficients>
void polynomial_rotation(const SquareMatrix<Scalar>& q, const Coefficients& coefficients,
                         SquareMatrix<Scalar>& r) {
  const Index b = q.rows();
  const int n = coefficients.degree();
  if (n == 0) {
    r = SquareMatrix<Scalar>::Identity(b, b) * static_cast<Scalar>(coefficients(0));
    return;
  }
  r = q * static_cast<Scalar>(coefficients(n));  // exact when c_n = 1
  r.diagonal().array() += static_cast<Scalar>(coefficients(n - 1));
  SquareMatrix<Scalar>& next = thread_matrix<Scalar, ScratchSlot::PolynomialNext1>(b, b);
  for (int j = n - 2; j >= 0; --j) {
    multiply_square(r, q, next);
    next.diagonal().array() += static_cast<Scalar>(coefficients(j));
    r.swap(next);
  }
}

/// dQ = sum_j c_j sum_{s+t=j-1} (Q^T)^s G (Q^T)^t, the adjoint of the polynomial's Fréchet
/// derivative, via Horner on [[Q^T, G], [0, Q^T]]: the state [[P1, P2], [0, P1]] advances by
/// P2 <- P1 G + P2 Q^T, P1 <- P1 Q^T + c_j I. The first step from P1 = c_n I, P2 = 0 needs no
/// product, so 3(n - 1) products in all (3k for R_k) and four b x b temporaries, this thread's
/// scratch (detail/thread_scratch.hpp), so steady-state calls allocate nothing.
template <class Scalar, class Coefficients>
void polynomial_rotation_vjp(const SquareMatrix<Scalar>& q, const Coefficients& coefficients,
                             const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) {
  const Index b = q.rows();
  const int n = coefficients.degree();
  if (n == 0) {  // a constant polynomial
    dq = SquareMatrix<Scalar>::Zero(b, b);
    return;
  }
  const Scalar leading = static_cast<Scalar>(coefficients(n));
  SquareMatrix<Scalar>& a = thread_matrix<Scalar, ScratchSlot::PolynomialA>(b, b);
  SquareMatrix<Scalar>& p1 = thread_matrix<Scalar, ScratchSlot::PolynomialP1>(b, b);
  SquareMatrix<Scalar>& next1 = thread_matrix<Scalar, ScratchSlot::PolynomialNext1>(b, b);
  SquareMatrix<Scalar>& next2 = thread_matrix<Scalar, ScratchSlot::PolynomialNext2>(b, b);
  a = q.transpose();
  p1 = a * leading;  // exact when c_n = 1
  p1.diagonal().array() += static_cast<Scalar>(coefficients(n - 1));
  dq = g * leading;
  for (int j = n - 2; j >= 0; --j) {
    multiply_square(p1, g, next2);
    multiply_square(dq, a, next2, true);
    multiply_square(p1, a, next1);
    next1.diagonal().array() += static_cast<Scalar>(coefficients(j));
    p1.swap(next1);
    dq.swap(next2);
  }
}

/// R_k (k products): polynomial_rotation with R_k's coefficients 1, 2, ..., 2, 1.
template <class Scalar>
void neumann_rotation(const SquareMatrix<Scalar>& q, int k, SquareMatrix<Scalar>& r) {
  polynomial_rotation(q, NeumannCoefficients{k}, r);
}

/// The VJP of R_k (3k products).
template <class Scalar>
void neumann_rotation_vjp(const SquareMatrix<Scalar>& q, int k, const SquareMatrix<Scalar>& g,
                          SquareMatrix<Scalar>& dq) {
  polynomial_rotation_vjp(q, NeumannCoefficients{k}, g, dq);
}

/// Cheap guaranteed upper bound on ||Q||_2 for skew Q: min(||Q||_F / sqrt(2), ||Q||_1).
template <class Scalar>
double skew_spectral_norm_bound(const SquareMatrix<Scalar>& q) {
  const double frobenius = static_cast<double>(q.norm()) / std::sqrt(2.0);
  const double one_norm =
      q.size() == 0 ? 0.0 : static_cast<double>(q.cwiseAbs().colwise().sum().maxCoeff());
  return std::min(frobenius, one_norm);
}

/// ||Q||_2 computed exactly (largest eigenvalue of Q^T Q), O(b^3), in double. The matrices and
/// the solver are this thread's scratch, so steady-state calls allocate nothing.
template <class Scalar>
double skew_spectral_norm(const SquareMatrix<Scalar>& q) {
  if (q.size() == 0) return 0.0;
  const Index b = q.rows();
  SquareMatrix<double>& qd = thread_matrix<double, ScratchSlot::SpectralQ>(b, b);
  SquareMatrix<double>& gram = thread_matrix<double, ScratchSlot::SpectralGram>(b, b);
  qd = q.template cast<double>();
  gram.noalias() = qd.transpose() * qd;
  thread_local Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig;
  eig.compute(gram, Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
}

}  // namespace detail

namespace detail {
template <class Scalar>
struct ParameterizationOps<CayleyNeumann, SquareMatrix<Scalar>> {
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
  Throw,           ///< std::domain_error naming rho, the tolerance and max_terms
  UseExactCayley,  ///< exact Cayley for that generator (orthogonal; costs one LU of size b)
};

/// Cayley–Neumann whose k is chosen per generator from a tolerance (docs/conventions.md
/// section 5). Settings, all checked (std::invalid_argument naming the value):
///   tolerance    > 0 and finite
///   on_divergence what to do when no k in [min_terms, max_terms] meets it (or rho >= 1)
///   max_terms    0 <= max_terms <= kMaxNeumannTerms (default 64)
///   measure      ToleranceMeasure::DistanceToCayley (default) or ::Orthogonality
///   min_terms    0 <= min_terms <= max_terms (default 1; with the orthogonality measure the
///                smallest even k >= min_terms, which must not exceed max_terms)
///
///   oft::CayleyNeumannTolerance(1e-6)                               // training
///   oft::CayleyNeumannTolerance(1e-6, oft::OnDivergence::UseExactCayley, 128)
///   oft::CayleyNeumannTolerance(1e-12).with_measure(oft::ToleranceMeasure::Orthogonality)
struct CayleyNeumannTolerance {
  struct Plan {
    int terms = 0;       ///< chosen k (meaningless when exact)
    bool exact = false;  ///< fell back to the exact Cayley transform
    double rho = 0.0;    ///< the bound of ||Q||_2 the choice used
  };
  static constexpr const char* name = "cayley_neumann_tolerance";
  static constexpr int kDefaultMaxTerms = 64;
  /// One term at least: R_0 = I + Q has half of exact Cayley's derivative at Q = 0 (R ~ I + 2Q),
  /// R_k for k >= 1 the same (c_1 = 2).
  static constexpr int kDefaultMinTerms = 1;
  /// Largest k accepted from the free bound without computing the exact rho.
  static constexpr int kFreeBoundTerms = 2;

  /// tol = 1e-6, OnDivergence::Throw, max_terms = 64 (not explicit, see CayleyNeumann()).
  CayleyNeumannTolerance() : CayleyNeumannTolerance(1e-6) {}
  explicit CayleyNeumannTolerance(double tol, OnDivergence when_divergent = OnDivergence::Throw,
                                  int term_limit = kDefaultMaxTerms)
      : tolerance(tol), on_divergence(when_divergent), max_terms(term_limit) {
    check_settings();
  }

  /// A copy measuring the error by `error_measure` (checked).
  CayleyNeumannTolerance with_measure(ToleranceMeasure error_measure) const {
    CayleyNeumannTolerance copy = *this;
    copy.measure = error_measure;
    copy.check_settings();
    return copy;
  }
  /// A copy using at least `terms` terms (checked). 0 admits R_0 = I + Q, whose gradient at
  /// Q = 0 is half of exact Cayley's: only for evaluation, never for training from theta = 0.
  CayleyNeumannTolerance with_min_terms(int terms) const {
    CayleyNeumannTolerance copy = *this;
    copy.min_terms = terms;
    copy.check_settings();
    return copy;
  }

  // Public for reading (and for aggregate-style inspection in tests); set them through the
  // constructor and with_*: plan() checks them again, so a field changed by hand is refused
  // rather than trusted.
  double tolerance;
  OnDivergence on_divergence;
  int max_terms;
  ToleranceMeasure measure = ToleranceMeasure::DistanceToCayley;
  int min_terms = kDefaultMinTerms;

  /// The smallest admissible k for a given rho (-1 when none): neumann_terms_for with these
  /// settings.
  int terms_for(double rho) const {
    return neumann_terms_for(measure, rho, tolerance, min_terms, max_terms);
  }

  /// Uses the cheap bound min(||Q||_F/sqrt(2), ||Q||_1) when it already gives k <= 2. Otherwise
  /// the exact spectral norm is computed (an O(b^3) eigenvalue solve, about one b x b product):
  /// the free bound can be loose by up to sqrt(b/2), and every term it adds costs four products
  /// (one in theta -> R, three in the backward). So no generator with rho < 1 is refused, and no
  /// k is larger than the exact rho needs, because of a loose bound. Either rho is >= the true
  /// one (up to the eigen solver's rounding), so the k chosen meets the tolerance for the true
  /// rho too; nearby Q may get k from different rhos, and both meet it.
  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& q) const {
    check_settings();
    Plan p;
    p.rho = detail::skew_spectral_norm_bound(q);
    p.terms = terms_for(p.rho);
    if (p.terms < 0 || p.terms > kFreeBoundTerms) {
      p.rho = detail::skew_spectral_norm(q);
      p.terms = terms_for(p.rho);
    }
    if (p.terms >= 0) return p;
    if (on_divergence == OnDivergence::UseExactCayley) {
      p.exact = true;
      return p;
    }
    detail::require_domain(
        false, "Cayley-Neumann series cannot meet tolerance ", tolerance, " (", measure_name(),
        "): ||Q||_2 = ", p.rho,
        p.rho >= 1.0 ? " >= 1, so the series diverges" : " needs more than max_terms terms",
        " (min_terms=", min_terms, ", max_terms=", max_terms,
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

 private:
  const char* measure_name() const {
    return measure == ToleranceMeasure::Orthogonality ? "||R_k^T R_k - I||_2" : "||R - R_k||_2";
  }
  void check_settings() const {
    detail::require(tolerance > 0.0 && std::isfinite(tolerance),
                    "Cayley-Neumann tolerance must be finite and > 0, got ", tolerance);
    detail::require(max_terms >= 0 && max_terms <= kMaxNeumannTerms,
                    "Cayley-Neumann max_terms must be in [0, ", kMaxNeumannTerms,
                    "] (kMaxNeumannTerms), got ", max_terms);
    detail::require(min_terms >= 0 && min_terms <= max_terms,
                    "Cayley-Neumann min_terms must be in [0, max_terms=", max_terms, "], got ",
                    min_terms);
    const bool has_even_k = min_terms + min_terms % 2 <= max_terms;
    detail::require(measure != ToleranceMeasure::Orthogonality || has_even_k,
                    "Cayley-Neumann orthogonality measure needs an even k in [min_terms=",
                    min_terms, ", max_terms=", max_terms, "]");
    detail::require(
        measure == ToleranceMeasure::DistanceToCayley || measure == ToleranceMeasure::Orthogonality,
        "Cayley-Neumann tolerance measure ", static_cast<int>(measure), " is no ToleranceMeasure");
  }
};

}  // namespace oft

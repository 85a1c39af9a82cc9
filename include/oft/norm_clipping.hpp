#pragma once
/// \file norm_clipping.hpp
/// Per-block norm clipping of the generator, as a wrapper around any parameterization:
///
///   oft::Clipped<oft::ExactCayley, oft::FrobeniusNorm>{oft::ExactCayley{}, 0.5}
///   oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>{oft::CayleyNeumann{4}, 0.5}
///
/// maps Q to R = f(s Q) with s = min(1, c / ||Q||), f the wrapped map and c = max_norm, for each
/// generator on its own (LyCORIS clips all blocks together, COFT projects theta after a step;
/// this is a reparameterization, so the gradient flows through the clip). It is a
/// parameterization like the one it wraps (parameterization.hpp), so BlockOrthogonal, OftLinear
/// and Butterfly take it unchanged.
///
/// Norms (both computed in double):
/// - FrobeniusNorm: ||Q||_F = sqrt(sum Q_ij^2) = sqrt(2) ||theta_row||_2.
/// - SpectralNorm: ||Q||_2 = rho, the largest |eigenvalue| of the skew Q, computed as the square
///   root of the largest eigenvalue of the symmetric Q^T Q = -Q^2 by Eigen's
///   SelfAdjointEigenSolver (tridiagonalization + implicit QR: no iteration count to choose, and
///   rho is accurate to about b eps relative). Clipping by rho bounds the Neumann series' ratio,
///   so Clipped<CayleyNeumann, SpectralNorm> with c < 1 never diverges.
///
/// Gradient. Below the limit (||Q|| <= c, the boundary included) s = 1 and dL/dQ is the wrapped
/// map's; the forward passes Q itself on, so R and dQ are bit for bit the unwrapped ones. Above
/// it Q_c = c Q / n with n = ||Q||, and with D = dL/dQ_c (the wrapped map's VJP at Q_c):
///
///   dL/dQ = (c / n) (D - <D, Q> grad n / n)
///
/// - Frobenius: grad n = Q / n.
/// - Spectral: Q = sum_j lambda_j (u_j v_j^T - v_j u_j^T) (real Schur form), so every singular
///   value of Q is double: rho has the singular pairs (u, v) and (-v, u). For a skew
///   perturbation E both move together by u^T E v (the 2 x 2 compression [u, -v]^T E [v, u] is
///   (u^T E v) I for skew E), so rho is differentiable along skew directions wherever the top
///   pair is alone, with gradient (u v^T - v u^T) / 2: half the sum over the pair of the usual
///   u_i v_i^T, not the sum. As a formula without u and v: Q P / (2 rho), P the projector on
///   the top eigenspace of Q^T Q. When t = 2p eigenvalues of Q^T Q tie at rho^2 (p pairs with
///   the same |lambda|, tie within 8 b eps rho^2) rho is a maximum of p smooth functions and
///   has no gradient; Q P / (t rho) is then the mean of the p pairs' gradients, a subgradient
///   whose inner product with any skew direction lies between the two one-sided derivatives
///   (tests/test_norm_clipping.cpp checks this). Only the skew part of dL/dQ is defined (the
///   packed gradient dtheta(p,q) = dQ(p,q) - dQ(q,p) reads nothing else); that part is exact.
///
/// Cost per generator on top of the wrapped map: Frobenius O(b^2); spectral one symmetric
/// eigenvalue solve in set_generators (about one b x b product) and one with eigenvectors in
/// backward, only for clipped generators in backward.

#include <array>
#include <cmath>
#include <cstddef>
#include <utility>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Eigenvalues>

#include "cayley_neumann.hpp"
#include "errors.hpp"
#include "parameterization.hpp"
#include "policies.hpp"

namespace oft {

namespace detail {

/// This thread's b x b scratch for the clipping wrapper, one per Tag (its own, not a ScratchSlot:
/// the wrapped map uses those while these are live).
template <class Scalar, class Tag>
SquareMatrix<Scalar>& clip_scratch(Index b) {
  thread_local SquareMatrix<Scalar> matrix;
  if (matrix.rows() != b || matrix.cols() != b) matrix.resize(b, b);
  return matrix;
}

constexpr std::size_t literal_length(const char* text) {
  std::size_t n = 0;
  while (text[n] != '\0') ++n;
  return n;
}

/// "<inner>_clipped_<norm>" as a constant, so Clipped has a static name like every policy.
template <class Inner, class Norm>
struct ClippedName {
  static constexpr const char kMiddle[] = "_clipped_";
  static constexpr std::size_t kLength =
      literal_length(Inner::name) + literal_length(kMiddle) + literal_length(Norm::name);
  static constexpr std::array<char, kLength + 1> make() {
    std::array<char, kLength + 1> out{};
    std::size_t at = 0;
    for (const char* part : {Inner::name, static_cast<const char*>(kMiddle), Norm::name})
      for (std::size_t i = 0; part[i] != '\0'; ++i) out[at++] = part[i];
    out[at] = '\0';
    return out;
  }
  static constexpr std::array<char, kLength + 1> value = make();
};

}  // namespace detail

/// ||Q||_F, the norm COFT and LyCORIS clip by. O(b^2).
struct FrobeniusNorm {
  static constexpr const char* name = "frobenius";

  template <class Scalar>
  static double value(const SquareMatrix<Scalar>& q) {
    return q.template cast<double>().norm();
  }
  /// grad ||Q||_F = Q / ||Q||_F, for n = value(q) > 0.
  template <class Scalar>
  static void gradient(const SquareMatrix<Scalar>& q, double n, SquareMatrix<double>& out) {
    out = q.template cast<double>() / n;
  }
};

/// ||Q||_2 = rho for skew Q, from the symmetric eigenproblem of Q^T Q (see the file comment).
struct SpectralNorm {
  static constexpr const char* name = "spectral";

  template <class Scalar>
  static double value(const SquareMatrix<Scalar>& q) {
    return detail::skew_spectral_norm(q);
  }
  /// Q P / (t rho): the gradient along skew directions where the top pair of singular values is
  /// alone (t = 2), the mean of the tied pairs' gradients where t > 2 eigenvalues of Q^T Q tie.
  /// For rho = n = value(q) > 0.
  template <class Scalar>
  static void gradient(const SquareMatrix<Scalar>& q, double n, SquareMatrix<double>& out) {
    const Index b = q.rows();
    struct QTag {};
    struct GramTag {};
    SquareMatrix<double>& qd = detail::clip_scratch<double, QTag>(b);
    SquareMatrix<double>& gram = detail::clip_scratch<double, GramTag>(b);
    qd = q.template cast<double>();
    gram.noalias() = qd.transpose() * qd;
    thread_local Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig;
    eig.compute(gram, Eigen::ComputeEigenvectors);
    // Eigenvalues ascend; the top ones within the solver's rounding of rho^2 tie with it.
    const double top = eig.eigenvalues()(b - 1);
    const double tie = 8.0 * static_cast<double>(b) * Eigen::NumTraits<double>::epsilon() * top;
    Index t = 0;
    while (t < b && top - eig.eigenvalues()(b - 1 - t) <= tie) ++t;
    const auto v = eig.eigenvectors().rightCols(t);
    out.noalias() = (qd * v) * v.transpose();
    out /= static_cast<double>(t) * n;
  }
};

/// R = f(s Q), s = min(1, max_norm / ||Q||), f = Inner (see the file comment). Settings, checked
/// by the constructor and again by plan() (std::invalid_argument naming the value): max_norm
/// finite and > 0.
template <class Inner, class Norm>
struct Clipped {
  using InnerPlan = typename Inner::Plan;
  struct Plan {
    InnerPlan inner{};    ///< the wrapped map's plan, made for the clipped Q
    double norm = 0.0;    ///< ||Q|| before clipping
    bool clipped = false; ///< norm > max_norm: Q was scaled by max_norm / norm
  };
  static constexpr const char* name = detail::ClippedName<Inner, Norm>::value.data();

  Clipped(Inner wrapped, double limit) : inner(std::move(wrapped)), max_norm(limit) {
    check_settings();
  }

  Inner inner;
  double max_norm;

  /// max_norm / norm when clipped, else 1.
  static double scale(const Plan& p, double limit) { return p.clipped ? limit / p.norm : 1.0; }

  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& q) const {
    check_settings();
    Plan p;
    p.norm = Norm::value(q);
    p.clipped = p.norm > max_norm;
    if (!p.clipped) {
      p.inner = inner.plan(q);
    } else {
      const SquareMatrix<Scalar>& qc = clipped_q(q, p);
      p.inner = inner.plan(qc);
    }
    return p;
  }
  PlanSummary summary(const Plan& p) const { return inner.summary(p.inner); }

  template <class Scalar>
  void rotation(const SquareMatrix<Scalar>& q, const Plan& p, SquareMatrix<Scalar>& r) const {
    if (!p.clipped) {
      inner.rotation(q, p.inner, r);
      return;
    }
    inner.rotation(clipped_q(q, p), p.inner, r);
  }

  template <class Scalar>
  void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& r, const Plan& p,
                    const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) const {
    if (!p.clipped) {
      inner.rotation_vjp(q, r, p.inner, g, dq);
      return;
    }
    struct DTag {};
    struct GradTag {};
    const Index b = q.rows();
    SquareMatrix<Scalar>& d = detail::clip_scratch<Scalar, DTag>(b);
    inner.rotation_vjp(clipped_q(q, p), r, p.inner, g, d);
    // dQ = s (D - <D, Q> grad n / n), s = c / n; the projection in double.
    SquareMatrix<double>& grad = detail::clip_scratch<double, GradTag>(b);
    Norm::gradient(q, p.norm, grad);
    const double s = max_norm / p.norm;
    const double along = (d.template cast<double>().cwiseProduct(q.template cast<double>())).sum();
    dq = (s * (d.template cast<double>() - (along / p.norm) * grad)).template cast<Scalar>();
  }

 private:
  /// s Q in this thread's scratch.
  template <class Scalar>
  const SquareMatrix<Scalar>& clipped_q(const SquareMatrix<Scalar>& q, const Plan& p) const {
    struct QcTag {};
    SquareMatrix<Scalar>& qc = detail::clip_scratch<Scalar, QcTag>(q.rows());
    qc = q * static_cast<Scalar>(max_norm / p.norm);
    return qc;
  }
  void check_settings() const {
    detail::require(max_norm > 0.0 && std::isfinite(max_norm), "Clipped (", Norm::name,
                    " norm) needs a finite max_norm > 0, got max_norm=", max_norm);
  }
};

}  // namespace oft

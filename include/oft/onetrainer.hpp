#pragma once
/// \file onetrainer.hpp
/// OneTrainer's "OFT v2" (PEFT-like input-side OFT) as the ComfyUI-OFTv2 loader computes it, in
/// any Scalar (the loader works in float32; double here is the reference the tests compare).
/// Read from OneTrainer (github Nerogar/OneTrainer, `modules/module/oft_utils.py`
/// OFTRotationModule and `modules/module/LoRAModule.py` OFTModule, master 23df383 and the
/// preview merge ad977de of its CANS/clipping pull request) and ComfyUI-OFTv2 (github
/// Koratahiu/ComfyUI-OFTv2 `node/oftv2_loader.py` @ 29bdbae, OFTRotationUtil and
/// OFTv2Adapter.calculate_weight); docs/dialects.md section 4 has the whole convention.
///
/// One module stores theta [r, b(b-1)/2] (PEFT's packed order, oft's: row i is the strict upper
/// triangle of U_i row by row; Q_i = U_i - U_i^T, no 1/2) and three optional flags. Per block:
///
///   theta <- theta / (2 sqrt(b - 1))          scaled_oft
///   Q <- Q * c / max(sigma, c)                 clipped_oft = c; sigma estimates ||Q||_2 by two
///                                              steps of power iteration from a RANDOM start (the
///                                              loader draws torch.randn on every load), so the
///                                              loader's own R varies from load to load; oft uses
///                                              the exact ||Q||_2 (the iteration's limit) unless
///                                              given the start vectors to repeat one draw
///   R = X_7^2, X_7 from 7 Chebyshev-optimized  cans_oft (7 steps: the loader's float32 count);
///       Newton-Schulz steps on G = I + Q       the polar factor of I + Q squared is exact Cayley
///                                              (OneTrainer: 7 steps on (I + Q)^2, CansOrder)
///   R = I + 2Q + 2Q^2 + 2Q^3 + Q^4             otherwise: Cayley-Neumann with 5 terms (oft's
///                                              R_k, k = 3), whatever the file was trained with
///
/// The merge (calculate_weight at strength s) is a LINEAR blend, as LyCORIS's multiplier:
///   Linear  [out, in]:          W' = W + s W (R^T - I)  per input block  (= W R^T at s = 1)
///   Conv2d  [out, c, kh, kw]:   W' = W + s W (R - I)    on the flattened c*kh*kw input
/// Note R on the convolution and R^T on Linear: OneTrainer's Linear forward rotates the input
/// (x -> x R per block, "...rk,rkc->...rc"), its Conv2d forward rotates the kernel's rows
/// ("ork,rkc->orc", W R); both are merge-exact. A file with r = 1 shares its one block over every
/// input block (block_share).
///
/// Without cans_oft, clipping by the exact norm, the map is oft's BlockOrthogonal with
/// Clipped<CayleyNeumann, SpectralNorm>{CayleyNeumann{3}, c} (or CayleyNeumann{3}) on theta, scaled
/// as above: the operator to train through such a file (tests/dialects checks the equality).
///
///   std::vector<oft::SquareMatrix<double>> r = oft::onetrainer::rotations(theta, rows, b, flags);
///   oft::onetrainer::merge(w_flat, r, oft::onetrainer::Layer::Linear, /*strength=*/1.0);

#include <algorithm>
#include <cmath>
#include <vector>

#include "cayley_neumann.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "view.hpp"

namespace oft::onetrainer {

/// Cayley-Neumann terms the loader always uses (OFTModule: num_cayley_neumann_terms=5): k = 3.
inline constexpr int kNeumannTerms = 5;
/// The loader's power iteration: steps, and the floor of the norms it divides by.
inline constexpr int kPowerIterations = 2;
inline constexpr double kPowerFloor = 1e-12;
/// CANS steps (7 in float32, 5 in bfloat16 in the loader) and the floor of ||G||_inf.
inline constexpr int kCansSteps = 7;
inline constexpr double kCansFloor = 1e-7;

/// Where CANS squares. The loader (ComfyUI-OFTv2 @ 29bdbae) runs the steps on G = I + Q and
/// squares the result; OneTrainer's own forward since its commit 7d415a4 (in the preview merge
/// ad977de) runs them on G = (I + Q)^2. Both tend to exact Cayley, but 7 steps on the squared G
/// (its condition number squared) are far less converged for large ||Q||: a file trained that
/// way loads as a different R. The file does not say which; the loader's order is the default.
enum class CansOrder { SquareAfter, SquareFirst };

/// The module's flags as stored (`oft_R.scaled_oft`, `oft_R.clipped_oft`, `oft_R.cans_oft`).
struct Flags {
  bool scaled = false;
  bool clipped = false;
  double clip = 0.0;  ///< the radius c, when clipped
  bool cans = false;
  CansOrder cans_order = CansOrder::SquareAfter;  ///< not stored: the loader's, unless asked
};

/// Which side the merge rotates: by the base weight's rank in the loader (4-D is Conv2d).
enum class Layer { Linear, Conv2d };

/// Q_i from the packed row (the order of torch.triu_indices(b, b, 1), oft's).
template <class Scalar>
SquareMatrix<Scalar> skew_block(const Scalar* theta, Index b) {
  SquareMatrix<Scalar> q = SquareMatrix<Scalar>::Zero(b, b);
  Index k = 0;
  for (Index p = 0; p < b; ++p)
    for (Index c = p + 1; c < b; ++c, ++k) {
      q(p, c) = theta[k];
      q(c, p) = -theta[k];
    }
  return q;
}

/// The loader's estimate of ||Q||_2: v = start / |start|, then kPowerIterations times
/// u = Q v / |Q v|, v = Q^T u / |Q^T u| (each norm floored at kPowerFloor), sigma = u^T Q v.
/// Never above ||Q||_2; equal to it when the start lies in the top singular pair's span.
template <class Scalar>
Scalar power_iteration_sigma(const SquareMatrix<Scalar>& q, const Scalar* start) {
  const Index b = q.rows();
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const Scalar floor = static_cast<Scalar>(kPowerFloor);
  Vector v = Eigen::Map<const Vector>(start, b);
  v /= std::max(v.norm(), floor);
  Vector u = Vector::Zero(b);
  for (int i = 0; i < kPowerIterations; ++i) {
    u = q * v;
    u /= std::max(u.norm(), floor);
    v = q.transpose() * u;
    v /= std::max(v.norm(), floor);
  }
  return u.dot(q * v);
}

/// The polar factor of g by the loader's Chebyshev-optimized Newton-Schulz: X = G / ||G||_inf,
/// bounds [lo, hi] = [1 / ||G||_inf, 1] on its singular values, and per step the odd cubic
/// a e2 X - (a / 3) X X^T X with e2 = (lo^2 + lo hi + hi^2) / 3, K = 2 e2^(3/2),
/// L = lo hi (lo + hi), a = 6 / (K + L), after which the bounds become 1 -+ (K - L) / (K + L).
/// (oft's NewtonSchulz uses the fixed cubic (3X - X X^T X) / 2 and a Frobenius scale: another map.)
template <class Scalar>
SquareMatrix<Scalar> cans_polar(const SquareMatrix<Scalar>& g, int steps = kCansSteps) {
  const Scalar norm =
      std::max(g.cwiseAbs().rowwise().sum().maxCoeff(), static_cast<Scalar>(kCansFloor));
  SquareMatrix<Scalar> x = g / norm;
  Scalar lo = Scalar(1) / norm, hi = Scalar(1);
  for (int i = 0; i < steps; ++i) {
    const Scalar e2 = (lo * lo + lo * hi + hi * hi) / Scalar(3);
    const Scalar k = Scalar(2) * std::pow(e2, Scalar(1.5));
    const Scalar l = lo * hi * (lo + hi);
    const Scalar a = Scalar(6) / (k + l);
    const SquareMatrix<Scalar> gram = x * x.transpose();
    x = (a * e2) * x - (a / Scalar(3)) * (gram * x);
    const Scalar e = (k - l) / (k + l);
    lo = Scalar(1) - e;
    hi = Scalar(1) + e;
  }
  return x;
}

/// dL/dQ of one block's CANS rotation (either order) from dL/dR = `r_bar`, as OneTrainer's
/// autograd computes it: ||G||_inf is detached there (`.detach()`), so the scale and with it
/// every step's Chebyshev coefficients are constants, and this is the derivative of the fixed
/// polynomial steps (not of the norm's choice of them). With X_(i+1) = c1 X + c3 X X^T X:
///   dL/dX_i = c1 B + c3 (B X^T X + X B^T X + X X^T B),  B = dL/dX_(i+1);
/// then dL/dG = dL/dX_0 / ||G||_inf, and through R = H H (SquareAfter: dL/dH = B H^T + H^T B)
/// or G = A A, A = I + Q (SquareFirst: dL/dA = B A^T + A^T B). The iterates are kept (steps + 1
/// matrices b x b). Only the skew part of the result matters (dtheta(p,q) = dQ(p,q) - dQ(q,p)).
template <class Scalar>
SquareMatrix<Scalar> cans_rotation_vjp(const SquareMatrix<Scalar>& q, CansOrder order,
                                       const SquareMatrix<Scalar>& r_bar, int steps = kCansSteps) {
  SquareMatrix<Scalar> a = q;
  a.diagonal().array() += Scalar(1);
  const SquareMatrix<Scalar> g = order == CansOrder::SquareFirst ? SquareMatrix<Scalar>(a * a) : a;
  const Scalar norm =
      std::max(g.cwiseAbs().rowwise().sum().maxCoeff(), static_cast<Scalar>(kCansFloor));
  std::vector<SquareMatrix<Scalar>> xs{g / norm};
  std::vector<Scalar> c1s, c3s;
  Scalar lo = Scalar(1) / norm, hi = Scalar(1);
  for (int i = 0; i < steps; ++i) {  // the forward of cans_polar, keeping what the adjoint needs
    const Scalar e2 = (lo * lo + lo * hi + hi * hi) / Scalar(3);
    const Scalar k = Scalar(2) * std::pow(e2, Scalar(1.5));
    const Scalar l = lo * hi * (lo + hi);
    const Scalar alpha = Scalar(6) / (k + l);
    c1s.push_back(alpha * e2);
    c3s.push_back(-alpha / Scalar(3));
    const SquareMatrix<Scalar>& x = xs.back();
    const SquareMatrix<Scalar> gram = x * x.transpose();
    xs.push_back(c1s.back() * x + c3s.back() * (gram * x));
    const Scalar e = (k - l) / (k + l);
    lo = Scalar(1) - e;
    hi = Scalar(1) + e;
  }
  const SquareMatrix<Scalar>& h = xs.back();
  SquareMatrix<Scalar> bar =
      order == CansOrder::SquareAfter
          ? SquareMatrix<Scalar>(r_bar * h.transpose() + h.transpose() * r_bar)
          : r_bar;
  for (int i = steps - 1; i >= 0; --i) {
    const SquareMatrix<Scalar>& x = xs[static_cast<std::size_t>(i)];
    const SquareMatrix<Scalar> xtx = x.transpose() * x;
    const SquareMatrix<Scalar> xxt = x * x.transpose();
    const SquareMatrix<Scalar> next =
        c1s[static_cast<std::size_t>(i)] * bar +
        c3s[static_cast<std::size_t>(i)] * (bar * xtx + x * bar.transpose() * x + xxt * bar);
    bar = next;
  }
  bar /= norm;  // dL/dG
  if (order == CansOrder::SquareFirst) return bar * a.transpose() + a.transpose() * bar;
  return bar;
}

/// R of one block from its packed row, as the loader computes it (see the file comment).
/// `start` (b values): the power iteration's start vector, to repeat one load of a clipped
/// module; nullptr clips by the exact ||Q||_2 (computed in double).
template <class Scalar>
SquareMatrix<Scalar> rotation(const Scalar* theta, Index b, const Flags& flags,
                              const Scalar* start = nullptr) {
  SquareMatrix<Scalar> q = skew_block(theta, b);
  if (flags.scaled) q /= static_cast<Scalar>(2.0 * std::sqrt(static_cast<double>(b - 1)));
  if (flags.clipped) {
    const Scalar c = static_cast<Scalar>(flags.clip);
    const Scalar sigma = start != nullptr ? power_iteration_sigma(q, start)
                                          : static_cast<Scalar>(oft::detail::skew_spectral_norm(q));
    q *= c / std::max(sigma, c);
  }
  if (flags.cans) {
    SquareMatrix<Scalar> g = q;
    g.diagonal().array() += Scalar(1);
    if (flags.cans_order == CansOrder::SquareFirst) return cans_polar(SquareMatrix<Scalar>(g * g));
    const SquareMatrix<Scalar> half = cans_polar(g);
    return half * half;
  }
  SquareMatrix<Scalar> r(b, b);
  oft::detail::neumann_rotation(q, kNeumannTerms - 2, r);
  return r;
}

/// R of every stored block (rows of `theta`, each m = b(b-1)/2 values). `starts`: rows * b
/// start vectors, or nullptr for the exact spectral norm.
template <class Scalar>
std::vector<SquareMatrix<Scalar>> rotations(const Scalar* theta, Index rows, Index b,
                                            const Flags& flags, const Scalar* starts = nullptr) {
  const Index m = b * (b - 1) / 2;
  std::vector<SquareMatrix<Scalar>> out;
  out.reserve(static_cast<std::size_t>(rows));
  for (Index i = 0; i < rows; ++i)
    out.push_back(rotation(theta + i * m, b, flags, starts != nullptr ? starts + i * b : nullptr));
  return out;
}

/// The merged weight W + s W_blocks (R^T - I) (Linear) or (R - I) (Conv2d), `weight` the base
/// weight with its input dims flattened ([out, c*kh*kw] for a kernel). One rotation is shared
/// by every input block; otherwise there is one per block. Throws std::invalid_argument when the
/// columns are not a multiple of b, or not rotations.size() blocks of b.
template <class Scalar>
RowMatrix<Scalar> merge(ConstMatrixView<Scalar> weight,
                        const std::vector<SquareMatrix<Scalar>>& rot, Layer layer,
                        double strength = 1.0) {
  oft::detail::require(!rot.empty(), "OneTrainer OFT merge: no rotation blocks");
  const Index b = rot.front().rows();
  const Index in = weight.cols();
  const Index blocks = b > 0 ? in / b : 0;
  oft::detail::require(
      b >= 1 && in % b == 0 && (rot.size() == 1 || static_cast<Index>(rot.size()) == blocks),
      "OneTrainer OFT merge: the base weight has ", in, " input features (flattened), but ",
      rot.size(), " block(s) of b=", b, " rotate ", static_cast<Index>(rot.size()) * b,
      rot.size() == 1 ? " (shared: any multiple of b)" : "");
  const Scalar s = static_cast<Scalar>(strength);
  RowMatrix<Scalar> out = weight.map();
  for (Index j = 0; j < blocks; ++j) {
    const SquareMatrix<Scalar>& r = rot[rot.size() == 1 ? 0 : static_cast<std::size_t>(j)];
    SquareMatrix<Scalar> diff = layer == Layer::Linear ? SquareMatrix<Scalar>(r.transpose()) : r;
    diff.diagonal().array() -= Scalar(1);
    out.middleCols(j * b, b) += s * (weight.map().middleCols(j * b, b) * diff);
  }
  return out;
}

}  // namespace oft::onetrainer

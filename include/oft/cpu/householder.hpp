#pragma once
/// \file cpu/householder.hpp
/// The CPU Householder operator (HRA), in compact WY form: the r reflections
/// H_i = I - 2 q_i q_i^T of PEFT's R_H = H_0 H_1 ... H_{r-1} equal I - Q T Q^T with T upper
/// triangular (T^-1 = I/2 + strict_upper(Q^T Q), LAPACK's larft with tau = 2), so the rows of X
/// rotate as
///
///     X R = X R_H^T = X - ((X Q) T^T) Q^T          (reflection r-1 acts first)
///
/// two thin products per call, O(N d r), and R is never formed. With Gram-Schmidt (PEFT's
/// apply_GS) Q comes from one modified Gram-Schmidt pass over the columns of U and T = 2 I.
///
/// Backward (dL/dY = G; A = X Q, C = G Q): dX = G - (C T) Q^T;
/// dQ = -X^T (C T) - G^T (A T^T), plus, without Gram-Schmidt, the path through T: with
/// dT = triu(-C^T A), dK = -T^T dT T^T, dQ += Q (S + S^T), S = strict_upper(dK); then back
/// through the normalization (dq_i -> (dq_i - q_i (q_i . dq_i)) / ||u_i||) or, with
/// Gram-Schmidt, through the pass in reverse, which rebuilds each intermediate vector from q_i
/// and the stored projection coefficients. Stores Q, T, the norms and the coefficients.
///
/// Both passes walk X (and G) in tiles of kTileRows rows, each thread its own tiles: a tile is
/// read from memory once and its thin products run while it is in cache, so apply streams X in
/// and Y out once and backward streams X and G in and dX out once, whatever r is (the N x r
/// products of whole matrices read X twice and G three times). backward sums dQ (d x r) and dT
/// (r x r) per thread, in the caller's workspace (workspace_size), then once across threads.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "../errors.hpp"
#include "../parameterization.hpp"
#include "../view.hpp"
#include "../workspace.hpp"
#include "../detail/thread_scratch.hpp"
#include "bf16.hpp"

namespace oft {

template <class Scalar_>
class Householder<Scalar_, cpu> {
 public:
  using Scalar = Scalar_;
  static_assert(std::is_floating_point_v<Scalar>, "oft::Householder needs float or double");
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// d features, r reflections; R = I until set_vectors. Throws std::invalid_argument naming the
  /// values unless d >= 1 and 1 <= r (and r <= d with Gram-Schmidt, which cannot make more than
  /// d orthonormal vectors).
  Householder(Index features, Index reflections, bool gram_schmidt = false)
      : features_(features), reflections_(reflections), gram_schmidt_(gram_schmidt) {
    detail::require(features >= 1, "householder features d=", features, " must be >= 1");
    detail::require(reflections >= 1, "householder reflections r=", reflections, " must be >= 1");
    detail::require(!gram_schmidt || reflections <= features, "householder reflections r=",
                    reflections, " exceed features d=", features,
                    ": Gram-Schmidt cannot make more than d orthonormal vectors");
    q_ = Matrix::Zero(features, reflections);
    t_ = Matrix::Zero(reflections, reflections);  // T = 0: R = I
    norms_.assign(static_cast<std::size_t>(reflections), Scalar(1));
    coefficients_ = Matrix::Zero(reflections, reflections);
  }

  Index features() const { return features_; }
  Index reflections() const { return reflections_; }
  bool gram_schmidt() const { return gram_schmidt_; }
  /// The unit reflection vectors q_i (d x r) and T (r x r, upper triangular).
  const Matrix& vectors() const { return q_; }
  const Matrix& triangular_factor() const { return t_; }

  /// U (d x r, PEFT's hra_u: column i is reflection i's vector, any length). Throws
  /// std::invalid_argument on the shape and std::domain_error naming the entry or column for a
  /// non-finite value or a zero column (a zero Gram-Schmidt residual); a refusal leaves the
  /// operator unchanged.
  void set_vectors(ConstMatrixView<Scalar> u) {
    detail::require_shape(u, features_, reflections_, "hra_u");
    for (Index p = 0; p < features_; ++p)
      for (Index i = 0; i < reflections_; ++i)
        detail::require_domain(std::isfinite(static_cast<double>(u(p, i))), "hra_u has a non-finite entry ",
                               u(p, i), " at (", p, ", ", i, ")");
    Matrix q(features_, reflections_), t = Matrix::Zero(reflections_, reflections_),
        coefficients = Matrix::Zero(reflections_, reflections_);
    std::vector<Scalar> norms(static_cast<std::size_t>(reflections_));
    for (Index i = 0; i < reflections_; ++i) {
      auto v = q.col(i);
      for (Index p = 0; p < features_; ++p) v(p) = u(p, i);
      if (gram_schmidt_) {
        // Modified Gram-Schmidt: each projection on the updated v, as PEFT.
        for (Index j = 0; j < i; ++j) {
          coefficients(j, i) = q.col(j).dot(v);
          v -= coefficients(j, i) * q.col(j);
        }
      }
      const Scalar norm = v.norm();
      detail::require_domain(norm > Scalar(0), "hra_u column ", i,
                             gram_schmidt_ ? " lies in the span of the columns before it (zero "
                                             "Gram-Schmidt residual)"
                                           : " is zero (a reflection needs a nonzero vector)");
      norms[static_cast<std::size_t>(i)] = norm;
      v /= norm;
    }
    if (gram_schmidt_) {
      t.diagonal().setConstant(Scalar(2));  // R_H = I - 2 Q Q^T
    } else {
      // larft, forward, tau = 2: T(i, i) = 2, T(0:i, i) = -2 T(0:i, 0:i) Q(:, 0:i)^T q_i.
      for (Index i = 0; i < reflections_; ++i) {
        t(i, i) = Scalar(2);
        if (i > 0) {
          const Matrix overlap = q.leftCols(i).transpose() * q.col(i);
          t.col(i).head(i) = Scalar(-2) * (t.topLeftCorner(i, i) * overlap);
        }
      }
    }
    q_.swap(q);
    t_.swap(t);
    coefficients_.swap(coefficients);
    norms_.swap(norms);
  }

  /// Y = X R = X - ((X Q) T^T) Q^T (N x d, row-major, any row stride). `y` may be `x`.
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const { apply_with(x, y, /*transposed=*/false); }
  /// Y = X R^T = X R_H: the inverse of apply when R is orthogonal (always, up to rounding,
  /// unless Gram-Schmidt met nearly dependent columns); W0 R^T, PEFT's merge, on W0's rows.
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    apply_with(x, y, /*transposed=*/true);
  }
  /// bfloat16 activations (float operators only): each tile of X is widened exactly to float,
  /// goes through the float products, and each output is rounded once (nearest even).
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    apply_with(x, y, /*transposed=*/false);
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    apply_with(x, y, /*transposed=*/true);
  }

  /// Scalars of workspace backward needs (for any N = `rows`): per thread, its partial dQ and dT
  /// and four kTileRows x r tile panels.
  Index workspace_size(Index rows) const {
    static_cast<void>(rows);  // the tiles bound it, not N
    return static_cast<Index>(detail::max_threads()) * per_thread_workspace();
  }

  /// Vector-Jacobian product of Y = X R(U) for dY: dX = dY R^T and dU = dL/dU (d x r, PEFT's
  /// hra_u layout, overwritten). Pass {} to skip either. dX may be dY or X.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                MatrixView<Scalar> du, Workspace<Scalar>& workspace) const {
    backward_with(x, dy, dx, du, workspace);
  }
  /// backward with bfloat16 activations X, dY, dX (float operators only); dU and every sum in
  /// float, dX rounded once.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                MatrixView<Scalar> du, Workspace<Scalar>& workspace) const {
    backward_with(x, dy, dx, du, workspace);
  }

  /// The whole d x d R (a slow reference: R = I R).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dense() const {
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m =
        Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>::Identity(features_, features_);
    apply(view(m), view(m));
    return m;
  }

 private:
  template <class Act>
  void apply_with(ConstMatrixView<Act> x, MatrixView<Act> y, bool transposed) const {
    detail::require(x.cols() == features_, "X has ", x.cols(), " columns, expected d=", features_,
                    " (r=", reflections_, " reflections)");
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
    const Index rows = x.rows(), d = features_, r = reflections_;
    const Matrix t = transposed ? t_ : Matrix(t_.transpose());
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index tile = 0; tile < tiles(rows); ++tile) {
      const Index start = tile * kTileRows, n = std::min(kTileRows, rows - start);
      Scalar* panel = detail::thread_buffer<Scalar, detail::ScratchSlot::HouseholderPanel>(2 * kTileRows * r);
      RowMap a(panel, n, r), b(panel + kTileRows * r, n, r);
      if constexpr (std::is_same_v<Act, Scalar>) {
        const auto xt = x.map().middleRows(start, n);
        a.noalias() = xt * q_;  // read the tile of X before Y (which may be X) is written
        b.noalias() = a * t;
        auto yt = y.map().middleRows(start, n);
        if (!detail::same_memory(x, y)) yt = xt;
        yt.noalias() -= b * q_.transpose();
      } else {
        RowMap xt(widened_tile(x, start, n, 0), n, d);
        a.noalias() = xt * q_;
        b.noalias() = a * t;
        xt.noalias() -= b * q_.transpose();
        narrow_tile(xt.data(), y, start, n);
      }
    }
  }

  template <class Act>
  void backward_with(ConstMatrixView<Act> x, ConstMatrixView<Act> dy, MatrixView<Act> dx,
                     MatrixView<Scalar> du, Workspace<Scalar>& workspace) const {
    const Index rows = x.rows(), d = features_, r = reflections_;
    const bool want_dx = detail::require_backward_activations(x, dy, dx, d);
    const bool want_du = du.data() != nullptr;
    if (want_du) {
      detail::require_shape(du, d, r, "dU");
      detail::require_disjoint(du, x, "dU", "X");
      detail::require_disjoint(du, dy, "dU", "dY");
    }
    const int threads = detail::max_threads();
    Scalar* scratch = workspace.reserve(workspace_size(rows));
    const Index per_thread = per_thread_workspace();
    // Every thread's partial sums start at zero here, so the sum below is right however many
    // threads the region gets (one when it is too small to split).
    for (int t = 0; t < threads; ++t)
      std::fill_n(scratch + static_cast<Index>(t) * per_thread, d * r + r * r, Scalar(0));
    // Per tile of rows: A = X Q, C = G Q, then (X and G still in cache) the tile's share of
    // dQ = -X^T (C T) - G^T (A T^T) and of dT = -C^T A, and last dX = G - (C T) Q^T, written
    // after every read of the tile's X and G (dX may be either).
    OFT_OMP(parallel num_threads(threads) if (rows * d >= kParallelElements))
    {
      Scalar* mine = scratch + static_cast<Index>(detail::thread_id()) * per_thread;
      MatrixMap dq_part(mine, d, r), dt_part(mine + d * r, r, r);
      Scalar* panels = mine + d * r + r * r;
      OFT_OMP(for schedule(static))
      for (Index tile = 0; tile < tiles(rows); ++tile) {
        const Index start = tile * kTileRows, n = std::min(kTileRows, rows - start);
        RowMap ct(panels + 2 * kTileRows * r, n, r);
        const auto gradient_sums = [&](const auto& xt, const auto& gt) {
          RowMap a(panels, n, r), c(panels + kTileRows * r, n, r), at(panels + 3 * kTileRows * r, n, r);
          a.noalias() = xt * q_;
          c.noalias() = gt * q_;
          ct.noalias() = c * t_;
          if (want_du) {
            at.noalias() = a * t_.transpose();
            dq_part.noalias() -= xt.transpose() * ct;
            dq_part.noalias() -= gt.transpose() * at;
            if (!gram_schmidt_) dt_part.noalias() -= c.transpose() * a;
          }
        };
        if constexpr (std::is_same_v<Act, Scalar>) {
          const auto gt = dy.map().middleRows(start, n);
          gradient_sums(x.map().middleRows(start, n), gt);
          if (want_dx) {
            auto dxt = dx.map().middleRows(start, n);
            if (!detail::same_memory(dx, dy)) dxt = gt;
            dxt.noalias() -= ct * q_.transpose();
          }
        } else {
          const RowMap xt(widened_tile(x, start, n, 0), n, d);
          RowMap gt(widened_tile(dy, start, n, 1), n, d);
          gradient_sums(xt, gt);
          if (want_dx) {
            gt.noalias() -= ct * q_.transpose();
            narrow_tile(gt.data(), dx, start, n);
          }
        }
      }
    }
    if (want_du) {
      Matrix dq = Matrix::Zero(d, r), dt = Matrix::Zero(r, r);
      for (int t = 0; t < threads; ++t) {
        Scalar* part = scratch + static_cast<Index>(t) * per_thread;
        dq += MatrixMap(part, d, r);
        dt += MatrixMap(part + d * r, r, r);
      }
      if (!gram_schmidt_) {
        dt = dt.template triangularView<Eigen::Upper>();
        const Matrix dk = -(t_.transpose() * dt * t_.transpose());
        Matrix s = dk.template triangularView<Eigen::StrictlyUpper>();
        dq.noalias() += q_ * (s + s.transpose());
      }
      store_vector_gradient(dq, du);
    }
  }

  /// Rows start .. start + n - 1 of bfloat16 `x`, widened exactly into this thread's tile
  /// buffer `which` (0 or 1) as a contiguous n x d float matrix.
  Scalar* widened_tile(ConstMatrixView<bfloat16> x, Index start, Index n, int which) const {
    const Index d = features_;
    Scalar* tile = detail::thread_buffer<Scalar, detail::ScratchSlot::HouseholderTile>(2 * kTileRows * d) +
                   which * kTileRows * d;
    for (Index i = 0; i < n; ++i) detail::cpu::convert_row(x.row(start + i), d, tile + i * d);
    return tile;
  }
  /// The n x d float rows `from` into rows start .. of bfloat16 `y`, each rounded once.
  void narrow_tile(const Scalar* from, MatrixView<bfloat16> y, Index start, Index n) const {
    const Index d = features_;
    for (Index i = 0; i < n; ++i) detail::cpu::convert_row(from + i * d, d, y.row(start + i));
  }

  /// Rows per tile: 64 rows of d = 4096 floats (1 MiB) stay in L2/L3 between the tile's two
  /// products, and 64 is a long enough inner dimension for the dQ update's product.
  static constexpr Index kTileRows = 64;
  static constexpr Index kParallelElements = Index{1} << 16;
  using RowMap = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  using MatrixMap = Eigen::Map<Matrix>;

  static Index tiles(Index rows) { return (rows + kTileRows - 1) / kTileRows; }
  Index per_thread_workspace() const {
    return features_ * reflections_ + reflections_ * reflections_ + 4 * kTileRows * reflections_;
  }

  /// dU from dQ: through the normalization, and with Gram-Schmidt through the pass in reverse.
  void store_vector_gradient(Matrix& dq, MatrixView<Scalar> du) const {
    const Index d = features_, r = reflections_;
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> dv(d), v(d);
    for (Index i = r - 1; i >= 0; --i) {
      const auto qi = q_.col(i);
      const Scalar norm = norms_[static_cast<std::size_t>(i)];
      dv = (dq.col(i) - qi * qi.dot(dq.col(i))) / norm;  // q = v / ||v||
      if (gram_schmidt_) {
        // v_{j+1} = v_j - (q_j . v_j) q_j for j = i-1 .. 0, walked back from v_i = ||v_i|| q_i.
        v = norm * qi;
        for (Index j = i - 1; j >= 0; --j) {
          const auto qj = q_.col(j);
          const Scalar coefficient = coefficients_(j, i);
          v += coefficient * qj;  // v_j
          const Scalar along = qj.dot(dv);
          dq.col(j) -= coefficient * dv + along * v;
          dv -= along * qj;
        }
      }
      for (Index p = 0; p < d; ++p) du(p, i) = dv(p);
    }
  }

  Index features_, reflections_;
  bool gram_schmidt_;
  Matrix q_, t_, coefficients_;
  std::vector<Scalar> norms_;
};

}  // namespace oft

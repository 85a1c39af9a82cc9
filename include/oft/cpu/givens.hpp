#pragma once
/// \file cpu/givens.hpp
/// The CPU Givens operator (GOFT): X R = X P_L ... P_1, stage L first, each pair (i, j) with
/// angle t turning a row as
///
///     x_i' = x_i cos t + x_j sin t,    x_j' = -x_i sin t + x_j cos t,
///
/// in place, one row at a time (every stage is local to a row, so rows run on OpenMP threads).
/// Backward, per row: recompute the row's output, then walk the stages in reverse (stage 1
/// first), each pair giving dt += g_i y_j - g_j y_i from its output y and gradient g, and
/// recovering its input by the inverse turn (exact math: Givens rotations are orthogonal, so the
/// recovered input differs from the stored one by rounding, O(u log d)). Needs 2 d scalars per
/// thread and a per-thread copy of the angle gradient (threads x angles of workspace).

#include <cmath>
#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "../detail/thread_scratch.hpp"
#include "../errors.hpp"
#include "../givens_spec.hpp"
#include "../view.hpp"
#include "../workspace.hpp"
#include "bf16.hpp"

namespace oft {

template <class Scalar_>
class Givens<Scalar_, cpu> {
 public:
  using Scalar = Scalar_;
  static_assert(std::is_floating_point_v<Scalar>, "oft::Givens needs float or double");
  using Dense = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// R = I (all angles 0) until set_angles.
  explicit Givens(GivensSpec spec) : spec_(std::move(spec)) {
    angles_.assign(static_cast<std::size_t>(spec_.angles()), Scalar(0));
    cos_.assign(angles_.size(), Scalar(1));
    sin_.assign(angles_.size(), Scalar(0));
    for (const auto& stage : spec_.stages())
      for (const auto& pair : stage) {
        first_.push_back(pair.first);
        second_.push_back(pair.second);
      }
    Index offset = 0;
    for (const auto& stage : spec_.stages()) {
      stage_offset_.push_back(offset);
      offset += static_cast<Index>(stage.size());
    }
    stage_offset_.push_back(offset);
  }

  const GivensSpec& spec() const { return spec_; }
  Index features() const { return spec_.features(); }
  const std::vector<Scalar>& angles() const { return angles_; }

  /// The spec().angles() angles, stage-major. Throws std::invalid_argument on the count and
  /// std::domain_error naming a non-finite angle; a refusal leaves the operator unchanged.
  void set_angles(const Scalar* angles, Index count) {
    detail::require(count == spec_.angles(), "givens angles has ", count, " values, expected ",
                    spec_.angles(), " for d=", spec_.features());
    for (Index k = 0; k < count; ++k)
      detail::require_domain(std::isfinite(static_cast<double>(angles[k])), "givens angle ", k,
                             " is not finite (", angles[k], ")");
    for (Index k = 0; k < count; ++k) {
      angles_[static_cast<std::size_t>(k)] = angles[k];
      cos_[static_cast<std::size_t>(k)] = std::cos(angles[k]);
      sin_[static_cast<std::size_t>(k)] = std::sin(angles[k]);
    }
  }
  void set_angles(const std::vector<Scalar>& angles) {
    set_angles(angles.data(), static_cast<Index>(angles.size()));
  }

  /// Y = X R (N x d, any row stride). `y` may be `x`.
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const { turn_rows(x, y, /*inverse=*/false); }

  /// Y = X R^T = X P_1^T ... P_L^T: the inverse of apply. W0 R^T, the merged weight, on W0's rows.
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    turn_rows(x, y, /*inverse=*/true);
  }

  /// bfloat16 activations (float operators only): each row is widened exactly to float, turned
  /// in float, and rounded once (nearest even).
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    turn_rows(x, y, /*inverse=*/false);
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    turn_rows(x, y, /*inverse=*/true);
  }

  /// Scalars of workspace backward needs: one angle gradient per thread.
  Index workspace_size() const { return static_cast<Index>(detail::max_threads()) * spec_.angles(); }

  /// Vector-Jacobian product of Y = X R(angles) for dY: dX = dY R^T and d angles (overwritten,
  /// spec().angles() values). Pass {} / nullptr to skip either. dX may be dY or X.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                Scalar* dangles, Workspace<Scalar>& workspace) const {
    backward_with(x, dy, dx, dangles, workspace);
  }
  /// backward with bfloat16 activations X, dY, dX (float operators only); the angle gradients
  /// and every sum in float, dX rounded once.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                Scalar* dangles, Workspace<Scalar>& workspace) const {
    backward_with(x, dy, dx, dangles, workspace);
  }

  /// The whole d x d R (a slow reference: R = I R).
  Dense dense() const {
    Dense m = Dense::Identity(features(), features());
    apply(view(m), view(m));
    return m;
  }

 private:
  template <class Act>
  void backward_with(ConstMatrixView<Act> x, ConstMatrixView<Act> dy, MatrixView<Act> dx, Scalar* dangles,
                     Workspace<Scalar>& workspace) const {
    const Index rows = x.rows(), d = features(), count = spec_.angles();
    const bool want_dx = detail::require_backward_activations(x, dy, dx, d);
    if (dangles == nullptr) {
      if (want_dx) apply_transposed(dy, dx);
      return;
    }
    const int threads = detail::max_threads();
    Scalar* partial = workspace.reserve(workspace_size());
    std::fill(partial, partial + static_cast<Index>(threads) * count, Scalar(0));
    OFT_OMP(parallel if (rows * d >= kParallelElements))
    {
      Scalar* mine = partial + static_cast<Index>(detail::thread_id()) * count;
      Scalar* y = detail::thread_buffer<Scalar, detail::ScratchSlot::GivensRows>(2 * d);
      Scalar* g = y + d;
      OFT_OMP(for schedule(static))
      for (Index n = 0; n < rows; ++n) {
        detail::cpu::convert_row(x.row(n), d, y);
        detail::cpu::convert_row(dy.row(n), d, g);  // before dX (which may be X or dY) is written
        forward_row(y);
        backward_row(y, g, mine);
        if (want_dx) detail::cpu::convert_row(g, d, dx.row(n));
      }
    }
    for (Index k = 0; k < count; ++k) {
      Scalar sum = 0;
      for (int t = 0; t < threads; ++t) sum += partial[static_cast<Index>(t) * count + k];
      dangles[k] = sum;
    }
  }


  template <class Act>
  void check_apply(const ConstMatrixView<Act>& x, const MatrixView<Act>& y) const {
    detail::require(x.cols() == features(), "X has ", x.cols(), " columns, expected d=",
                    features(), " (", spec_.angles(), " Givens angles)");
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
  }

  /// Y = X R, or X R^T when `inverse`, row by row (y may be x). bfloat16 rows go through a
  /// per-thread float row.
  template <class Act>
  void turn_rows(ConstMatrixView<Act> x, MatrixView<Act> y, bool inverse) const {
    check_apply(x, y);
    const Index rows = x.rows(), d = features();
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index n = 0; n < rows; ++n) {
      Scalar* row = nullptr;
      if constexpr (std::is_same_v<Act, Scalar>) {
        row = y.row(n);
        if (row != x.row(n)) std::copy(x.row(n), x.row(n) + d, row);
      } else {
        row = detail::thread_buffer<Scalar, detail::ScratchSlot::GivensRows>(2 * d);
        detail::cpu::convert_row(x.row(n), d, row);
      }
      if (inverse)
        inverse_row(row);
      else
        forward_row(row);
      if constexpr (!std::is_same_v<Act, Scalar>) detail::cpu::convert_row(row, d, y.row(n));
    }
  }

  /// row <- row P_L ... P_1.
  void forward_row(Scalar* row) const {
    for (std::size_t s = spec_.stages().size(); s-- > 0;)
      for (Index k = stage_offset_[s]; k < stage_offset_[s + 1]; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        Scalar& a = row[first_[kk]];
        Scalar& b = row[second_[kk]];
        const Scalar c = cos_[kk], s_ = sin_[kk], xa = a, xb = b;
        a = xa * c + xb * s_;
        b = -xa * s_ + xb * c;
      }
  }

  /// row <- row P_1^T ... P_L^T (the inverse turns, stage 1 first).
  void inverse_row(Scalar* row) const {
    for (std::size_t s = 0; s < spec_.stages().size(); ++s)
      for (Index k = stage_offset_[s]; k < stage_offset_[s + 1]; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        Scalar& a = row[first_[kk]];
        Scalar& b = row[second_[kk]];
        const Scalar c = cos_[kk], s_ = sin_[kk], ya = a, yb = b;
        a = ya * c - yb * s_;
        b = ya * s_ + yb * c;
      }
  }

  /// From the row's output y and its gradient g: accumulates d angles into `dangles`, and
  /// leaves g = dL/dx (and y = the recovered x).
  void backward_row(Scalar* y, Scalar* g, Scalar* dangles) const {
    for (std::size_t s = 0; s < spec_.stages().size(); ++s)
      for (Index k = stage_offset_[s]; k < stage_offset_[s + 1]; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const Index i = first_[kk], j = second_[kk];
        const Scalar c = cos_[kk], s_ = sin_[kk];
        const Scalar yi = y[i], yj = y[j], gi = g[i], gj = g[j];
        dangles[k] += gi * yj - gj * yi;
        y[i] = yi * c - yj * s_;
        y[j] = yi * s_ + yj * c;
        g[i] = gi * c - gj * s_;
        g[j] = gi * s_ + gj * c;
      }
  }

  /// Below this many elements a call runs on one thread.
  static constexpr Index kParallelElements = Index{1} << 16;

  GivensSpec spec_;
  std::vector<Scalar> angles_, cos_, sin_;
  std::vector<Index> first_, second_;  // pair k = (first_[k], second_[k]), stage-major
  std::vector<Index> stage_offset_;    // stage s's pairs are [stage_offset_[s], stage_offset_[s+1])
};

}  // namespace oft

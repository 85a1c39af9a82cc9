#pragma once
/// \file quant/qlora_linear.hpp
/// The QLoRA baseline (Dettmers et al., 2023) over the same quantized frozen bases and fused
/// products as QoftLinear, so that QOFT and QLoRA are measured side by side in one harness:
///
///   forward    Z = X Dequant(Wq)^T + s (X A^T) B^T + bias       A: r x d, B: n_out x r, s = alpha
///   / r backward   dX = dZ Dequant(Wq) + s (dZ B) A
///              dA = s (dZ B)^T X,   dB = s dZ^T (X A^T)
///
/// PEFT's LoRA layout and scaling (lora_A.weight [r, d], lora_B.weight [n_out, r], scaling
/// lora_alpha / r); no dropout. The adapter is float like the activations; the base is frozen.
#include <algorithm>
#include <utility>

#include "../detail/layer_checks.hpp"
#include "../workspace.hpp"
#include "frozen_base.hpp"
#include "fused_gemm.hpp"

namespace oft::quant {

template <class Scalar_, class Base_>
class QloraLinear {
 public:
  using Scalar = Scalar_;
  using Base = Base_;
  using Vector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

  /// Layer over `base` (n_out x d) with LoRA rank `rank` and scaling alpha / rank; A and B start
  /// at zero (set them with lora_a() / lora_b()). `bias` (n_out) may be null.
  QloraLinear(Base base, const Scalar* bias, Index rank, double alpha)
      : base_(std::move(base)),
        bias_(bias ? Vector(Eigen::Map<const Vector>(bias, base_.rows())) : Vector()),
        a_(RowMatrix<Scalar>::Zero(checked_rank(rank), base_.cols())),
        b_(RowMatrix<Scalar>::Zero(base_.rows(), rank)),
        scaling_(static_cast<Scalar>(alpha / static_cast<double>(rank))) {}

  Index features() const { return base_.cols(); }  ///< d
  Index outputs() const { return base_.rows(); }   ///< n_out
  Index rank() const { return a_.rows(); }         ///< r
  Scalar scaling() const { return scaling_; }
  const Base& base() const { return base_; }
  RowMatrix<Scalar>& lora_a() { return a_; }  ///< r x d
  RowMatrix<Scalar>& lora_b() { return b_; }  ///< n_out x r
  const RowMatrix<Scalar>& lora_a() const { return a_; }
  const RowMatrix<Scalar>& lora_b() const { return b_; }

  /// Scalars of workspace for `tokens` rows: X A^T (N x r), dZ B (N x r) and the panel.
  Index workspace_size(Index tokens) const { return 2 * tokens * rank() + fused_panel_size(base_); }

  std::size_t frozen_bytes() const {
    return base_.bytes() + static_cast<std::size_t>(bias_.size()) * sizeof(Scalar);
  }

  /// Z = X Dequant(Wq)^T + s (X A^T) B^T + bias. X: N x d, Z: N x n_out (must not overlap X).
  void forward(ConstMatrixView<Scalar> x, MatrixView<Scalar> z,
               Workspace<Scalar>& workspace) const {
    oft::detail::check_layer_forward(x, z, features(), outputs(), "Z");
    Scalar* buffer = workspace.reserve(workspace_size(x.rows()));
    Eigen::Map<RowMatrix<Scalar>> xa(buffer, x.rows(), rank());
    dequant_gemm_nt(base_, x, z, buffer + 2 * x.rows() * rank());
    xa.noalias() = x.map() * a_.transpose();
    z.map().noalias() += scaling_ * (xa * b_.transpose());
    if (bias_.size() > 0) z.map().rowwise() += bias_;
  }

  /// dX (may be {} or X itself), dA (r x d) and dB (n_out x r, both resized if needed) for the
  /// upstream gradient dZ.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz, MatrixView<Scalar> dx,
                RowMatrix<Scalar>& da, RowMatrix<Scalar>& db, Workspace<Scalar>& workspace) const {
    oft::detail::require(x.cols() == features(), "X has ", x.cols(),
                         " columns, expected d=", features());
    oft::detail::require_shape(dz, x.rows(), outputs(), "dZ");
    if (dx.data() != nullptr) {
      oft::detail::require_shape(dx, x.rows(), features(), "dX");
      oft::detail::require_disjoint(dx, dz, "dX", "dZ");
      oft::detail::require_in_place_or_disjoint(dx, x, "dX", "X");
    }
    Scalar* buffer = workspace.reserve(workspace_size(x.rows()));
    Eigen::Map<RowMatrix<Scalar>> xa(buffer, x.rows(), rank());
    Eigen::Map<RowMatrix<Scalar>> dzb(buffer + x.rows() * rank(), x.rows(), rank());
    xa.noalias() = x.map() * a_.transpose();
    dzb.noalias() = dz.map() * b_;
    // Adapter gradients first: dX may overwrite X.
    da.noalias() = scaling_ * (dzb.transpose() * x.map());
    db.noalias() = scaling_ * (dz.map().transpose() * xa);
    if (dx.data() == nullptr) return;
    dequant_gemm_nn(base_, dz, dx, buffer + 2 * x.rows() * rank());
    dx.map().noalias() += scaling_ * (dzb * a_);
  }

 private:
  static Index checked_rank(Index rank) {
    oft::detail::require(rank >= 1, "QloraLinear: rank ", rank, " must be >= 1");
    return rank;
  }

  Base base_;
  Vector bias_;
  RowMatrix<Scalar> a_, b_;
  Scalar scaling_;
};

}  // namespace oft::quant

#pragma once
/// \file cpu/linear.hpp
/// OftLinear<Scalar, P, cpu>: the CPU backend's linear layer (public API documented in
/// <oft/linear.hpp> and docs/api.md): the rotation is BlockOrthogonal<Scalar, P, cpu>
/// (cpu/block_orthogonal.hpp) and the frozen base's GEMMs go through Eigen, which calls an
/// external BLAS when EIGEN_USE_BLAS is defined (CMake target oft::blas) and parallelizes with
/// OpenMP otherwise.

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/LU>

#include "../backend.hpp"
#include "../detail/layer_checks.hpp"
#include "../workspace.hpp"
#include "block_orthogonal.hpp"

namespace oft {

template <class Scalar_, class Parameterization_>
class OftLinear<Scalar_, Parameterization_, cpu> {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Rotation = BlockOrthogonal<Scalar, Parameterization, cpu>;
  using Vector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

  /// Layer over `weight` (n_out x d) with block size b; `bias` (n_out entries) may be null.
  OftLinear(ConstMatrixView<Scalar> weight, const Scalar* bias, Index block_size,
            bool shared = false, Parameterization parameterization = {})
      : rotation_(BlockSpec::from_features(weight.cols(), block_size, shared), parameterization),
        weight_(weight.map()),
        bias_(bias ? Vector(Eigen::Map<const Vector>(bias, weight.rows())) : Vector()) {}

  Index features() const { return weight_.cols(); }   ///< d
  Index outputs() const { return weight_.rows(); }    ///< n_out
  const RowMatrix<Scalar>& weight() const { return weight_; }
  const Vector& bias() const { return bias_; }
  Rotation& rotation() { return rotation_; }
  const Rotation& rotation() const { return rotation_; }

  /// theta -> R (see BlockOrthogonal::set_generators).
  void set_generators(GeneratorView<const Scalar> theta) { rotation_.set_generators(theta); }

  /// Scalars of workspace that forward and backward need for `tokens` rows.
  Index workspace_size(Index tokens) const {
    return tokens * features() + rotation_.workspace_size();
  }

  /// Z = (X * R) * W0^T + bias. X: N x d, Z: N x n_out (must not overlap X).
  void forward(ConstMatrixView<Scalar> x, MatrixView<Scalar> z, Workspace<Scalar>& workspace) const {
    check_io(x, z, "Z");
    Scalar* rotated = workspace.reserve(workspace_size(x.rows()));
    MatrixView<Scalar> y(rotated, x.rows(), features());
    rotation_.apply(x, y);
    base_forward(y, z);
  }

  /// The original OFT path: forms W' = W0 * R^T, then Z = X * W'^T + bias. The slow reference
  /// (allocates W'); gives the same Z as forward up to rounding.
  void forward_weight_centric(ConstMatrixView<Scalar> x, MatrixView<Scalar> z) const {
    check_io(x, z, "Z");
    const RowMatrix<Scalar> merged_weight = merged();
    z.map().noalias() = x.map() * merged_weight.transpose();
    if (bias_.size() > 0) z.map().rowwise() += bias_;
  }

  /// Gradients of the input-centric forward for the upstream gradient dZ (N x n_out):
  /// dX = dZ * W0 * R^T and dtheta (W0 and bias are frozen). Pass {} to skip an output.
  /// dX must not overlap dZ; it may be X itself.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    check_backward(x, dz, dx, dtheta, /*dx_may_be_x=*/true);
    Scalar* buffer = workspace.reserve(workspace_size(x.rows()));
    MatrixView<Scalar> dy(buffer, x.rows(), features());
    dy.map().noalias() = dz.map() * weight_;
    rotation_.backward(x, dy, dx, dtheta, buffer + x.rows() * features(),
                       rotation_.workspace_size());
  }

  /// Gradients through the weight-centric path (reference and timing comparison):
  /// dX = dZ * W', dW' = dZ^T X, G_i = dW'_i^T W0_i, then the same generator VJP.
  void backward_weight_centric(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz,
                               MatrixView<Scalar> dx, GeneratorView<Scalar> dtheta) const {
    check_backward(x, dz, dx, dtheta, /*dx_may_be_x=*/false);
    const RowMatrix<Scalar> merged_weight = merged();
    if (dx.data() != nullptr) dx.map().noalias() = dz.map() * merged_weight;
    if (dtheta.data() == nullptr) return;
    const RowMatrix<Scalar> merged_grad = dz.map().transpose() * x.map();  // n_out x d
    const Index b = rotation_.spec().block_size;
    RowMatrix<Scalar> block_grads(features(), b);
    for (Index i = 0; i < rotation_.spec().blocks; ++i)
      block_grads.middleRows(i * b, b).noalias() =
          merged_grad.middleCols(i * b, b).transpose() * weight_.middleCols(i * b, b);
    rotation_.backward_from_block_gradients(view(block_grads), dtheta);
  }

  /// W' = W0 * R^T (n_out x d): the weight a plain linear layer needs to reproduce this layer.
  RowMatrix<Scalar> merged() const {
    const Index b = rotation_.spec().block_size;
    RowMatrix<Scalar> out(outputs(), features());
    for (Index i = 0; i < rotation_.spec().blocks; ++i)
      out.middleCols(i * b, b).noalias() =
          weight_.middleCols(i * b, b) * rotation_.block(i).transpose();
    return out;
  }

  /// W0 = W' * (R^T)^-1, the true inverse of merge even when R is not exactly orthogonal
  /// (a truncated Neumann R). Throws std::domain_error if a block R_i is singular.
  RowMatrix<Scalar> unmerge(ConstMatrixView<Scalar> merged_weight) const {
    detail::require_shape(merged_weight, outputs(), features(), "merged weight");
    RowMatrix<Scalar> out(outputs(), features());
    rotation_.apply_inverse(merged_weight, view(out), /*transposed=*/true);
    return out;
  }

 private:
  void check_io(const ConstMatrixView<Scalar>& x, const MatrixView<Scalar>& z,
                const char* out_name) const {
    detail::check_layer_forward(x, z, features(), outputs(), out_name);
  }

  /// Every check of backward and backward_weight_centric, before either writes anything.
  void check_backward(const ConstMatrixView<Scalar>& x, const ConstMatrixView<Scalar>& dz,
                      const MatrixView<Scalar>& dx, const GeneratorView<Scalar>& dtheta,
                      bool dx_may_be_x) const {
    detail::check_layer_backward(rotation_, x, dz, dx, dtheta, features(), outputs(), dx_may_be_x);
  }

  void base_forward(const MatrixView<Scalar>& y, const MatrixView<Scalar>& z) const {
    z.map().noalias() = y.map() * weight_.transpose();
    if (bias_.size() > 0) z.map().rowwise() += bias_;
  }

  Rotation rotation_;
  RowMatrix<Scalar> weight_;
  Vector bias_;
};

}  // namespace oft

#pragma once
/// \file quant/qoft_linear.hpp
/// QOFT (OFTv2, section "QOFT"): an OFT layer whose frozen base W (n_out x d) stays quantized.
/// Since OFTv2 rotates the input, the base is only ever multiplied, never rotated:
///
///   forward    Y = X R,   Z = Y Dequant(Wq)^T + bias
///   backward   dY = dZ Dequant(Wq),  then the rotation's backward (dX = dY R^T, dtheta)
///
/// Both products are the fused dequantize-GEMMs of quant/fused_gemm.hpp: the layer holds the
/// quantized bytes, the bias and one dequantized panel in the caller's workspace, never the whole
/// float W. `Base` is a frozen base of quant/frozen_base.hpp (DenseFloatBase, Bnb4Base for NF4/FP4,
/// Int8Base for LLM.int8). The rotation is oft's BlockOrthogonal with any parameterization, as in
/// OftLinear (linear.hpp), whose conventions and argument checks this layer shares; with a
/// DenseFloatBase it computes what OftLinear computes.
#include <algorithm>
#include <utility>

#include "../block_orthogonal.hpp"
#include "../detail/layer_checks.hpp"
#include "../workspace.hpp"
#include "frozen_base.hpp"
#include "fused_gemm.hpp"

namespace oft::quant {

template <class Scalar_, class Parameterization_, class Base_>
class QoftLinear {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Base = Base_;
  using Rotation = BlockOrthogonal<Scalar, Parameterization, cpu>;
  using Vector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

  /// Layer over the quantized `base` (n_out x d) with block size b; `bias` (n_out) may be null.
  QoftLinear(Base base, const Scalar* bias, Index block_size, bool shared = false,
             Parameterization parameterization = {})
      : rotation_(BlockSpec::from_features(base.cols(), block_size, shared), parameterization),
        base_(std::move(base)),
        bias_(bias ? Vector(Eigen::Map<const Vector>(bias, base_.rows())) : Vector()) {}

  Index features() const { return base_.cols(); }  ///< d
  Index outputs() const { return base_.rows(); }   ///< n_out
  const Base& base() const { return base_; }
  const Vector& bias() const { return bias_; }
  Rotation& rotation() { return rotation_; }
  const Rotation& rotation() const { return rotation_; }

  /// theta -> R (see BlockOrthogonal::set_generators).
  void set_generators(GeneratorView<const Scalar> theta) { rotation_.set_generators(theta); }

  /// Scalars of workspace that forward and backward need for `tokens` rows: Y or dY, then the
  /// dequantization panel (the rotation's backward scratch reuses the panel's room).
  Index workspace_size(Index tokens) const {
    return tokens * features() + std::max(fused_panel_size(base_), rotation_.workspace_size());
  }

  /// Bytes the layer keeps for its frozen side: the quantized base and the bias.
  std::size_t frozen_bytes() const {
    return base_.bytes() + static_cast<std::size_t>(bias_.size()) * sizeof(Scalar);
  }

  /// Z = (X R) Dequant(Wq)^T + bias. X: N x d, Z: N x n_out (must not overlap X).
  void forward(ConstMatrixView<Scalar> x, MatrixView<Scalar> z,
               Workspace<Scalar>& workspace) const {
    oft::detail::check_layer_forward(x, z, features(), outputs(), "Z");
    Scalar* buffer = workspace.reserve(workspace_size(x.rows()));
    MatrixView<Scalar> y(buffer, x.rows(), features());
    rotation_.apply(x, y);
    dequant_gemm_nt(base_, ConstMatrixView<Scalar>(y), z, buffer + x.rows() * features());
    if (bias_.size() > 0) z.map().rowwise() += bias_;
  }

  /// dX = dZ Dequant(Wq) R^T and dtheta for the upstream gradient dZ (N x n_out); the base and
  /// bias are frozen. Pass {} to skip an output. dX must not overlap dZ; it may be X itself.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    oft::detail::check_layer_backward(rotation_, x, dz, dx, dtheta, features(), outputs(),
                                      /*dx_may_be_x=*/true);
    Scalar* buffer = workspace.reserve(workspace_size(x.rows()));
    MatrixView<Scalar> dy(buffer, x.rows(), features());
    Scalar* scratch = buffer + x.rows() * features();
    dequant_gemm_nn(base_, dz, dy, scratch);
    rotation_.backward(x, dy, dx, dtheta, scratch, rotation_.workspace_size());
  }

  /// Dequant(Wq) (n_out x d), the weight the fused products use (references and tests).
  RowMatrix<Scalar> dequantized() const {
    RowMatrix<Scalar> out(outputs(), features());
    base_.dequantize(0, outputs(), 0, features(), out.data(), features());
    return out;
  }

 private:
  Rotation rotation_;
  Base base_;
  Vector bias_;
};

}  // namespace oft::quant

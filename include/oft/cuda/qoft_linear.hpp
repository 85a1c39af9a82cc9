#pragma once
/// \file cuda/qoft_linear.hpp
/// QOFT on the GPU: an OFT layer whose frozen base stays quantized in device memory (the CUDA
/// counterpart of quant/qoft_linear.hpp). OFTv2 rotates the input, so the base is only ever
/// multiplied, through the fused dequantize-GEMMs of cuda/quant.hpp:
///
///   forward    Y = X R (workspace),   Z = Y Dequant(Wq)^T + bias
///   backward   dY = dZ Dequant(Wq) (workspace), then the rotation's backward (dX = dY R^T, dtheta)
///
/// The layer holds the quantized bytes and the bias; the dequantized panel lives in the caller's
/// workspace, so the float W is never formed. fp32 activations and generators (the fused GEMMs
/// are fp32 cuBLAS products). The frozen bases are uploads of the CPU ones, which check the
/// tensors (blocksize, lengths) when they are built:
///
///   DeviceBnb4Base(quant::Bnb4Base)   NF4 / FP4, double quantization already read back
///   DeviceInt8Base(quant::Int8Base)   LLM.int8
///
/// Conventions and argument checks follow OftLinear<float, Policy, cuda> (cuda/linear.hpp): any
/// leading dimensions, device memory only, forward and backward allocate nothing and only
/// enqueue work on `stream`; one layer object must not be used from two host threads at once.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "../quant/frozen_base.hpp"
#include "block_orthogonal.hpp"
#include "kernels_linear.hpp"
#include "quant.hpp"
#include "workspace.hpp"

namespace oft::cuda_quant {

inline Rounding rounding_of(quant::DequantDtype dtype) {
  if (dtype == quant::DequantDtype::F16) return Rounding::F16;
  if (dtype == quant::DequantDtype::BF16) return Rounding::BF16;
  return Rounding::F32;
}

namespace detail {
template <class T>
DeviceBuffer<T> upload(const std::vector<T>& host, const char* where) {
  DeviceBuffer<T> out(host.size());
  if (!host.empty())
    oft::detail::cuda::check(cudaMemcpy(out.data(), host.data(), out.bytes(), cudaMemcpyHostToDevice),
                       "cudaMemcpy", where);
  return out;
}
}  // namespace detail

/// NF4 / FP4 weights in device memory this object owns (synchronous upload of a CPU Bnb4Base).
class DeviceBnb4Base {
 public:
  explicit DeviceBnb4Base(const quant::Bnb4Base& base)
      : packed_(detail::upload(base.tensor().packed, "DeviceBnb4Base")),
        absmax_(detail::upload(base.tensor().absmax, "DeviceBnb4Base")),
        format_(base.format()) {
    view_.packed = packed_.data();
    view_.absmax = absmax_.data();
    view_.rows = base.rows();
    view_.cols = base.cols();
    view_.blocksize = base.tensor().blocksize;
    view_.code = quant::bnb4_code(base.tensor().type);
    view_.rounding = rounding_of(base.dtype());
  }
  Index rows() const { return view_.rows; }
  Index cols() const { return view_.cols; }
  const char* format() const { return format_; }
  const Bnb4View& view() const { return view_; }
  /// Device bytes held: the packed codes and the float32 absmax.
  std::size_t bytes() const { return packed_.bytes() + absmax_.bytes(); }

 private:
  DeviceBuffer<std::uint8_t> packed_;
  DeviceBuffer<float> absmax_;
  const char* format_;
  Bnb4View view_;
};

/// LLM.int8 weights in device memory this object owns (synchronous upload of a CPU Int8Base).
class DeviceInt8Base {
 public:
  explicit DeviceInt8Base(const quant::Int8Base& base)
      : values_(detail::upload(base.tensor().values, "DeviceInt8Base")),
        scales_(detail::upload(base.tensor().scales, "DeviceInt8Base")) {
    view_ = Int8View{values_.data(), scales_.data(), base.rows(), base.cols()};
  }
  Index rows() const { return view_.rows; }
  Index cols() const { return view_.cols; }
  const char* format() const { return "int8"; }
  const Int8View& view() const { return view_; }
  std::size_t bytes() const { return values_.bytes() + scales_.bytes(); }

 private:
  DeviceBuffer<std::int8_t> values_;
  DeviceBuffer<float> scales_;
  Int8View view_;
};

/// The QOFT layer: BlockOrthogonal<float, Parameterization, cuda> over a DeviceBnb4Base or a
/// DeviceInt8Base.
template <class Parameterization_, class Base_>
class QoftLinear {
 public:
  using Scalar = float;
  using Parameterization = Parameterization_;
  using Base = Base_;
  using Rotation = BlockOrthogonal<float, Parameterization, cuda>;
  using Parameter = typename Rotation::Parameter;

  /// Layer over `base` (n_out x d) with blocks of `block_size`; `bias`: n_out floats in device
  /// memory, or nullptr. The bias is copied (the constructor synchronizes the device).
  QoftLinear(Base base, const float* bias, Index block_size, bool shared = false,
             Parameterization parameterization = {})
      : rotation_(BlockSpec::from_features(base.cols(), block_size, shared), parameterization),
        base_(std::move(base)),
        bias_(bias != nullptr ? static_cast<std::size_t>(base_.rows()) : 0) {
    const char* where = "cuda_quant::QoftLinear constructor";
    oft::detail::cuda::require_device_pointer(bias, "bias", where);
    if (bias != nullptr)
      oft::detail::cuda::check(cudaMemcpy(bias_.data(), bias, bias_.bytes(), cudaMemcpyDeviceToDevice),
                         "cudaMemcpy", where);
    oft::detail::cuda::check(cublasCreate(&handle_), "cublasCreate", where);
    // The device-to-device copy may still run: finish it, so the caller may reuse its bias.
    oft::detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", where);
  }
  ~QoftLinear() {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
  }
  QoftLinear(const QoftLinear&) = delete;
  QoftLinear& operator=(const QoftLinear&) = delete;

  Index in_features() const { return base_.cols(); }
  Index out_features() const { return base_.rows(); }
  bool has_bias() const { return bias_.size() > 0; }
  const Base& base() const { return base_; }
  const Rotation& rotation() const { return rotation_; }
  Rotation& rotation() { return rotation_; }
  /// Device bytes of the frozen side: the quantized base and the bias.
  std::size_t frozen_bytes() const { return base_.bytes() + bias_.bytes(); }

  void set_generators(DeviceMatrixView<const Parameter> theta, cudaStream_t stream) {
    rotation_.set_generators(theta, stream);
  }

  /// Device workspace bytes for forward and backward with N tokens: Y (or dY), then one room
  /// that holds the dequantized panel and, after the panel's last GEMM, the rotation's scratch.
  std::size_t workspace_bytes(Index tokens) const {
    const std::size_t panel =
        static_cast<std::size_t>(fused_panel_floats(out_features(), in_features())) * sizeof(float);
    return oft::detail::cuda::align_up(activation_bytes(tokens)) +
           std::max(oft::detail::cuda::align_up(panel), rotation_.workspace_bytes(tokens));
  }

  /// Z = (X R) Dequant(Wq)^T + bias. x: N x d, z: N x n_out (device memory, any leading
  /// dimensions; z must not overlap x).
  void forward(DeviceMatrixView<const float> x, DeviceMatrixView<float> z, void* workspace,
               std::size_t workspace_size, cudaStream_t stream) {
    const char* where = "cuda_quant::QoftLinear::forward";
    const Index n = x.rows();
    oft::detail::cuda::require_shape(x, n, in_features(), "x", where);
    oft::detail::cuda::require_shape(z, n, out_features(), "z", where);
    oft::detail::cuda::require_device_pointer(z.data(), "z", where);
    oft::detail::cuda::require_disjoint(z, x, "z", "x", where);
    oft::detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    if (n == 0) return;
    DeviceMatrixView<float> y(static_cast<float*>(workspace), n, in_features());
    rotation_.apply(x, y, stream);
    // With a bias, Z starts as the bias and every panel's GEMM adds to it (beta = 1).
    if (has_bias())
      oft::detail::cuda::broadcast_rows<float>(bias_.data(), z.data(), z.ld(), n, out_features(), stream);
    bind(stream, where);
    dequant_gemm_nt(handle_, base_.view(), y.data(), y.ld(), n, z.data(), z.ld(),
                    panel(workspace, n), stream, /*accumulate=*/has_bias());
  }

  /// dX and dtheta from dZ (N x n_out). dx may be empty (skip) or x itself; dtheta may be empty
  /// (skip); dx must not overlap dz.
  void backward(DeviceMatrixView<const float> x, DeviceMatrixView<const float> dz,
                DeviceMatrixView<float> dx, DeviceMatrixView<Parameter> dtheta, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) {
    const char* where = "cuda_quant::QoftLinear::backward";
    const Index n = dz.rows();
    oft::detail::cuda::require_shape(dz, n, out_features(), "dz", where);
    oft::detail::cuda::require_shape(x, n, in_features(), "x", where);
    oft::detail::cuda::require_device_pointer(dz.data(), "dz", where);
    if (!dx.empty()) oft::detail::cuda::require_disjoint(dx, dz, "dx", "dz", where);
    oft::detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    DeviceMatrixView<float> dy(static_cast<float*>(workspace), n, in_features());
    float* room = panel(workspace, n);
    if (n > 0) {
      bind(stream, where);
      dequant_gemm_nn(handle_, base_.view(), dz.data(), dz.ld(), n, dy.data(), dy.ld(), room,
                      stream);
    }
    // The rotation's scratch reuses the panel's room: the GEMMs before it are on the same stream.
    rotation_.backward(x, dy, dx, dtheta, room,
                       workspace_size - oft::detail::cuda::align_up(activation_bytes(n)), stream);
  }

 private:
  std::size_t activation_bytes(Index tokens) const {
    return static_cast<std::size_t>(tokens * in_features()) * sizeof(float);
  }
  float* panel(void* workspace, Index n) const {
    return reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                    oft::detail::cuda::align_up(activation_bytes(n)));
  }
  void bind(cudaStream_t stream, const char* where) {
    oft::detail::cuda::check(cublasSetStream(handle_, stream), "cublasSetStream", where);
  }

  Rotation rotation_;
  Base base_;
  DeviceBuffer<float> bias_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace oft::cuda_quant

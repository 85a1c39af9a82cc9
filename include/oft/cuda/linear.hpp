#pragma once
/// \file cuda/linear.hpp
/// OftLinear<T, Policy, cuda>: a frozen linear layer W0 (n_out x d) with an OFT adapter on the
/// GPU. The frozen GEMMs go through cuBLAS (cublasGemmEx, fp32 accumulation for 16-bit T); the
/// adapter is BlockOrthogonal<T, Policy, cuda>.
///
///   forward:  Y = X * R (input-centric, into the workspace), Z = Y * W0^T + bias
///   backward: dY = dZ * W0 (into the workspace), then the rotation's backward gives dX, dtheta
///   merge:    W' = W0 * R^T;  unmerge: W0 = W' * (R^T)^-1 (true inverse, also for Neumann R;
///             inactive blocks of a dropout mask are I in both; a singular active block throws
///             std::domain_error before W0 is written)
///
/// Construction copies W0 and the bias to device memory the layer owns, creates a cuBLAS handle
/// and synchronizes. forward and backward allocate nothing: they take a caller-owned workspace of
/// workspace_bytes(N) bytes and only enqueue work on the given stream (the handle is bound to it
/// per call). A layer object must not be used from two host threads at once (one cuBLAS handle).
/// With a bias, Z is first filled with the bias and the GEMM adds Y * W0^T with beta = 1, so Z is
/// rounded to T once.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>
#include <vector>

#include "block_orthogonal.hpp"
#include "kernels_linear.hpp"

namespace oft {

template <class Scalar_, class Parameterization_>
class OftLinear<Scalar_, Parameterization_, cuda> {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Rotation = BlockOrthogonal<Scalar, Parameterization, cuda>;
  using Parameter = typename Rotation::Parameter;

  /// w0: n_out x d frozen weight (device memory, PyTorch nn.Linear layout); bias: n_out values in
  /// device memory or nullptr. Both are copied. theta starts at zero (R = I).
  OftLinear(DeviceMatrixView<const Scalar> w0, const Scalar* bias, const BlockSpec& spec,
            Parameterization parameterization = {})
      : rotation_(spec, parameterization),
        out_features_(w0.rows()),
        w0_(static_cast<std::size_t>(w0.rows() * w0.cols())),
        bias_(bias != nullptr ? static_cast<std::size_t>(w0.rows()) : 0) {
    const char* where = "OftLinear<cuda> constructor";
    detail::require(w0.cols() == spec.features(), where, ": W0 has ", w0.cols(),
                    " columns, the block spec has d=", spec.features());
    detail::require(w0.rows() >= 1, where, ": W0 has no rows");
    detail::cuda::require_device_pointer(w0.data(), "w0", where);
    detail::cuda::require_device_pointer(bias, "bias", where);
    const std::size_t row_bytes = static_cast<std::size_t>(w0.cols()) * sizeof(Scalar);
    detail::cuda::check(cudaMemcpy2D(w0_.data(), row_bytes, w0.data(),
                                    static_cast<std::size_t>(w0.ld()) * sizeof(Scalar), row_bytes,
                                    static_cast<std::size_t>(w0.rows()), cudaMemcpyDeviceToDevice),
                       "cudaMemcpy2D", where);
    if (bias != nullptr)
      detail::cuda::check(cudaMemcpy(bias_.data(), bias, bias_.bytes(), cudaMemcpyDeviceToDevice),
                         "cudaMemcpy", where);
    detail::cuda::check(cublasCreate(&handle_), "cublasCreate", where);
    // Device-to-device cudaMemcpy may return before the copy is done: finish it, so the caller
    // may overwrite its W0 and bias on any stream once the constructor has returned.
    detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", where);
  }
  ~OftLinear() {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
  }
  OftLinear(const OftLinear&) = delete;
  OftLinear& operator=(const OftLinear&) = delete;

  Index in_features() const { return rotation_.features(); }
  Index out_features() const { return out_features_; }
  const Rotation& rotation() const { return rotation_; }
  Rotation& rotation() { return rotation_; }
  bool has_bias() const { return bias_.size() > 0; }
  /// The layer's copy of W0 (n_out x d, row-major, contiguous).
  DeviceMatrixView<const Scalar> weight() const {
    return DeviceMatrixView<const Scalar>(w0_.data(), out_features_, in_features());
  }

  void set_generators(DeviceMatrixView<const Parameter> theta, cudaStream_t stream) {
    rotation_.set_generators(theta, stream);
  }

  /// Device workspace bytes for forward and backward with N tokens.
  std::size_t workspace_bytes(Index tokens) const {
    return detail::cuda::align_up(activation_bytes(tokens)) + rotation_.workspace_bytes(tokens);
  }

  /// Z = (X * R) * W0^T + bias. x: N x d, z: N x n_out (device memory, any leading dimension).
  void forward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> z, void* workspace,
               std::size_t workspace_size, cudaStream_t stream) {
    const char* where = "OftLinear<cuda>::forward";
    const Index n = x.rows();
    detail::cuda::require_shape(x, n, in_features(), "x", where);
    detail::cuda::require_shape(z, n, out_features_, "z", where);
    detail::cuda::require_device_pointer(z.data(), "z", where);
    detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    if (n == 0) return;
    DeviceMatrixView<Scalar> y(static_cast<Scalar*>(workspace), n, in_features());
    rotation_.apply(x, y, stream);
    float one = 1.0f, zero = 0.0f;
    double one_d = 1.0, zero_d = 0.0;
    if (has_bias()) detail::cuda::broadcast_rows<Scalar>(bias_.data(), z.data(), z.ld(), n,
                                                        out_features_, stream);
    const bool accumulate = has_bias();
    bind(stream, where);
    // Column-major view: Z^T (n_out x N) = W0 (op T of the d x n_out matrix W0^T) * Y^T.
    detail::cuda::check(
        cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, to_int(out_features_), to_int(n),
                     to_int(in_features()), alpha(one, one_d), w0_.data(), data_type(),
                     to_int(in_features()), y.data(), data_type(), to_int(y.ld()),
                     accumulate ? alpha(one, one_d) : alpha(zero, zero_d), z.data(), data_type(),
                     to_int(z.ld()), compute_type(), CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx", where);
  }

  /// dX and dtheta from dZ (N x n_out). dx may be empty (skip); dtheta may be empty (skip).
  void backward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<const Scalar> dz,
                DeviceMatrixView<Scalar> dx, DeviceMatrixView<Parameter> dtheta, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) {
    const char* where = "OftLinear<cuda>::backward";
    const Index n = dz.rows();
    detail::cuda::require_shape(dz, n, out_features_, "dz", where);
    detail::cuda::require_shape(x, n, in_features(), "x", where);
    detail::cuda::require_device_pointer(dz.data(), "dz", where);
    detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    DeviceMatrixView<Scalar> dy(static_cast<Scalar*>(workspace), n, in_features());
    if (n > 0) {
      float one = 1.0f, zero = 0.0f;
      double one_d = 1.0, zero_d = 0.0;
      bind(stream, where);
      // Column-major view: dY^T (d x N) = W0^T (d x n_out) * dZ^T (n_out x N).
      detail::cuda::check(
          cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, to_int(in_features()), to_int(n),
                       to_int(out_features_), alpha(one, one_d), w0_.data(), data_type(),
                       to_int(in_features()), dz.data(), data_type(), to_int(dz.ld()),
                       alpha(zero, zero_d), dy.data(), data_type(), to_int(dy.ld()),
                       compute_type(), CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx", where);
    }
    char* rest = static_cast<char*>(workspace) + detail::cuda::align_up(activation_bytes(n));
    rotation_.backward(x, dy, dx, dtheta, rest, workspace_size - detail::cuda::align_up(activation_bytes(n)),
                       stream);
  }

  /// W' = W0 * R^T (n_out x d) into `merged`.
  void merge(DeviceMatrixView<Scalar> merged, cudaStream_t stream) const {
    const char* where = "OftLinear<cuda>::merge";
    detail::cuda::require_shape(merged, out_features_, in_features(), "merged", where);
    detail::cuda::require_disjoint(merged, weight(), "merged", "the layer's W0", where);
    detail::cuda::require_device_pointer(merged.data(), "merged", where);
    rotation_.apply_transposed(weight(), merged, stream);
  }

  /// W0 = W' * (R^T)^-1 into `w0_out` (exact inverse per block, so also correct for a truncated
  /// Neumann R that is only nearly orthogonal). Blocks made inactive by set_active_blocks are
  /// the identity, as in merge, so unmerge(merge(W0)) == W0 under a dropout mask too (their
  /// columns are copied). Throws std::domain_error("... cannot invert R: block i of r is
  /// singular"), the CPU unmerge's words, naming the first active block whose R is singular, with `w0_out` untouched:
  /// singular means a Gauss-Jordan pivot of magnitude at most b * eps * max|R_ij| (Eigen's
  /// default threshold of the CPU unmerge's FullPivLU::isInvertible, here with partial
  /// pivoting) or a non-finite pivot or inverse. Not a hot path: allocates the b x b inverses
  /// and synchronizes `stream` twice (the singularity flags are read before W0 is written).
  void unmerge(DeviceMatrixView<const Scalar> merged, DeviceMatrixView<Scalar> w0_out,
               cudaStream_t stream) const {
    const char* where = "OftLinear<cuda>::unmerge";
    detail::cuda::require_shape(merged, out_features_, in_features(), "merged", where);
    detail::cuda::require_shape(w0_out, out_features_, in_features(), "w0_out", where);
    detail::cuda::require_in_place_or_disjoint(w0_out, merged, "w0_out", "merged", where);
    detail::cuda::require_device_pointer(merged.data(), "merged", where);
    detail::cuda::require_device_pointer(w0_out.data(), "w0_out", where);
    const BlockSpec& spec = rotation_.spec();
    const Index area = spec.block_size * spec.block_size;
    DeviceBuffer<Parameter> inverses(static_cast<std::size_t>(spec.generators() * area));
    DeviceBuffer<int> singular(static_cast<std::size_t>(spec.generators()));
    detail::cuda::invert_transposed_blocks<Parameter>(rotation_.rotation_blocks(),
                                                     spec.generators(), spec.block_size,
                                                     inverses.data(), singular.data(), stream);
    require_active_blocks_invertible(singular, stream, where);
    const detail::cuda::BlockLayout layout{spec.blocks, spec.block_size, spec.shared,
                                          rotation_.active_blocks()};
    detail::cuda::apply_simt<Scalar, Parameter>(merged.data(), merged.ld(), w0_out.data(),
                                               w0_out.ld(), out_features_, layout,
                                               inverses.data(), false, stream);
    detail::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize", where);
  }

 private:
  std::size_t activation_bytes(Index tokens) const {
    return static_cast<std::size_t>(tokens * in_features()) * sizeof(Scalar);
  }
  /// Reads back the per-generator singularity flags of invert_transposed_blocks and the active
  /// mask (synchronizes `stream`) and throws std::domain_error for the first active block whose
  /// generator's R is singular, as the CPU unmerge does (it sees inactive blocks as I).
  void require_active_blocks_invertible(const DeviceBuffer<int>& singular, cudaStream_t stream,
                                        const char* where) const {
    const BlockSpec& spec = rotation_.spec();
    std::vector<int> flags(singular.size());
    std::vector<unsigned char> active(static_cast<std::size_t>(spec.blocks));
    detail::cuda::check(cudaMemcpyAsync(flags.data(), singular.data(), singular.bytes(),
                                       cudaMemcpyDeviceToHost, stream),
                       "cudaMemcpyAsync", where);
    detail::cuda::check(cudaMemcpyAsync(active.data(), rotation_.active_blocks(), active.size(),
                                       cudaMemcpyDeviceToHost, stream),
                       "cudaMemcpyAsync", where);
    detail::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize", where);
    for (Index i = 0; i < spec.blocks; ++i) {
      const bool is_active = active[static_cast<std::size_t>(i)] != 0;
      const bool is_singular = flags[static_cast<std::size_t>(spec.generator_of(i))] != 0;
      detail::require_domain(!(is_active && is_singular), where, ": cannot invert R: block ", i,
                             " of ", spec.blocks, " is singular");
    }
  }

  void bind(cudaStream_t stream, const char* where) {
    detail::cuda::check(cublasSetStream(handle_, stream), "cublasSetStream", where);
  }
  static int to_int(Index v) {
    detail::require(v <= 2147483647, "OftLinear<cuda>: dimension ", v,
                    " exceeds cuBLAS's 32-bit int");
    return static_cast<int>(v);
  }
  static const void* alpha(const float& f, const double& d) {
    if constexpr (std::is_same_v<Scalar, double>)
      return &d;
    else
      return &f;
  }
  static cudaDataType_t data_type() { return detail::cuda::cuda_data_type<Scalar>(); }
  static cublasComputeType_t compute_type() {
    return std::is_same_v<Scalar, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  }

  Rotation rotation_;
  Index out_features_;
  DeviceBuffer<Scalar> w0_;
  DeviceBuffer<Scalar> bias_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace oft

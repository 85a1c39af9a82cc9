#pragma once
/// \file cuda/block_orthogonal.hpp
/// BlockOrthogonal<T, Policy, cuda>: the block-diagonal orthogonal operator on the GPU, with the
/// conventions of the CPU operator (block_orthogonal.hpp, SPEC sections 2-3):
///
///   Y = X * R per block (X: N x d row-major), dX = dY * R^T, G_i = X_i^T dY_i,
///   dtheta from G through the policy's analytic VJP, packed as the generators are.
///
/// T is the activation type (float, double, __half, __nv_bfloat16); generators, rotation blocks
/// and gradients are cuda_parameter_t<T> (double for double, float otherwise). Policies:
/// CayleyNeumann{k} and ExactCayley. CayleyNeumannTolerance and MatrixExponential are CPU-only.
///
/// Streams, memory, synchronization:
/// - Construction queries the device (SM count, compute capability, shared memory), picks the
///   tensor-core or CUDA-core kernels, sets each kernel's shared-memory limit once
///   (launch.hpp), allocates the operator's state (a copy of theta, the rotation blocks, the
///   active mask and its pinned host staging buffer, and for 16-bit T the split blocks of the
///   tensor-core path), initializes it to the identity and synchronizes. Nothing else allocates
///   or synchronizes, except the explicitly named copies to the host (rotation_blocks_host) and
///   set_active_blocks(host vector), which waits only while its previous copy is still pending.
/// - Every other call takes a cudaStream_t and only enqueues work on it. Calls on one operator
///   must be ordered by the caller (one stream, or events): set_generators rewrites the blocks
///   that apply and backward read. Different operators on different streams are independent.
/// - backward needs a caller-owned device workspace of workspace_bytes(N) bytes.
/// - Errors: shapes, aliasing, host pointers -> std::invalid_argument before anything is
///   enqueued; a failing CUDA call -> oft::cuda_error naming the call. Theta values are not
///   checked (that would need a synchronization): non-finite theta gives non-finite R.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../index.hpp"
#include "../policies.hpp"
#include "device_view.hpp"
#include "error.hpp"
#include "kernels_apply.hpp"
#include "kernels_generators.hpp"
#include "kernels_tensor_core.hpp"
#include "launch.hpp"
#include "numeric.hpp"

namespace oft {

template <class Scalar_, class Parameterization_>
class BlockOrthogonal<Scalar_, Parameterization_, cuda> {
 public:
  using Scalar = Scalar_;                         ///< activation type
  using Parameter = cuda_parameter_t<Scalar>;     ///< theta, R, dtheta (float or double)
  using Parameterization = Parameterization_;
  static_assert(std::is_same_v<Parameterization, CayleyNeumann> ||
                    std::is_same_v<Parameterization, ExactCayley>,
                "oft::BlockOrthogonal<..., cuda> supports CayleyNeumann and ExactCayley; "
                "CayleyNeumannTolerance and MatrixExponential are CPU-only");

  /// Operator for `spec` on the current CUDA device, with identity blocks until set_generators.
  /// Throws std::invalid_argument for a bad spec or a block size whose kernels do not fit the
  /// device's shared memory (the message gives the limit), oft::cuda_error without a device.
  explicit BlockOrthogonal(const BlockSpec& spec, Parameterization parameterization = {})
      : spec_(checked(spec)),
        parameterization_(parameterization),
        device_(detail::cuda::query_device(kConstructor)),
        tensor_cores_(detail::cuda::use_tensor_core_path<Scalar>(
            spec.block_size, detail::cuda::tensor_core_environment<Scalar>(device_, kConstructor))),
        theta_(static_cast<std::size_t>(spec.generators() * spec.packed())),
        blocks_(static_cast<std::size_t>(spec.generators() * block_area())),
        active_(static_cast<std::size_t>(spec.blocks)),
        active_staging_(static_cast<std::size_t>(spec.blocks), kConstructor) {
    require_generator_kernels_fit();
    prepare_token_kernels();
    if (use_tensor_cores()) {
      blocks_hi_ = DeviceBuffer<Scalar>(blocks_.size());
      blocks_lo_ = DeviceBuffer<Scalar>(blocks_.size());
    }
    const char* where = kConstructor;
    if (theta_.size() > 0)
      detail::cuda::check(cudaMemsetAsync(theta_.data(), 0, theta_.bytes(), nullptr),
                         "cudaMemsetAsync", where);
    detail::cuda::check(cudaMemsetAsync(active_.data(), 1, active_.bytes(), nullptr),
                       "cudaMemsetAsync", where);
    rebuild(nullptr, where);
    detail::cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize", where);
  }

  const BlockSpec& spec() const { return spec_; }
  const Parameterization& parameterization() const { return parameterization_; }
  Index features() const { return spec_.features(); }
  PlanSummary plan(Index /*generator*/) const {
    return parameterization_.summary(typename Parameterization::Plan{});
  }
  /// True when apply and backward run on tensor cores: 16-bit T, b a multiple of 16 up to 64,
  /// and a device and compiled kernels with WMMA for T (sm_70+ for __half, sm_80+ for
  /// __nv_bfloat16; detail::cuda::use_tensor_core_path). Decided once, at construction.
  bool use_tensor_cores() const { return tensor_cores_; }

  /// theta (generators() x b(b-1)/2, device memory) -> R_i, enqueued on `stream`. theta is
  /// copied, so the caller may overwrite it once the stream has passed this call.
  void set_generators(DeviceMatrixView<const Parameter> theta, cudaStream_t stream) {
    const char* where = "BlockOrthogonal<cuda>::set_generators";
    detail::cuda::require_shape(theta, spec_.generators(), spec_.packed(), "theta", where);
    detail::cuda::require_device_pointer(theta.data(), "theta", where);
    if (!theta.empty()) {
      detail::cuda::check(
          cudaMemcpy2DAsync(theta_.data(), static_cast<std::size_t>(spec_.packed()) * sizeof(Parameter),
                            theta.data(), static_cast<std::size_t>(theta.ld()) * sizeof(Parameter),
                            static_cast<std::size_t>(spec_.packed()) * sizeof(Parameter),
                            static_cast<std::size_t>(theta.rows()), cudaMemcpyDeviceToDevice,
                            stream),
          "cudaMemcpy2DAsync", where);
    }
    rebuild(stream, where);
  }

  /// Blocks whose flag is 0 act as the identity (multiplicative dropout) in apply,
  /// apply_transposed, backward and the layer's merge and unmerge; an empty vector re-activates
  /// all. The host vector is copied into the operator's pinned staging buffer before the call
  /// returns (the caller may reuse it at once), and from there to the device asynchronously, in
  /// stream order. Cost: if the previous call's copy out of the staging buffer has not run yet
  /// (its stream is busy), this call waits for it (one event wait) before refilling the buffer;
  /// otherwise it does not block. Not for CUDA graph capture (the graph would re-read the
  /// staging buffer at every replay): use the device-pointer overload there.
  void set_active_blocks(const std::vector<unsigned char>& active, cudaStream_t stream) {
    const char* where = "BlockOrthogonal<cuda>::set_active_blocks";
    detail::require(active.empty() || static_cast<Index>(active.size()) == spec_.blocks, where,
                    ": active-block mask has ", active.size(), " entries, expected r=",
                    spec_.blocks);
    if (active.empty()) {
      activate_all(stream, where);
      return;
    }
    unsigned char* staging = active_staging_.acquire(where);
    std::copy(active.begin(), active.end(), staging);
    active_staging_.copy_to_device(active_.data(), active_.bytes(), stream, where);
  }

  /// The same from r flags in device memory (a device-to-device copy enqueued on `stream`; the
  /// caller keeps `active` unchanged until the stream has passed this call). Never blocks the
  /// host, and can be captured in a CUDA graph (the graph copies the flags at each replay).
  /// nullptr re-activates all blocks (so `set_active_blocks({}, stream)` does that with either
  /// overload).
  void set_active_blocks(const unsigned char* active, cudaStream_t stream) {
    const char* where = "BlockOrthogonal<cuda>::set_active_blocks";
    if (active == nullptr) {
      activate_all(stream, where);
      return;
    }
    detail::cuda::require_device_pointer(active, "active", where);
    detail::cuda::check(cudaMemcpyAsync(active_.data(), active, active_.bytes(),
                                       cudaMemcpyDeviceToDevice, stream),
                       "cudaMemcpyAsync", where);
  }

  /// Device pointer to the r active-block flags (set_active_blocks), valid for the operator's
  /// lifetime. OftLinear::unmerge reads it; so may fused user kernels.
  const unsigned char* active_blocks() const { return active_.data(); }

  /// Y = X * R (N x d). `y` may be the same view as `x` (in place); partial overlap is refused.
  void apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
             cudaStream_t stream) const {
    apply_impl(x, y, false, stream, "BlockOrthogonal<cuda>::apply");
  }

  /// Y = X * R^T: the inverse of apply when R is orthogonal.
  void apply_transposed(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                        cudaStream_t stream) const {
    apply_impl(x, y, true, stream, "BlockOrthogonal<cuda>::apply_transposed");
  }

  /// Bytes of device workspace that backward needs for `tokens` rows. Not 0 for tokens == 0:
  /// dtheta is then computed (as zero) through the same partial-sum slots.
  std::size_t workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "BlockOrthogonal<cuda>::workspace_bytes: negative token count ",
                    tokens);
    return detail::cuda::align_up(partials_bytes(tokens)) +
           detail::cuda::align_up(static_cast<std::size_t>(spec_.generators() * block_area()) *
                                 sizeof(Parameter));
  }

  /// Vector-Jacobian product of Y = X * R(theta): dX = dY * R^T and dtheta = dL/dtheta
  /// (generators() x b(b-1)/2, overwritten, not accumulated). Pass an empty view to skip either
  /// output. dX may be the same view as dY or as X (in place). `workspace` is device memory of
  /// at least workspace_bytes(N) bytes, 256-byte aligned (cudaMalloc gives that).
  void backward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<const Scalar> dy,
                DeviceMatrixView<Scalar> dx, DeviceMatrixView<Parameter> dtheta, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "BlockOrthogonal<cuda>::backward";
    const Index n = dy.rows(), d = features();
    const bool want_dtheta = !dtheta.empty();
    detail::cuda::require_shape(dy, n, d, "dy", where);
    if (want_dtheta) {
      detail::cuda::require_shape(x, n, d, "x", where);
      detail::cuda::require_shape(dtheta, spec_.generators(), spec_.packed(), "dtheta", where);
      detail::cuda::require_device_pointer(x.data(), "x", where);
      detail::cuda::require_device_pointer(dtheta.data(), "dtheta", where);
      detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    }
    if (!dx.empty()) {
      detail::cuda::require_shape(dx, n, d, "dx", where);
      detail::cuda::require_device_pointer(dx.data(), "dx", where);
      detail::cuda::require_in_place_or_disjoint(dx, dy, "dx", "dy", where);
      if (want_dtheta) detail::cuda::require_in_place_or_disjoint(dx, x, "dx", "x", where);
    }
    detail::cuda::require_device_pointer(dy.data(), "dy", where);
    if (n == 0 && !want_dtheta) return;

    Parameter* partials = nullptr;
    Parameter* grads = nullptr;
    const Index chunks = want_dtheta ? gradient_chunks(n) : 0;
    if (want_dtheta) {
      partials = static_cast<Parameter*>(workspace);
      grads = reinterpret_cast<Parameter*>(static_cast<char*>(workspace) +
                                           detail::cuda::align_up(partials_bytes(n)));
    }
    Scalar* dx_data = dx.empty() ? nullptr : dx.data();
    const auto layout = this->layout();
    bool done = false;
    if constexpr (is_half_precision_v<Scalar>) {
      if (use_tensor_cores()) {
        detail::cuda::backward_tensor_core<Scalar>(x.data(), x.ld(), dy.data(), dy.ld(), dx_data,
                                                  dx.ld(), n, layout, blocks_hi_.data(),
                                                  blocks_lo_.data(), partials, chunks, stream);
        done = true;
      }
    }
    if (!done) {
      detail::cuda::backward_simt<Scalar, Parameter>(x.data(), x.ld(), dy.data(), dy.ld(), dx_data,
                                                    dx.ld(), n, layout, blocks_.data(), partials,
                                                    chunks, stream);
    }
    if (want_dtheta) {
      detail::cuda::reduce_block_gradients<Parameter>(partials, chunks, layout, grads, stream);
      detail::cuda::rotation_vjp<Parameter>(theta_.data(), spec_.packed(), spec_.generators(),
                                           spec_.block_size, terms(), blocks_.data(), grads,
                                           dtheta.data(), dtheta.ld(), stream);
    }
  }

  /// Device pointer to the rotation blocks: generators() matrices of b x b, row-major, R_g at
  /// offset g*b*b. Valid for the operator's lifetime; rewritten by set_generators.
  const Parameter* rotation_blocks() const { return blocks_.data(); }

  /// Copies the rotation blocks to the host (as rotation_blocks() lays them out) and
  /// synchronizes `stream`. For tests and reports, not for hot paths.
  std::vector<Parameter> rotation_blocks_host(cudaStream_t stream) const {
    std::vector<Parameter> out(blocks_.size());
    const char* where = "BlockOrthogonal<cuda>::rotation_blocks_host";
    detail::cuda::check(cudaMemcpyAsync(out.data(), blocks_.data(), blocks_.bytes(),
                                       cudaMemcpyDeviceToHost, stream),
                       "cudaMemcpyAsync", where);
    detail::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize", where);
    return out;
  }

  /// Number of token chunks whose partial G sums backward reduces (a function of N, r and the
  /// device's SM count; exposed for tests and benchmarks).
  Index gradient_chunks(Index tokens) const {
    return detail::cuda::gradient_chunks(tokens, spec_.blocks, device_.multiprocessors,
                                        use_tensor_cores());
  }

 private:
  static constexpr const char* kConstructor = "BlockOrthogonal<cuda> constructor";

  static const BlockSpec& checked(const BlockSpec& spec) {
    spec.validate();
    return spec;
  }

  /// The generator kernels keep every b x b matrix in shared memory; the VJP needs the most.
  void require_generator_kernels_fit() const {
    const std::size_t need =
        detail::cuda::generator_shared_bytes<Parameter>(spec_.block_size, exact());
    const std::size_t limit =
        detail::cuda::dynamic_shared_limit(detail::cuda::rotation_vjp_kernel<Parameter>, kConstructor);
    detail::require(need <= limit, "BlockOrthogonal<cuda>: block size b=", spec_.block_size,
                    " needs ", need, " bytes of shared memory per thread block for the ",
                    Parameterization::name, " kernels; this GPU allows ", limit,
                    " (largest supported b: ",
                    detail::cuda::largest_block_size<Parameter>(exact(), limit), ")");
  }

  /// Sets the shared-memory limits of the CUDA-core token kernels now (the tensor-core ones
  /// were set by tensor_core_environment), so that no later call does it for the first time,
  /// e.g. inside a CUDA graph capture.
  void prepare_token_kernels() const {
    (void)detail::cuda::dynamic_shared_limit(detail::cuda::apply_simt_kernel<Scalar, Parameter>,
                                            kConstructor);
    (void)detail::cuda::dynamic_shared_limit(detail::cuda::backward_simt_kernel<Scalar, Parameter>,
                                            kConstructor);
    (void)detail::cuda::dynamic_shared_limit(detail::cuda::build_rotations_kernel<Parameter>,
                                            kConstructor);
  }

  void activate_all(cudaStream_t stream, const char* where) {
    detail::cuda::check(cudaMemsetAsync(active_.data(), 1, active_.bytes(), stream),
                       "cudaMemsetAsync", where);
  }
  Index block_area() const { return spec_.block_size * spec_.block_size; }
  bool exact() const { return std::is_same_v<Parameterization, ExactCayley>; }
  int terms() const {
    if constexpr (std::is_same_v<Parameterization, CayleyNeumann>)
      return parameterization_.terms;
    else
      return -1;  // exact Cayley
  }
  detail::cuda::BlockLayout layout() const {
    return detail::cuda::BlockLayout{spec_.blocks, spec_.block_size, spec_.shared, active_.data()};
  }
  std::size_t partials_bytes(Index tokens) const {
    return static_cast<std::size_t>(gradient_chunks(tokens) * spec_.blocks * block_area()) *
           sizeof(Parameter);
  }

  void rebuild(cudaStream_t stream, const char* where) {
    detail::cuda::build_rotations<Parameter>(theta_.data(), spec_.packed(), spec_.generators(),
                                            spec_.block_size, terms(), blocks_.data(), stream,
                                            where);
    if constexpr (is_half_precision_v<Scalar>) {
      if (use_tensor_cores())
        detail::cuda::split_blocks<Scalar>(blocks_.data(), static_cast<Index>(blocks_.size()),
                                          blocks_hi_.data(), blocks_lo_.data(), stream);
    }
  }

  void apply_impl(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y, bool transpose,
                  cudaStream_t stream, const char* where) const {
    detail::cuda::require_shape(x, x.rows(), features(), "x", where);
    detail::cuda::require_shape(y, x.rows(), features(), "y", where);
    detail::cuda::require_in_place_or_disjoint(y, x, "y", "x", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_device_pointer(y.data(), "y", where);
    if (x.rows() == 0) return;
    if constexpr (is_half_precision_v<Scalar>) {
      if (use_tensor_cores()) {
        detail::cuda::apply_tensor_core<Scalar>(x.data(), x.ld(), y.data(), y.ld(), x.rows(),
                                               layout(), blocks_hi_.data(), blocks_lo_.data(),
                                               transpose, stream);
        return;
      }
    }
    detail::cuda::apply_simt<Scalar, Parameter>(x.data(), x.ld(), y.data(), y.ld(), x.rows(),
                                               layout(), blocks_.data(), transpose, stream);
  }

  BlockSpec spec_;
  Parameterization parameterization_;
  detail::cuda::DeviceInfo device_;
  bool tensor_cores_ = false;       ///< apply and backward on tensor cores (use_tensor_cores)
  DeviceBuffer<Parameter> theta_;   ///< generators() x m, packed, contiguous
  DeviceBuffer<Parameter> blocks_;  ///< generators() x b x b, row-major R_g
  DeviceBuffer<Scalar> blocks_hi_;  ///< 16-bit T: R rounded to T (tensor-core path)
  DeviceBuffer<Scalar> blocks_lo_;  ///< 16-bit T: R - hi rounded to T
  DeviceBuffer<unsigned char> active_;            ///< r flags, 0: block acts as the identity
  detail::cuda::HostStaging active_staging_;       ///< pinned source of set_active_blocks(vector)
};

}  // namespace oft

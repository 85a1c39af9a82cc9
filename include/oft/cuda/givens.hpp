#pragma once
/// \file cuda/givens.hpp
/// Givens<T, cuda>: the GOFT operator (givens.hpp) on the GPU, with the CPU operator's
/// conventions: X R = X P_L ... P_1 (stage L first), each pair (i, j) with angle t turning a row
/// as x_i' = x_i cos t + x_j sin t, x_j' = -x_i sin t + x_j cos t.
///
/// How it runs: one thread block per row at a time (grid-stride over rows). The row is held in
/// shared memory in the parameter type P (float, or double for double activations); a stage's
/// pairs are disjoint, so the block's threads turn them side by side, with one barrier per stage.
/// A 16-bit row is widened on load and rounded once on store, as on the CPU.
///
/// backward recomputes each row's output in shared memory, then walks the stages back (stage 1
/// first), each pair giving dt += g_i y_j - g_j y_i and recovering its input by the inverse turn
/// (the CPU operator's recurrence). Each thread block sums the angle gradients of its rows into
/// its own slot of the workspace, and thread k of a block always owns the same angles, so there
/// are no atomics; a second kernel adds the slots in block order. The result is deterministic
/// for a given device and N.
///
/// Streams and memory as for BlockOrthogonal<T, cuda>: the constructor allocates and
/// synchronizes; set_angles (device overload), apply, apply_transposed and backward only enqueue
/// work on the caller's stream; backward needs workspace_bytes(N) bytes of caller-owned device
/// memory. Shapes and pointers are checked before anything is enqueued (std::invalid_argument).

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../errors.hpp"
#include "../givens_spec.hpp"
#include "../index.hpp"
#include "device_view.hpp"
#include "error.hpp"
#include "launch.hpp"
#include "numeric.hpp"
#include "workspace.hpp"

namespace oft {
namespace detail::cuda {

/// Threads per block of the Givens kernels: a stage of d/2 pairs is turned 256 at a time.
inline constexpr int kGivensThreads = 256;

/// One pair of a stage: features `first` < `second`, and the pair's index among all angles.
struct GivensPair {
  int first;
  int second;
};

/// Turns the shared row `v` through stages [begin, end) in the given direction: forward
/// (stage L first, the apply) or inverse (stage 1 first, the inverse turns).
template <class P>
__device__ __forceinline__ void givens_turn_row(P* v, const GivensPair* pairs, const int* offsets,
                                                int stages, const P* cosines, const P* sines,
                                                bool inverse) {
  for (int step = 0; step < stages; ++step) {
    const int s = inverse ? step : stages - 1 - step;
    for (int k = offsets[s] + static_cast<int>(threadIdx.x); k < offsets[s + 1]; k += blockDim.x) {
      const GivensPair pair = pairs[k];
      const P c = cosines[k], sn = sines[k];
      const P a = v[pair.first], b = v[pair.second];
      if (inverse) {
        v[pair.first] = a * c - b * sn;
        v[pair.second] = a * sn + b * c;
      } else {
        v[pair.first] = a * c + b * sn;
        v[pair.second] = -a * sn + b * c;
      }
    }
    __syncthreads();
  }
}

/// Y = X R (or X R^T when `inverse`), one row per thread block at a time; y may be x.
template <class T, class P>
__global__ void givens_rows_kernel(const T* x, Index ldx, T* y, Index ldy, Index rows, int d,
                                   const GivensPair* pairs, const int* offsets, int stages,
                                   const P* cosines, const P* sines, bool inverse) {
  P* v = reinterpret_cast<P*>(dynamic_shared_memory());
  for (Index n = blockIdx.x; n < rows; n += gridDim.x) {
    for (int f = threadIdx.x; f < d; f += blockDim.x) v[f] = to_accumulator<P>(x[n * ldx + f]);
    __syncthreads();
    givens_turn_row(v, pairs, offsets, stages, cosines, sines, inverse);
    for (int f = threadIdx.x; f < d; f += blockDim.x) y[n * ldy + f] = from_accumulator<T>(v[f]);
    __syncthreads();  // the next row's load must not overwrite values still being stored
  }
}

/// backward: each block's angle gradients into partial[blockIdx.x * angles + k] (zeroed before),
/// and dX = dY R^T when dx is not null. dx may be x or dy (a row is read whole before it is
/// written).
template <class T, class P>
__global__ void givens_backward_kernel(const T* x, Index ldx, const T* dy, Index lddy, T* dx,
                                       Index lddx, Index rows, int d, const GivensPair* pairs,
                                       const int* offsets, int stages, const P* cosines,
                                       const P* sines, P* partial, int angles) {
  P* y = reinterpret_cast<P*>(dynamic_shared_memory());
  P* g = y + d;
  P* mine = partial + static_cast<Index>(blockIdx.x) * angles;
  for (Index n = blockIdx.x; n < rows; n += gridDim.x) {
    for (int f = threadIdx.x; f < d; f += blockDim.x) {
      y[f] = to_accumulator<P>(x[n * ldx + f]);
      g[f] = to_accumulator<P>(dy[n * lddy + f]);
    }
    __syncthreads();
    givens_turn_row(y, pairs, offsets, stages, cosines, sines, /*inverse=*/false);
    for (int s = 0; s < stages; ++s) {
      for (int k = offsets[s] + static_cast<int>(threadIdx.x); k < offsets[s + 1];
           k += blockDim.x) {
        const GivensPair pair = pairs[k];
        const P c = cosines[k], sn = sines[k];
        const P yi = y[pair.first], yj = y[pair.second], gi = g[pair.first], gj = g[pair.second];
        mine[k] += gi * yj - gj * yi;  // only this thread of this block touches angle k here
        y[pair.first] = yi * c - yj * sn;
        y[pair.second] = yi * sn + yj * c;
        g[pair.first] = gi * c - gj * sn;
        g[pair.second] = gi * sn + gj * c;
      }
      __syncthreads();
    }
    if (dx != nullptr)
      for (int f = threadIdx.x; f < d; f += blockDim.x)
        dx[n * lddx + f] = from_accumulator<T>(g[f]);
    __syncthreads();
  }
}

/// dangles[k] = sum over blocks b (in order) of partial[b * angles + k].
template <class P>
__global__ void givens_sum_partials_kernel(const P* partial, int blocks, int angles, P* dangles) {
  const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k >= angles) return;
  P sum = 0;
  for (int b = 0; b < blocks; ++b) sum += partial[static_cast<Index>(b) * angles + k];
  dangles[k] = sum;
}

/// cos and sin of every angle.
template <class P>
__global__ void givens_trig_kernel(const P* angles, int count, P* cosines, P* sines) {
  const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k >= count) return;
  cosines[k] = cos(angles[k]);
  sines[k] = sin(angles[k]);
}

}  // namespace detail::cuda

template <class Scalar_>
class Givens<Scalar_, cuda> {
 public:
  using Scalar = Scalar_;                      ///< activation type
  using Parameter = cuda_parameter_t<Scalar>;  ///< angles, their gradients, the row arithmetic

  /// R = I (all angles 0) on the current device. Throws std::invalid_argument when a row of d
  /// features (two rows for backward) does not fit the device's shared memory.
  explicit Givens(GivensSpec spec)
      : spec_(std::move(spec)),
        device_(detail::cuda::query_device(kConstructor)),
        pairs_(static_cast<std::size_t>(spec_.angles())),
        offsets_(spec_.stages().size() + 1),
        angles_(static_cast<std::size_t>(spec_.angles())),
        cosines_(static_cast<std::size_t>(spec_.angles())),
        sines_(static_cast<std::size_t>(spec_.angles())) {
    detail::require(spec_.features() <= kMaxFeatures, kConstructor, ": d=", spec_.features(),
                    " features exceed the kernels' int indexing (at most ", kMaxFeatures, ")");
    std::vector<detail::cuda::GivensPair> pairs;
    std::vector<int> offsets{0};
    for (const auto& stage : spec_.stages()) {
      for (const auto& pair : stage)
        pairs.push_back({static_cast<int>(pair.first), static_cast<int>(pair.second)});
      offsets.push_back(static_cast<int>(pairs.size()));
    }
    const std::vector<Parameter> zeros(angles_.size(), Parameter(0)),
        ones(angles_.size(), Parameter(1));
    upload(pairs_, pairs);
    upload(offsets_, offsets);
    upload(angles_, zeros);
    upload(cosines_, ones);
    upload(sines_, zeros);
  }

  const GivensSpec& spec() const { return spec_; }
  Index features() const { return spec_.features(); }
  int stages() const { return static_cast<int>(spec_.stages().size()); }

  /// The spec().angles() angles (device memory, stage-major, raw angles as the CPU operator
  /// takes them), copied and turned into cosines and sines on `stream`. Not checked for
  /// finiteness (that would need a synchronization): a non-finite angle gives non-finite rows.
  void set_angles(const Parameter* angles, cudaStream_t stream) {
    const char* where = "Givens<cuda>::set_angles";
    detail::require(angles != nullptr || spec_.angles() == 0, where, ": null angles");
    detail::cuda::require_device_pointer(angles, "angles", where);
    const int count = static_cast<int>(spec_.angles());
    if (count == 0) return;
    detail::cuda::check(
        cudaMemcpyAsync(angles_.data(), angles, angles_.bytes(), cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync", where);
    refresh_trig(stream, where);
  }

  /// The same from host memory: checks count and finiteness first (std::invalid_argument,
  /// std::domain_error naming the angle), then a synchronous copy (for setup, not a hot loop).
  void set_angles(const std::vector<Parameter>& angles) {
    const char* where = "Givens<cuda>::set_angles";
    detail::require(static_cast<Index>(angles.size()) == spec_.angles(), where, ": ", angles.size(),
                    " angles, expected ", spec_.angles(), " for d=", spec_.features());
    for (std::size_t k = 0; k < angles.size(); ++k)
      detail::require_domain(std::isfinite(static_cast<double>(angles[k])), where, ": angle ", k,
                             " is not finite (", angles[k], ")");
    if (angles.empty()) return;
    detail::cuda::check(
        cudaMemcpy(angles_.data(), angles.data(), angles_.bytes(), cudaMemcpyHostToDevice),
        "cudaMemcpy", where);
    refresh_trig(nullptr, where);
    detail::cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize", where);
  }

  /// Device pointer to the current angles (spec().angles() values).
  const Parameter* angles() const { return angles_.data(); }

  /// Y = X R (N x d). `y` may be the same view as `x`; partial overlap is refused.
  void apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
             cudaStream_t stream) const {
    turn_rows(x, y, /*inverse=*/false, stream, "Givens<cuda>::apply");
  }

  /// Y = X R^T: the inverse of apply; W0 R^T, the merged weight, on W0's rows.
  void apply_transposed(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                        cudaStream_t stream) const {
    turn_rows(x, y, /*inverse=*/true, stream, "Givens<cuda>::apply_transposed");
  }

  /// Bytes of device workspace backward needs for `tokens` rows: one angle gradient per thread
  /// block of the backward grid.
  std::size_t workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "Givens<cuda>::workspace_bytes: negative token count ", tokens);
    return detail::cuda::align_up(static_cast<std::size_t>(backward_blocks(tokens)) *
                                  static_cast<std::size_t>(spec_.angles()) * sizeof(Parameter));
  }

  /// Vector-Jacobian product of Y = X R(angles): dX = dY R^T and dangles (device memory,
  /// spec().angles() values, overwritten). Pass an empty dx view or a null dangles to skip
  /// either. dX may be the same view as dY or as X.
  void backward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<const Scalar> dy,
                DeviceMatrixView<Scalar> dx, Parameter* dangles, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "Givens<cuda>::backward";
    const Index n = dy.rows(), d = features();
    detail::cuda::require_shape(dy, n, d, "dy", where);
    detail::cuda::require_device_pointer(dy.data(), "dy", where);
    const bool want_dx = !dx.empty();
    if (want_dx) {
      detail::cuda::require_shape(dx, n, d, "dx", where);
      detail::cuda::require_device_pointer(dx.data(), "dx", where);
      detail::cuda::require_in_place_or_disjoint(dx, dy, "dx", "dy", where);
    }
    if (dangles == nullptr) {
      if (want_dx) apply_transposed(dy, dx, stream);
      return;
    }
    detail::cuda::require_shape(x, n, d, "x", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_device_pointer(dangles, "dangles", where);
    if (want_dx) detail::cuda::require_in_place_or_disjoint(dx, x, "dx", "x", where);
    detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    const int count = static_cast<int>(spec_.angles());
    if (count == 0) {
      if (want_dx && !detail::cuda::same_memory(dx, dy)) apply_transposed(dy, dx, stream);
      return;
    }
    const auto kernel = detail::cuda::givens_backward_kernel<Scalar, Parameter>;
    const std::size_t shared = 2 * static_cast<std::size_t>(d) * sizeof(Parameter);
    if (n > 0) require_row_fits(kernel, shared, "givens_backward_kernel", where);
    const int blocks = backward_blocks(n);
    auto* partial = static_cast<Parameter*>(workspace);
    detail::cuda::check(cudaMemsetAsync(partial, 0,
                                        static_cast<std::size_t>(blocks) *
                                            static_cast<std::size_t>(count) * sizeof(Parameter),
                                        stream),
                        "cudaMemsetAsync", where);
    if (n > 0) {
      kernel<<<static_cast<unsigned>(blocks), detail::cuda::kGivensThreads, shared, stream>>>(
          x.data(), x.ld(), dy.data(), dy.ld(), want_dx ? dx.data() : nullptr,
          want_dx ? dx.ld() : 0, n, static_cast<int>(d), pairs_.data(), offsets_.data(), stages(),
          cosines_.data(), sines_.data(), partial, count);
      detail::cuda::check_launch("givens_backward_kernel", where);
    }
    detail::cuda::givens_sum_partials_kernel<Parameter>
        <<<blocks_for(count), detail::cuda::kGivensThreads, 0, stream>>>(partial, blocks, count,
                                                                         dangles);
    detail::cuda::check_launch("givens_sum_partials_kernel", where);
  }

 private:
  static constexpr const char* kConstructor = "Givens<cuda>::Givens";
  static constexpr Index kMaxFeatures = Index{1} << 30;

  template <class E>
  static void upload(DeviceBuffer<E>& buffer, const std::vector<E>& host) {
    if (host.empty()) return;
    detail::cuda::check(
        cudaMemcpy(buffer.data(), host.data(), buffer.bytes(), cudaMemcpyHostToDevice),
        "cudaMemcpy", kConstructor);
  }

  /// cosines_ and sines_ from angles_, on `stream`.
  void refresh_trig(cudaStream_t stream, const char* where) {
    const int count = static_cast<int>(spec_.angles());
    detail::cuda::givens_trig_kernel<Parameter>
        <<<blocks_for(count), detail::cuda::kGivensThreads, 0, stream>>>(
            angles_.data(), count, cosines_.data(), sines_.data());
    detail::cuda::check_launch("givens_trig_kernel", where);
  }

  /// Throws std::invalid_argument unless `kernel` may use `bytes` of shared memory: one row
  /// (two for backward) of d values in the parameter type.
  template <class Kernel>
  void require_row_fits(Kernel kernel, std::size_t bytes, const char* kernel_name,
                        const char* where) const {
    const std::size_t limit = detail::cuda::dynamic_shared_limit(kernel, where);
    detail::require(bytes <= limit, where, ": d=", spec_.features(), " needs ", bytes,
                    " bytes of shared memory per thread block in ", kernel_name, " (the rows in ",
                    sizeof(Parameter) * 8, "-bit arithmetic); this GPU allows ", limit);
  }

  static unsigned blocks_for(int count) {
    return static_cast<unsigned>((count + detail::cuda::kGivensThreads - 1) /
                                 detail::cuda::kGivensThreads);
  }

  /// Thread blocks of the apply grid: one per row, up to 8 per multiprocessor.
  unsigned apply_blocks(Index rows) const {
    return static_cast<unsigned>(
        std::max<Index>(1, std::min<Index>(rows, 8 * device_.multiprocessors)));
  }

  /// Thread blocks of the backward grid (each owns angles() partial sums): up to 2 per
  /// multiprocessor, so that the workspace stays a few MB even for the full butterfly layout.
  int backward_blocks(Index rows) const {
    return static_cast<int>(std::max<Index>(1, std::min<Index>(rows, 2 * device_.multiprocessors)));
  }

  void turn_rows(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y, bool inverse,
                 cudaStream_t stream, const char* where) const {
    const Index n = x.rows(), d = features();
    detail::require(x.cols() == d, where, ": X has ", x.cols(), " columns, expected d=", d, " (",
                    spec_.angles(), " Givens angles)");
    detail::cuda::require_shape(y, n, d, "y", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_device_pointer(y.data(), "y", where);
    detail::cuda::require_in_place_or_disjoint(y, x, "y", "x", where);
    if (n == 0 || d == 0) return;
    const auto kernel = detail::cuda::givens_rows_kernel<Scalar, Parameter>;
    const std::size_t shared = static_cast<std::size_t>(d) * sizeof(Parameter);
    require_row_fits(kernel, shared, "givens_rows_kernel", where);
    kernel<<<apply_blocks(n), detail::cuda::kGivensThreads, shared, stream>>>(
        x.data(), x.ld(), y.data(), y.ld(), n, static_cast<int>(d), pairs_.data(), offsets_.data(),
        stages(), cosines_.data(), sines_.data(), inverse);
    detail::cuda::check_launch("givens_rows_kernel", where);
  }

  GivensSpec spec_;
  detail::cuda::DeviceInfo device_;
  DeviceBuffer<detail::cuda::GivensPair> pairs_;  // stage-major, as the angles
  DeviceBuffer<int> offsets_;                     // stage s's pairs: [offsets_[s], offsets_[s+1])
  DeviceBuffer<Parameter> angles_, cosines_, sines_;
};

}  // namespace oft

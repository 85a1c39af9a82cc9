#pragma once
/// \file cuda/householder.hpp
/// Householder<T, cuda>: the HRA operator (householder.hpp) on the GPU, with the CPU operator's
/// conventions and compact WY form: from U (d x r, PEFT's hra_u, row-major) the unit vectors
/// Q (d x r) and the upper triangular T (r x r; T = 2 I with Gram-Schmidt), and
///
///     X R = X - ((X Q) T^T) Q^T,        X R^T = X - ((X Q) T) Q^T      (reflection r-1 first)
///
/// The activation side is three cuBLAS products per call (two thin ones over N rows and an
/// r x r one), never forming R. backward computes A = X Q and C = dY Q once, then dQ =
/// -X^T (C T) - dY^T (A T^T), dT = -C^T A (without Gram-Schmidt) and dX = dY - (C T) Q^T, also
/// with cuBLAS; the parameter side (U -> Q, T and dQ, dT -> dU: normalization, the larft
/// recurrence or modified Gram-Schmidt, O(d r^2)) runs in one thread block, sequentially over
/// the reflections, with deterministic block reductions.
///
/// T is float or double (cuBLAS SGEMM / DGEMM without TF32): 16-bit activations are not taken,
/// because the final product accumulates into Y in T.
///
/// Streams and memory as for BlockOrthogonal<T, cuda>: the constructor allocates, creates a
/// cuBLAS handle and synchronizes; set_vectors (device overload), apply, apply_transposed and
/// backward only enqueue work on the caller's stream, and need the caller-owned workspaces
/// apply_workspace_bytes(N) and workspace_bytes(N). Calls on one operator must be ordered by the
/// caller (they share its cuBLAS handle). Shapes and pointers are checked before anything is
/// enqueued (std::invalid_argument); the device overload of set_vectors cannot check U's values
/// (that would need a synchronization): a zero column gives non-finite rows.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../errors.hpp"
#include "../index.hpp"
#include "device_view.hpp"
#include "error.hpp"
#include "launch.hpp"
#include "workspace.hpp"

namespace oft {
namespace detail::cuda {

/// Threads of the one-block parameter kernels (a power of two, for the tree reduction).
inline constexpr int kHouseholderThreads = 512;

/// The sum of every thread's `value`, in a fixed order (deterministic), returned to all threads.
/// `scratch` is kHouseholderThreads values of shared memory; all threads must call it.
template <class P>
__device__ P householder_block_sum(P value, P* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int half = kHouseholderThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const P total = scratch[0];
  __syncthreads();  // before the next call overwrites scratch[0]
  return total;
}

/// a . b over d entries, each thread its own strided entries.
template <class P>
__device__ P householder_dot(const P* a, const P* b, int d, P* scratch) {
  P part = 0;
  for (int p = threadIdx.x; p < d; p += kHouseholderThreads) part += a[p] * b[p];
  return householder_block_sum(part, scratch);
}

/// U (d x r, row-major, ld) -> Q (column-major, ld d), T (row-major r x r), the norms and,
/// with Gram-Schmidt, the projection coefficients (row-major r x r, entry (j, i)).
/// One thread block of kHouseholderThreads; dynamic shared memory: r values (the overlaps).
template <class P>
__global__ void householder_setup_kernel(const P* u, Index ldu, int d, int r, bool gram_schmidt,
                                         P* q, P* t, P* norms, P* coefficients) {
  __shared__ P scratch[kHouseholderThreads];
  P* overlap = reinterpret_cast<P*>(dynamic_shared_memory());
  for (int i = 0; i < r; ++i) {
    P* v = q + static_cast<Index>(i) * d;
    for (int p = threadIdx.x; p < d; p += kHouseholderThreads)
      v[p] = u[static_cast<Index>(p) * ldu + i];
    if (gram_schmidt) {  // modified Gram-Schmidt: each projection on the updated v, as PEFT
      for (int j = 0; j < i; ++j) {
        const P* qj = q + static_cast<Index>(j) * d;
        const P c = householder_dot(qj, v, d, scratch);
        if (threadIdx.x == 0) coefficients[j * r + i] = c;
        for (int p = threadIdx.x; p < d; p += kHouseholderThreads) v[p] -= c * qj[p];
      }
    }
    const P norm = sqrt(householder_dot(v, v, d, scratch));
    if (threadIdx.x == 0) norms[i] = norm;
    for (int p = threadIdx.x; p < d; p += kHouseholderThreads) v[p] /= norm;
  }
  for (int e = threadIdx.x; e < r * r; e += kHouseholderThreads) t[e] = 0;
  __syncthreads();
  for (int i = 0; i < r; ++i) {
    if (threadIdx.x == 0) t[i * r + i] = 2;
    if (gram_schmidt) continue;  // R_H = I - 2 Q Q^T
    // larft, forward, tau = 2: T(0:i, i) = -2 T(0:i, 0:i) Q(:, 0:i)^T q_i.
    const P* qi = q + static_cast<Index>(i) * d;
    for (int j = 0; j < i; ++j) {
      const P dot = householder_dot(q + static_cast<Index>(j) * d, qi, d, scratch);
      if (threadIdx.x == 0) overlap[j] = dot;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < i; j += kHouseholderThreads) {
      P sum = 0;
      for (int k = j; k < i; ++k) sum += t[j * r + k] * overlap[k];
      t[j * r + i] = -2 * sum;
    }
    __syncthreads();
  }
}

/// dQ (column-major d x r, in place) and dT (row-major r x r, without Gram-Schmidt) -> dU
/// (row-major, ld): the path through T (dK = -T^T triu(dT) T^T, dQ += Q (S + S^T) with S its
/// strict upper part), then back through the normalization and, with Gram-Schmidt, the pass in
/// reverse. `m` is r x r of scratch, `dv` and `v` d values each. One thread block.
template <class P>
__global__ void householder_vector_gradient_kernel(P* dq, P* dt, P* m, const P* q, const P* t,
                                                   const P* norms, const P* coefficients, int d,
                                                   int r, bool gram_schmidt, P* dv, P* v, P* du,
                                                   Index lddu) {
  __shared__ P scratch[kHouseholderThreads];
  if (!gram_schmidt) {
    for (int e = threadIdx.x; e < r * r; e += kHouseholderThreads) {  // M = triu(dT) T^T
      const int i = e / r, j = e % r;
      P sum = 0;
      for (int k = i; k < r; ++k) sum += dt[i * r + k] * t[j * r + k];
      m[e] = sum;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < r * r; e += kHouseholderThreads) {  // dK = -T^T M, into dt
      const int i = e / r, j = e % r;
      P sum = 0;
      for (int k = 0; k <= i; ++k) sum += t[k * r + i] * m[k * r + j];
      dt[e] = -sum;
    }
    __syncthreads();
    for (Index e = threadIdx.x; e < static_cast<Index>(d) * r; e += kHouseholderThreads) {
      const int i = static_cast<int>(e / d), p = static_cast<int>(e % d);
      P sum = 0;
      for (int j = 0; j < r; ++j) {
        if (j == i) continue;
        const P s = j < i ? dt[j * r + i] : dt[i * r + j];  // (S + S^T)(j, i)
        sum += q[static_cast<Index>(j) * d + p] * s;
      }
      dq[e] += sum;
    }
    __syncthreads();
  }
  for (int i = r - 1; i >= 0; --i) {
    const P* qi = q + static_cast<Index>(i) * d;
    P* dqi = dq + static_cast<Index>(i) * d;
    const P norm = norms[i];
    const P along_q = householder_dot(qi, dqi, d, scratch);
    for (int p = threadIdx.x; p < d; p += kHouseholderThreads)
      dv[p] = (dqi[p] - qi[p] * along_q) / norm;
    if (gram_schmidt) {
      // v_{j+1} = v_j - (q_j . v_j) q_j for j = i-1 .. 0, walked back from v_i = ||v_i|| q_i.
      for (int p = threadIdx.x; p < d; p += kHouseholderThreads) v[p] = norm * qi[p];
      for (int j = i - 1; j >= 0; --j) {
        const P* qj = q + static_cast<Index>(j) * d;
        P* dqj = dq + static_cast<Index>(j) * d;
        const P c = coefficients[j * r + i];
        for (int p = threadIdx.x; p < d; p += kHouseholderThreads) v[p] += c * qj[p];
        const P along = householder_dot(qj, dv, d, scratch);
        for (int p = threadIdx.x; p < d; p += kHouseholderThreads) {
          dqj[p] -= c * dv[p] + along * v[p];
          dv[p] -= along * qj[p];
        }
      }
    }
    for (int p = threadIdx.x; p < d; p += kHouseholderThreads)
      du[static_cast<Index>(p) * lddu + i] = dv[p];
    __syncthreads();  // dv and dq columns are read by other threads in the next reflection
  }
}

}  // namespace detail::cuda

template <class Scalar_>
class Householder<Scalar_, cuda> {
 public:
  using Scalar = Scalar_;
  using Parameter = Scalar;
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "oft::Householder<..., cuda> takes float or double activations");

  /// d features, r reflections, R = I until set_vectors, on the current device. Throws
  /// std::invalid_argument as the CPU operator does, and for r above kMaxReflections.
  Householder(Index features, Index reflections, bool gram_schmidt = false)
      : features_(features), reflections_(reflections), gram_schmidt_(gram_schmidt) {
    const char* where = kConstructor;
    detail::require(features >= 1 && features <= kMaxFeatures, "householder features d=", features,
                    " must be in [1, ", kMaxFeatures, "]");
    detail::require(reflections >= 1 && reflections <= kMaxReflections,
                    "householder reflections r=", reflections, " must be in [1, ", kMaxReflections,
                    "] on the GPU");
    detail::require(!gram_schmidt || reflections <= features,
                    "householder reflections r=", reflections, " exceed features d=", features,
                    ": Gram-Schmidt cannot make more than d orthonormal vectors");
    q_ = DeviceBuffer<Parameter>(static_cast<std::size_t>(features * reflections));
    t_ = DeviceBuffer<Parameter>(static_cast<std::size_t>(reflections * reflections));
    norms_ = DeviceBuffer<Parameter>(static_cast<std::size_t>(reflections));
    coefficients_ = DeviceBuffer<Parameter>(static_cast<std::size_t>(reflections * reflections));
    detail::cuda::check(cudaMemset(q_.data(), 0, q_.bytes()), "cudaMemset", where);
    detail::cuda::check(cudaMemset(t_.data(), 0, t_.bytes()), "cudaMemset", where);  // T = 0: R = I
    detail::cuda::check(cudaMemset(coefficients_.data(), 0, coefficients_.bytes()), "cudaMemset",
                        where);
    const std::vector<Parameter> ones(static_cast<std::size_t>(reflections), Parameter(1));
    detail::cuda::check(
        cudaMemcpy(norms_.data(), ones.data(), norms_.bytes(), cudaMemcpyHostToDevice),
        "cudaMemcpy", where);
    detail::cuda::check(cublasCreate(&handle_), "cublasCreate", where);
    detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", where);
  }
  ~Householder() {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
  }
  Householder(const Householder&) = delete;
  Householder& operator=(const Householder&) = delete;

  Index features() const { return features_; }
  Index reflections() const { return reflections_; }
  bool gram_schmidt() const { return gram_schmidt_; }
  /// Device pointers: Q (column-major d x r) and T (row-major r x r, upper triangular).
  const Parameter* vectors() const { return q_.data(); }
  const Parameter* triangular_factor() const { return t_.data(); }

  /// U (d x r, device memory, PEFT's hra_u layout) -> Q and T, enqueued on `stream`.
  void set_vectors(DeviceMatrixView<const Parameter> u, cudaStream_t stream) {
    const char* where = "Householder<cuda>::set_vectors";
    detail::cuda::require_shape(u, features_, reflections_, "hra_u", where);
    detail::cuda::require_device_pointer(u.data(), "hra_u", where);
    const std::size_t shared = static_cast<std::size_t>(reflections_) * sizeof(Parameter);
    detail::cuda::householder_setup_kernel<Parameter>
        <<<1, detail::cuda::kHouseholderThreads, shared, stream>>>(
            u.data(), u.ld(), static_cast<int>(features_), static_cast<int>(reflections_),
            gram_schmidt_, q_.data(), t_.data(), norms_.data(), coefficients_.data());
    detail::cuda::check_launch("householder_setup_kernel", where);
  }

  /// The same from host memory (row-major d x r), for setup rather than a training loop: the
  /// CPU operator's checks first (std::domain_error naming a non-finite entry, a zero column or,
  /// with Gram-Schmidt, a column in the span of the ones before it, the operator unchanged), then
  /// a synchronous upload and the setup kernel.
  void set_vectors(const std::vector<Parameter>& u) {
    const char* where = "Householder<cuda>::set_vectors";
    const Index d = features_, r = reflections_;
    detail::require(static_cast<Index>(u.size()) == d * r, where, ": hra_u has ", u.size(),
                    " values, expected d x r = ", d, " x ", r);
    for (Index p = 0; p < d; ++p)
      for (Index i = 0; i < r; ++i)
        detail::require_domain(
            std::isfinite(static_cast<double>(u[static_cast<std::size_t>(p * r + i)])),
            "hra_u has a non-finite entry ", u[static_cast<std::size_t>(p * r + i)], " at (", p,
            ", ", i, ")");
    require_independent_columns(u);
    DeviceBuffer<Parameter> staged(u.size());
    detail::cuda::check(cudaMemcpy(staged.data(), u.data(), staged.bytes(), cudaMemcpyHostToDevice),
                        "cudaMemcpy", where);
    set_vectors(DeviceMatrixView<const Parameter>(staged.data(), d, r), nullptr);
    detail::cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize", where);
  }

  /// Bytes of workspace apply and apply_transposed need for `tokens` rows: two N x r panels.
  std::size_t apply_workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "Householder<cuda>::apply_workspace_bytes: negative token count ",
                    tokens);
    return 2 * panel_bytes(tokens);
  }

  /// Y = X R (N x d). `y` may be the same view as `x`; partial overlap is refused.
  void apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y, void* workspace,
             std::size_t workspace_size, cudaStream_t stream) const {
    rotate(x, y, /*transposed=*/false, workspace, workspace_size, stream,
           "Householder<cuda>::apply");
  }

  /// Y = X R^T: the inverse of apply when R is orthogonal; W0 R^T, PEFT's merge, on W0's rows.
  void apply_transposed(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                        void* workspace, std::size_t workspace_size, cudaStream_t stream) const {
    rotate(x, y, /*transposed=*/true, workspace, workspace_size, stream,
           "Householder<cuda>::apply_transposed");
  }

  /// Bytes of workspace backward needs for `tokens` rows: four N x r panels, dQ (d x r), two
  /// r x r matrices and two d-vectors.
  std::size_t workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "Householder<cuda>::workspace_bytes: negative token count ",
                    tokens);
    return 4 * panel_bytes(tokens) + parameter_workspace_bytes();
  }

  /// Vector-Jacobian product of Y = X R(U): dX = dY R^T and dU (d x r, PEFT's hra_u layout,
  /// device memory, overwritten). Pass an empty view to skip either. dX may be the same view as
  /// dY or as X.
  void backward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<const Scalar> dy,
                DeviceMatrixView<Scalar> dx, DeviceMatrixView<Parameter> du, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "Householder<cuda>::backward";
    const Index n = dy.rows(), d = features_, r = reflections_;
    detail::cuda::require_shape(dy, n, d, "dy", where);
    detail::cuda::require_device_pointer(dy.data(), "dy", where);
    const bool want_dx = !dx.empty();
    if (want_dx) {
      detail::cuda::require_shape(dx, n, d, "dx", where);
      detail::cuda::require_device_pointer(dx.data(), "dx", where);
      detail::cuda::require_in_place_or_disjoint(dx, dy, "dx", "dy", where);
    }
    if (du.empty()) {  // dX alone: dY R^T
      if (want_dx) apply_transposed(dy, dx, workspace, workspace_size, stream);
      return;
    }
    detail::cuda::require_shape(x, n, d, "x", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_shape(du, d, r, "dU", where);
    detail::cuda::require_device_pointer(du.data(), "dU", where);
    if (want_dx) detail::cuda::require_in_place_or_disjoint(dx, x, "dx", "x", where);
    detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    auto* bytes = static_cast<unsigned char*>(workspace);
    const std::size_t panel = panel_bytes(n);
    auto* a = reinterpret_cast<Parameter*>(bytes);               // (X Q)^T, r x N
    auto* c = reinterpret_cast<Parameter*>(bytes + panel);       // (dY Q)^T
    auto* ct = reinterpret_cast<Parameter*>(bytes + 2 * panel);  // (C T)^T
    auto* at = reinterpret_cast<Parameter*>(bytes + 3 * panel);  // (A T^T)^T
    unsigned char* rest = bytes + 4 * panel;
    auto* dq = reinterpret_cast<Parameter*>(rest);
    rest += detail::cuda::align_up(static_cast<std::size_t>(d * r) * sizeof(Parameter));
    auto* dt = reinterpret_cast<Parameter*>(rest);
    rest += detail::cuda::align_up(static_cast<std::size_t>(r * r) * sizeof(Parameter));
    auto* m = reinterpret_cast<Parameter*>(rest);
    rest += detail::cuda::align_up(static_cast<std::size_t>(r * r) * sizeof(Parameter));
    auto* dv = reinterpret_cast<Parameter*>(rest);
    rest += detail::cuda::align_up(static_cast<std::size_t>(d) * sizeof(Parameter));
    auto* v = reinterpret_cast<Parameter*>(rest);

    bind(stream, where);
    if (n == 0) {
      detail::cuda::check(
          cudaMemsetAsync(dq, 0, static_cast<std::size_t>(d * r) * sizeof(Parameter), stream),
          "cudaMemsetAsync", where);
      detail::cuda::check(
          cudaMemsetAsync(dt, 0, static_cast<std::size_t>(r * r) * sizeof(Parameter), stream),
          "cudaMemsetAsync", where);
    } else {
      // Column-major views throughout: X^T is d x N with leading dimension x.ld().
      gemm(CUBLAS_OP_T, CUBLAS_OP_N, r, n, d, 1, q_.data(), d, x.data(), x.ld(), 0, a, r, where);
      gemm(CUBLAS_OP_T, CUBLAS_OP_N, r, n, d, 1, q_.data(), d, dy.data(), dy.ld(), 0, c, r, where);
      gemm(CUBLAS_OP_N, CUBLAS_OP_N, r, n, r, 1, t_.data(), r, c, r, 0, ct, r, where);  // T^T C^T
      gemm(CUBLAS_OP_T, CUBLAS_OP_N, r, n, r, 1, t_.data(), r, a, r, 0, at, r, where);  // T A^T
      // dQ = -X^T (C T) - dY^T (A T^T), column-major d x r.
      gemm(CUBLAS_OP_N, CUBLAS_OP_T, d, r, n, -1, x.data(), x.ld(), ct, r, 0, dq, d, where);
      gemm(CUBLAS_OP_N, CUBLAS_OP_T, d, r, n, -1, dy.data(), dy.ld(), at, r, 1, dq, d, where);
      // dT = -C^T A, stored row-major (= (dT)^T column-major = -A^T C).
      if (!gram_schmidt_) gemm(CUBLAS_OP_N, CUBLAS_OP_T, r, r, n, -1, a, r, c, r, 0, dt, r, where);
      if (want_dx) {  // dX = dY - (C T) Q^T, after every read of X and dY above
        if (!detail::cuda::same_memory(dx, dy))
          detail::cuda::copy_rows<Scalar>(dy, dx, stream, where);
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, d, n, r, -1, q_.data(), d, ct, r, 1, dx.data(), dx.ld(),
             where);
      }
    }
    detail::cuda::householder_vector_gradient_kernel<Parameter>
        <<<1, detail::cuda::kHouseholderThreads, 0, stream>>>(
            dq, dt, m, q_.data(), t_.data(), norms_.data(), coefficients_.data(),
            static_cast<int>(d), static_cast<int>(r), gram_schmidt_, dv, v, du.data(), du.ld());
    detail::cuda::check_launch("householder_vector_gradient_kernel", where);
  }

 private:
  static constexpr const char* kConstructor = "Householder<cuda>::Householder";
  static constexpr Index kMaxFeatures = Index{1} << 30;
  /// The setup kernel keeps r overlaps in shared memory beside its reduction scratch.
  static constexpr Index kMaxReflections = 4096;

  std::size_t panel_bytes(Index tokens) const {
    return detail::cuda::align_up(static_cast<std::size_t>(tokens) *
                                  static_cast<std::size_t>(reflections_) * sizeof(Parameter));
  }
  std::size_t parameter_workspace_bytes() const {
    const std::size_t d = static_cast<std::size_t>(features_),
                      r = static_cast<std::size_t>(reflections_);
    return detail::cuda::align_up(d * r * sizeof(Parameter)) +
           2 * detail::cuda::align_up(r * r * sizeof(Parameter)) +
           2 * detail::cuda::align_up(d * sizeof(Parameter));
  }

  /// Y = X - ((X Q) T^T) Q^T, or with T when `transposed`.
  void rotate(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y, bool transposed,
              void* workspace, std::size_t workspace_size, cudaStream_t stream,
              const char* where) const {
    const Index n = x.rows(), d = features_, r = reflections_;
    detail::require(x.cols() == d, where, ": X has ", x.cols(), " columns, expected d=", d,
                    " (r=", r, " reflections)");
    detail::cuda::require_shape(y, n, d, "y", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_device_pointer(y.data(), "y", where);
    detail::cuda::require_in_place_or_disjoint(y, x, "y", "x", where);
    detail::cuda::require_workspace(workspace, workspace_size, apply_workspace_bytes(n), n, where);
    if (n == 0) return;
    auto* a = static_cast<Parameter*>(workspace);
    auto* b = reinterpret_cast<Parameter*>(static_cast<unsigned char*>(workspace) + panel_bytes(n));
    bind(stream, where);
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, r, n, d, 1, q_.data(), d, x.data(), x.ld(), 0, a, r, where);
    // (A T^T)^T = T A^T; (A T)^T = T^T A^T. t_ is row-major, i.e. T^T column-major.
    gemm(transposed ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, r, n, r, 1, t_.data(), r, a, r, 0, b,
         r, where);
    if (!detail::cuda::same_memory(x, y)) detail::cuda::copy_rows<Scalar>(x, y, stream, where);
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, d, n, r, -1, q_.data(), d, b, r, 1, y.data(), y.ld(), where);
  }

  /// Host-side refusal of what the CPU operator refuses: a zero column, or with Gram-Schmidt a
  /// zero residual (the same modified Gram-Schmidt in the parameter type).
  void require_independent_columns(const std::vector<Parameter>& u) const {
    const Index d = features_, r = reflections_;
    std::vector<Parameter> q(static_cast<std::size_t>(d * r));
    for (Index i = 0; i < r; ++i) {
      Parameter* v = q.data() + i * d;
      for (Index p = 0; p < d; ++p) v[p] = u[static_cast<std::size_t>(p * r + i)];
      if (gram_schmidt_)
        for (Index j = 0; j < i; ++j) {
          const Parameter* qj = q.data() + j * d;
          Parameter c = 0;
          for (Index p = 0; p < d; ++p) c += qj[p] * v[p];
          for (Index p = 0; p < d; ++p) v[p] -= c * qj[p];
        }
      Parameter sum = 0;
      for (Index p = 0; p < d; ++p) sum += v[p] * v[p];
      const Parameter norm = std::sqrt(sum);
      detail::require_domain(norm > Parameter(0), "hra_u column ", i,
                             gram_schmidt_ ? " lies in the span of the columns before it (zero "
                                             "Gram-Schmidt residual)"
                                           : " is zero (a reflection needs a nonzero vector)");
      for (Index p = 0; p < d; ++p) v[p] /= norm;
    }
  }

  void bind(cudaStream_t stream, const char* where) const {
    detail::cuda::check(cublasSetStream(handle_, stream), "cublasSetStream", where);
  }

  static int to_int(Index v) {
    detail::require(v <= 2147483647, "Householder<cuda>: dimension ", v,
                    " exceeds cuBLAS's 32-bit int");
    return static_cast<int>(v);
  }

  /// C = alpha op(A) op(B) + beta C, column-major (SGEMM / DGEMM).
  void gemm(cublasOperation_t op_a, cublasOperation_t op_b, Index m, Index n, Index k,
            Parameter alpha, const Parameter* a, Index lda, const Parameter* b, Index ldb,
            Parameter beta, Parameter* c, Index ldc, const char* where) const {
    if constexpr (std::is_same_v<Parameter, double>) {
      detail::cuda::check(cublasDgemm(handle_, op_a, op_b, to_int(m), to_int(n), to_int(k), &alpha,
                                      a, to_int(lda), b, to_int(ldb), &beta, c, to_int(ldc)),
                          "cublasDgemm", where);
    } else {
      detail::cuda::check(cublasSgemm(handle_, op_a, op_b, to_int(m), to_int(n), to_int(k), &alpha,
                                      a, to_int(lda), b, to_int(ldb), &beta, c, to_int(ldc)),
                          "cublasSgemm", where);
    }
  }

  Index features_, reflections_;
  bool gram_schmidt_;
  DeviceBuffer<Parameter> q_, t_, norms_, coefficients_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace oft

#pragma once
/// \file cuda/butterfly.hpp
/// Butterfly<T, Policy, cuda>: the BOFT operator (butterfly.hpp) on the GPU, with the CPU
/// operator's conventions: M = B_{m-1} ... B_0, B_i = P_i D_i P_i^T (butterfly_spec.hpp),
/// X M = X B_{m-1} ... B_0 (factor m-1 acts first), generators packed m N rows (factor i's
/// blocks are rows i N .. i N + N - 1, PEFT's boft_R[i, g] order).
///
/// How it runs: each factor D_i is a BlockOrthogonal<T, Policy, cuda> over its gathered feature
/// order, and a gather kernel moves the rows between the orders (runs of b/2 contiguous features
/// stay together). The d x d matrix is never formed. With m > 1, apply and apply_transposed need
/// one N x d plane of caller workspace (apply_workspace_bytes(N)) to permute into; backward keeps
/// each factor's input and the running gradient ((m + 1) N d values, as the CPU operator) and the
/// factors' shared backward workspace: workspace_bytes(N) bytes in all.
///
/// T is float or double: the factors' outputs are kept in T between factors, so 16-bit
/// activations would be rounded m times (the CPU operator rounds once); they are refused at
/// compile time until a float-staged path exists.
///
/// Streams and memory as for BlockOrthogonal<T, cuda>: construction allocates and synchronizes;
/// every other call only enqueues work on the caller's stream; shapes, pointers and workspace
/// sizes are checked before anything is enqueued (std::invalid_argument).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../butterfly_spec.hpp"
#include "../errors.hpp"
#include "../index.hpp"
#include "block_orthogonal.hpp"
#include "device_view.hpp"
#include "error.hpp"
#include "launch.hpp"
#include "workspace.hpp"

namespace oft {
namespace detail::cuda {

/// dst[n, to[f]] = src[n, from[f]] for every feature f (a null table is the natural order).
template <class T>
__global__ void butterfly_permute_kernel(const T* src, Index lds, T* dst, Index ldd, Index rows,
                                         int d, const int* from, const int* to) {
  const int f = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (f >= d) return;
  const int in = from == nullptr ? f : from[f];
  const int out = to == nullptr ? f : to[f];
  for (Index n = blockIdx.y; n < rows; n += gridDim.y) dst[n * ldd + out] = src[n * lds + in];
}

}  // namespace detail::cuda

template <class Scalar_, class Parameterization_>
class Butterfly<Scalar_, Parameterization_, cuda> {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Factor = BlockOrthogonal<Scalar, Parameterization, cuda>;
  using Parameter = typename Factor::Parameter;
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "oft::Butterfly<..., cuda> takes float or double activations (16-bit ones would "
                "be rounded after every factor)");

  /// Operator for `spec` (validated) on the current device, identity blocks until
  /// set_generators.
  explicit Butterfly(const ButterflySpec& spec, Parameterization parameterization = {})
      : spec_(checked(spec)) {
    const BlockSpec blocks = BlockSpec::from_features(spec_.features(), spec_.block_size);
    factors_.reserve(static_cast<std::size_t>(spec_.factors));
    for (Index i = 0; i < spec_.factors; ++i) factors_.emplace_back(blocks, parameterization);
    // Factor 0's gathered order is the natural one (a null table); the others are uploaded.
    positions_.emplace_back();
    for (Index i = 1; i < spec_.factors; ++i) {
      const std::vector<Index> position = spec_.positions(i);
      std::vector<int> narrow(position.begin(), position.end());
      DeviceBuffer<int> table(narrow.size());
      detail::cuda::check(
          cudaMemcpy(table.data(), narrow.data(), table.bytes(), cudaMemcpyHostToDevice),
          "cudaMemcpy", "Butterfly<cuda>::Butterfly");
      positions_.push_back(std::move(table));
    }
  }

  const ButterflySpec& spec() const { return spec_; }
  Index features() const { return spec_.features(); }
  /// Factor i's block-diagonal operator D_i (blocks in its gathered order).
  const Factor& factor(Index i) const {
    detail::require(i >= 0 && i < spec_.factors, "butterfly factor ", i, " out of range [0, ",
                    spec_.factors, ")");
    return factors_[static_cast<std::size_t>(i)];
  }

  /// theta: m N packed generators in device memory, enqueued on `stream` (each factor copies
  /// its rows, as BlockOrthogonal<cuda>::set_generators does).
  void set_generators(DeviceMatrixView<const Parameter> theta, cudaStream_t stream) {
    const char* where = "Butterfly<cuda>::set_generators";
    detail::cuda::require_shape(theta, spec_.generators(), spec_.packed(), "theta", where);
    for (Index i = 0; i < spec_.factors; ++i)
      factors_[static_cast<std::size_t>(i)].set_generators(factor_rows(theta, i), stream);
  }

  /// Bytes of workspace apply and apply_transposed need for `tokens` rows (0 when m = 1).
  std::size_t apply_workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "Butterfly<cuda>::apply_workspace_bytes: negative token count ",
                    tokens);
    return spec_.factors == 1 ? 0 : plane_bytes(tokens);
  }

  /// Y = X M (N x d). `y` may be the same view as `x`; partial overlap is refused. `workspace`
  /// holds apply_workspace_bytes(N) bytes (unused, and may be null, when m = 1).
  void apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y, void* workspace,
             std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "Butterfly<cuda>::apply";
    const DeviceMatrixView<Scalar> plane = checked_apply(x, y, workspace, workspace_size, where);
    const Index m = spec_.factors;
    if (m == 1) {
      factors_.front().apply(x, y, stream);
      return;
    }
    // Factor m-1 first, each factor in its own gathered order; m gathers in all, alternating
    // between y and the plane so that the last lands in y (x is read by the first one only).
    DeviceMatrixView<Scalar> now = (m % 2 == 1 && !same(x, y)) ? y : plane;
    permute(x, kNatural, now, m - 1, stream, where);
    for (Index i = m - 1; i >= 0; --i) {
      factors_[static_cast<std::size_t>(i)].apply(now, now, stream);
      if (i == 0) break;
      const DeviceMatrixView<Scalar> next = now.data() == y.data() ? plane : y;
      permute(now, i, next, i - 1, stream, where);
      now = next;
    }
    if (now.data() != y.data())  // in place with m odd
      detail::cuda::copy_rows<Scalar>(now, y, stream, where);
  }

  /// Y = X M^T = X B_0^T ... B_{m-1}^T: the inverse of apply (M is orthogonal when every block
  /// is); W0 M^T, the merged weight, on W0's rows. Workspace as for apply.
  void apply_transposed(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                        void* workspace, std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "Butterfly<cuda>::apply_transposed";
    const DeviceMatrixView<Scalar> plane = checked_apply(x, y, workspace, workspace_size, where);
    const Index m = spec_.factors;
    // Factor 0 (natural order) first, out of place into the buffer that makes the m gathers
    // after it end in y.
    DeviceMatrixView<Scalar> now = m % 2 == 0 ? y : plane;
    factors_.front().apply_transposed(x, now, stream);
    for (Index i = 1; i <= m; ++i) {
      const DeviceMatrixView<Scalar> next = now.data() == y.data() ? plane : y;
      permute(now, i - 1, next, i < m ? i : kNatural, stream, where);
      now = next;
      if (i < m) factors_[static_cast<std::size_t>(i)].apply_transposed(now, now, stream);
    }
  }

  /// Bytes of device workspace backward needs for `tokens` rows: with m > 1, the m factor inputs
  /// and the running gradient ((m + 1) N d values of T), and the factors' own backward
  /// workspace (they run one after another and share it).
  std::size_t workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "Butterfly<cuda>::workspace_bytes: negative token count ", tokens);
    const std::size_t planes =
        spec_.factors == 1 ? 0 : static_cast<std::size_t>(spec_.factors + 1) * plane_bytes(tokens);
    return planes + detail::cuda::align_up(factors_.front().workspace_bytes(tokens));
  }

  /// Vector-Jacobian product of Y = X M(theta): dX = dY M^T and dtheta (m N packed rows,
  /// device memory, overwritten). Pass an empty view to skip either. dX may be the same view as
  /// dY or as X.
  void backward(DeviceMatrixView<const Scalar> x, DeviceMatrixView<const Scalar> dy,
                DeviceMatrixView<Scalar> dx, DeviceMatrixView<Parameter> dtheta, void* workspace,
                std::size_t workspace_size, cudaStream_t stream) const {
    const char* where = "Butterfly<cuda>::backward";
    const Index n = dy.rows(), d = features(), m = spec_.factors;
    detail::cuda::require_shape(dy, n, d, "dy", where);
    detail::cuda::require_device_pointer(dy.data(), "dy", where);
    const bool want_dx = !dx.empty();
    if (want_dx) {
      detail::cuda::require_shape(dx, n, d, "dx", where);
      detail::cuda::require_device_pointer(dx.data(), "dx", where);
      detail::cuda::require_in_place_or_disjoint(dx, dy, "dx", "dy", where);
    }
    if (dtheta.empty()) {  // dX alone: dY M^T, through the first m planes of the workspace
      if (!want_dx) return;
      detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
      apply_transposed(dy, dx, workspace, workspace_size, stream);
      return;
    }
    detail::cuda::require_shape(x, n, d, "x", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_shape(dtheta, spec_.generators(), spec_.packed(), "dtheta", where);
    detail::cuda::require_device_pointer(dtheta.data(), "dtheta", where);
    if (want_dx) detail::cuda::require_in_place_or_disjoint(dx, x, "dx", "x", where);
    detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(n), n, where);
    auto* bytes = static_cast<unsigned char*>(workspace);
    const std::size_t plane = m == 1 ? 0 : plane_bytes(n);
    const std::size_t planes = m == 1 ? 0 : static_cast<std::size_t>(m + 1) * plane;
    void* factor_workspace = bytes + planes;
    const std::size_t factor_bytes = workspace_size - planes;
    if (m == 1) {
      factors_.front().backward(x, dy, dx, dtheta, factor_workspace, factor_bytes, stream);
      return;
    }
    // Planes 0 .. m-1 keep each factor's input in its own gathered order; plane m is the
    // running gradient, and holds each factor's output on its way to the next order first.
    const auto at = [&](Index i) {
      return DeviceMatrixView<Scalar>(
          reinterpret_cast<Scalar*>(bytes + static_cast<std::size_t>(i) * plane), n, d);
    };
    permute(x, kNatural, at(m - 1), m - 1, stream, where);
    for (Index i = m - 1; i > 0; --i) {
      factors_[static_cast<std::size_t>(i)].apply(at(i), at(m), stream);
      permute(at(m), i, at(i - 1), i - 1, stream, where);
    }
    // Back through the factors in the reverse of their application, factor 0 first, each on its
    // own input. Once factor i is done its input plane is free, and the gradient moves into it
    // in factor i + 1's order; at the end it goes to dX in the natural order.
    DeviceMatrixView<Scalar> gradient = at(m);
    detail::cuda::copy_rows<Scalar>(dy, gradient, stream, where);
    for (Index i = 0; i < m; ++i) {
      factors_[static_cast<std::size_t>(i)].backward(at(i), gradient, gradient,
                                                     factor_rows(dtheta, i), factor_workspace,
                                                     factor_bytes, stream);
      if (i + 1 < m) {
        permute(gradient, i, at(i), i + 1, stream, where);
        gradient = at(i);
      }
    }
    if (want_dx) permute(gradient, m - 1, dx, kNatural, stream, where);
  }

 private:
  /// The natural feature order (factor 0's order is the natural one too).
  static constexpr Index kNatural = 0;

  static const ButterflySpec& checked(const ButterflySpec& spec) {
    spec.validate();
    return spec;
  }

  std::size_t plane_bytes(Index tokens) const {
    return detail::cuda::align_up(static_cast<std::size_t>(tokens) *
                                  static_cast<std::size_t>(features()) * sizeof(Scalar));
  }

  template <class E>
  DeviceMatrixView<E> factor_rows(const DeviceMatrixView<E>& theta, Index i) const {
    return theta.block(i * spec_.blocks, 0, spec_.blocks, spec_.packed());
  }

  template <class A, class B>
  static bool same(const DeviceMatrixView<A>& a, const DeviceMatrixView<B>& b) {
    return detail::cuda::same_memory(a, b);
  }

  /// Checks of apply and apply_transposed; returns the workspace plane (empty when m = 1).
  DeviceMatrixView<Scalar> checked_apply(const DeviceMatrixView<const Scalar>& x,
                                         const DeviceMatrixView<Scalar>& y, void* workspace,
                                         std::size_t workspace_size, const char* where) const {
    const Index n = x.rows(), d = features();
    detail::require(x.cols() == d, where, ": X has ", x.cols(), " columns, expected d=", d,
                    " (m=", spec_.factors, " factors of N=", spec_.blocks,
                    " blocks of b=", spec_.block_size, ")");
    detail::cuda::require_shape(y, n, d, "y", where);
    detail::cuda::require_device_pointer(x.data(), "x", where);
    detail::cuda::require_device_pointer(y.data(), "y", where);
    detail::cuda::require_in_place_or_disjoint(y, x, "y", "x", where);
    if (spec_.factors == 1) return {};
    detail::cuda::require_workspace(workspace, workspace_size, apply_workspace_bytes(n), n, where);
    const DeviceMatrixView<Scalar> plane(static_cast<Scalar*>(workspace), n, d);
    detail::cuda::require_disjoint(plane, x, "workspace", "x", where);
    detail::cuda::require_disjoint(plane, y, "workspace", "y", where);
    return plane;
  }

  /// dst = src with the features moved from factor `from`'s gathered order to factor `to`'s;
  /// src and dst must not overlap.
  void permute(DeviceMatrixView<const Scalar> src, Index from, DeviceMatrixView<Scalar> dst,
               Index to, cudaStream_t stream, const char* where) const {
    const Index rows = src.rows();
    const int d = static_cast<int>(features());
    if (rows == 0) return;
    constexpr int kThreads = 256;
    const unsigned grid_y =
        static_cast<unsigned>(std::min<Index>(rows, static_cast<Index>(detail::cuda::kMaxGridY)));
    const dim3 grid(static_cast<unsigned>((d + kThreads - 1) / kThreads), grid_y);
    detail::cuda::butterfly_permute_kernel<Scalar><<<grid, kThreads, 0, stream>>>(
        src.data(), src.ld(), dst.data(), dst.ld(), rows, d, table(from), table(to));
    detail::cuda::check_launch("butterfly_permute_kernel", where);
  }

  const int* table(Index order) const {
    return order == kNatural ? nullptr : positions_[static_cast<std::size_t>(order)].data();
  }

  ButterflySpec spec_;
  std::vector<Factor> factors_;
  std::vector<DeviceBuffer<int>> positions_;  // positions_[i][f]: where factor i's order puts f
};

}  // namespace oft

#pragma once
/// \file cpu_reference.hpp
/// The CPU backend as a reference for the CUDA tests, behind a plain C++ interface: no Eigen and
/// no CUDA here, so the nvcc-compiled test files can include it (nvcc never sees Eigen). The
/// definitions (cpu_reference.cpp, compiled by the host compiler) run oft's CPU
/// BlockOrthogonal / OftLinear on the same inputs.
///
/// Every matrix is a contiguous row-major std::vector (leading dimension = columns):
///   theta   generators() x packed()          rotation blocks  generators() x b x b
///   x, y    n x features()                   w0               n_out x features()
///   z       n x n_out                        bias             n_out values or empty (no bias)
/// `active` is the active-block mask of BlockOrthogonal::set_active_blocks (empty = all).
/// Instantiated for float and double (each evaluates in that precision).

#include <cstddef>
#include <vector>

namespace oft_cuda_test {

using Index = std::ptrdiff_t;

/// `terms` value meaning exact Cayley instead of Cayley-Neumann.
inline constexpr int kExactCayley = -1;

/// An operator: d = blocks * b features, one generator per block or one shared generator, and
/// the parameterization (terms >= 0: CayleyNeumann{terms}; kExactCayley: ExactCayley).
struct OpConfig {
  Index blocks = 1;
  Index b = 1;
  bool shared = false;
  int terms = 4;

  Index features() const { return blocks * b; }
  Index generators() const { return shared ? 1 : blocks; }
  Index packed() const { return b * (b - 1) / 2; }
  Index generator_of(Index block) const { return shared ? 0 : block; }
  bool exact() const { return terms == kExactCayley; }
};

/// R_g of every generator (generators() x b x b, row-major) as BlockOrthogonal<S, cpu> builds it.
template <class S>
std::vector<S> cpu_rotation_blocks(const OpConfig& config, const std::vector<S>& theta);

/// Y = X * R (or X * R^T when `transposed`), n x features().
template <class S>
std::vector<S> cpu_apply(const OpConfig& config, const std::vector<S>& theta,
                         const std::vector<unsigned char>& active, const std::vector<S>& x,
                         Index n, bool transposed);

/// BlockOrthogonal<S, cpu>::backward: dx = dY R^T (n x features()) and dtheta
/// (generators() x packed()); a null output pointer skips that output.
template <class S>
void cpu_backward(const OpConfig& config, const std::vector<S>& theta,
                  const std::vector<unsigned char>& active, const std::vector<S>& x,
                  const std::vector<S>& dy, Index n, std::vector<S>* dx, std::vector<S>* dtheta);

/// OftLinear<S, cpu>::forward: Z = (X R) W0^T + bias, n x n_out.
template <class S>
std::vector<S> cpu_layer_forward(const OpConfig& config, const std::vector<S>& theta,
                                 const std::vector<S>& w0, Index n_out, const std::vector<S>& bias,
                                 const std::vector<S>& x, Index n);

/// OftLinear<S, cpu>::backward for upstream dZ (n x n_out): dx (n x features()) and dtheta.
template <class S>
void cpu_layer_backward(const OpConfig& config, const std::vector<S>& theta,
                        const std::vector<S>& w0, Index n_out, const std::vector<S>& x,
                        const std::vector<S>& dz, Index n, std::vector<S>* dx,
                        std::vector<S>* dtheta);

/// OftLinear<S, cpu>::merged(): W' = W0 R^T, n_out x features().
template <class S>
std::vector<S> cpu_layer_merge(const OpConfig& config, const std::vector<S>& theta,
                               const std::vector<S>& w0, Index n_out);

/// OftLinear<S, cpu>::unmerge(merged): W0 = W' (R^T)^-1, n_out x features().
template <class S>
std::vector<S> cpu_layer_unmerge(const OpConfig& config, const std::vector<S>& theta,
                                 const std::vector<S>& merged, Index n_out);

/// ||Q_g||_2 (= rho, the largest |eigenvalue| of the skew Q_g) of every generator, in double.
std::vector<double> cpu_generator_rho(const OpConfig& config, const std::vector<double>& theta);

/// cond_2(R_g) = sigma_max / sigma_min of every rotation block (double, Jacobi SVD).
std::vector<double> cpu_condition_numbers(const OpConfig& config,
                                          const std::vector<double>& rotation_blocks);

}  // namespace oft_cuda_test

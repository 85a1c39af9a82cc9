#pragma once
/// \file bench_common.hpp
/// What every oft benchmark shares: the ONE flop/byte model its counters come from, random inputs
/// made and touched outside the timed loop, generators scaled to an exact spectral norm, and the
/// run context (threads, GEMM backend, OPENBLAS_CORETYPE) written into every JSON report.
///
/// Cost model (float or double, S = sizeof(Scalar), d = r*b features, N tokens):
///   apply     Y = X R                 flops 2 N d b     bytes (2 N d + d b) S   (X, Y, R blocks)
///   backward  dX = dY R^T, G = X^T dY flops 4 N d b     bytes (3 N d + d b) S   (X, dY, dX, R)
///   step      apply + backward        flops 6 N d b     bytes (5 N d + 2 d b) S
/// theta -> R and the generator VJP are O(r b^3) and are left out of the model on purpose: the
/// counters then say how close the O(N d b) part runs to the machine's ceilings (bench_roofline).
///
/// Counters are rates: "GFLOP" and "GB" read as GFLOP/s and GB/s (10^9, not 2^30) in the console,
/// and are stored as those numbers in the JSON.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/oft.hpp>

#include <benchmark/benchmark.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace oft_bench {

using oft::Index;

// ---------------------------------------------------------------------------------------------
// Cost model
// ---------------------------------------------------------------------------------------------
struct Cost {
  double flops = 0;
  double bytes = 0;
  Cost operator+(const Cost& o) const { return {flops + o.flops, bytes + o.bytes}; }
};

template <class Scalar>
Cost apply_cost(Index n, Index d, Index b) {
  const double s = sizeof(Scalar);
  return {2.0 * n * d * b, (2.0 * n * d + 1.0 * d * b) * s};
}
template <class Scalar>
Cost backward_cost(Index n, Index d, Index b) {
  const double s = sizeof(Scalar);
  return {4.0 * n * d * b, (3.0 * n * d + 1.0 * d * b) * s};
}
template <class Scalar>
Cost step_cost(Index n, Index d, Index b) {
  return apply_cost<Scalar>(n, d, b) + backward_cost<Scalar>(n, d, b);
}

/// GFLOP/s and GB/s counters for `cost` per iteration (rates over the measured time).
inline void set_rate_counters(benchmark::State& state, const Cost& cost) {
  using C = benchmark::Counter;
  state.counters["GFLOP"] = C(cost.flops * 1e-9, C::kIsIterationInvariantRate);
  state.counters["GB"] = C(cost.bytes * 1e-9, C::kIsIterationInvariantRate);
  state.counters["flop_per_byte"] = C(cost.bytes > 0 ? cost.flops / cost.bytes : 0.0);
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------
/// Fills `n` scalars with uniform values in [-1, 1) from a fixed seed: deterministic inputs, and
/// the buffer is touched (faulted in) before any timed loop.
template <class Scalar>
void fill_uniform(Scalar* data, Index n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (Index i = 0; i < n; ++i) data[i] = static_cast<Scalar>(dist(rng));
}

template <class Scalar>
using Matrix = oft::RowMatrix<Scalar>;

/// rows x cols row-major matrix of uniform values (allocated and touched here).
template <class Scalar>
Matrix<Scalar> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  Matrix<Scalar> m(rows, cols);
  fill_uniform(m.data(), m.size(), seed);
  return m;
}

/// ||Q||_2 of a skew-symmetric Q, in double (largest |eigenvalue| of the symmetric Q^T Q, sqrt).
template <class Derived>
double spectral_norm(const Eigen::MatrixBase<Derived>& q) {
  const Eigen::MatrixXd qd = q.template cast<double>();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(qd.transpose() * qd, Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
}

/// `count` random packed generators of block size b, each rescaled (in double) so that its skew
/// Q has spectral norm exactly rho (up to the final rounding to Scalar).
template <class Scalar>
oft::Generators<Scalar> random_generators(Index count, Index b, double rho, std::uint64_t seed) {
  oft::Generators<double> theta(count, b);
  fill_uniform(theta.values().data(), theta.values().size(), seed);
  for (Index g = 0; g < count; ++g) {
    const double norm = spectral_norm(theta.dense(g));
    if (norm > 0) theta.values().row(g) *= rho / norm;
  }
  oft::Generators<Scalar> out(count, b);
  out.values() = theta.values().template cast<Scalar>();
  return out;
}

/// max |a - b| / max(1, max |b|): a scale-aware error for validating one result against another.
template <class A, class B>
double relative_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const Eigen::MatrixXd ad = a.template cast<double>(), bd = b.template cast<double>();
  const double scale = std::max(1.0, bd.cwiseAbs().maxCoeff());
  return (ad - bd).cwiseAbs().maxCoeff() / scale;
}

/// Tolerance for comparing a Scalar kernel against a double reference over `depth`-long sums.
template <class Scalar>
double tolerance(Index depth) {
  return 64.0 * std::numeric_limits<Scalar>::epsilon() * std::sqrt(static_cast<double>(depth) + 1);
}

// ---------------------------------------------------------------------------------------------
// Run context (appears in the console header and in every JSON report's "context")
// ---------------------------------------------------------------------------------------------
inline std::string gemm_backend() {
#if defined(EIGEN_USE_BLAS)
  return "EIGEN_USE_BLAS=on (Eigen products through the linked BLAS, OpenBLAS)";
#else
  return "EIGEN_USE_BLAS=off (Eigen's built-in GEMM)";
#endif
}

inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string(fallback);
}

/// What the compiler targeted (Eigen's own string omits AVX2 and FMA).
inline std::string compiled_isa() {
  std::string isa;
#if defined(__AVX512F__)
  isa += "AVX512F ";
#endif
#if defined(__AVX2__)
  isa += "AVX2 ";
#endif
#if defined(__FMA__)
  isa += "FMA ";
#endif
#if defined(__AVX__)
  isa += "AVX ";
#endif
#if defined(__ARM_NEON)
  isa += "NEON ";
#endif
  return isa.empty() ? "baseline" : isa.substr(0, isa.size() - 1);
}

inline bool add_context() {
  benchmark::AddCustomContext("oft_omp_max_threads", std::to_string(oft::detail::max_threads()));
  benchmark::AddCustomContext("oft_eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("oft_gemm_backend", gemm_backend());
  benchmark::AddCustomContext("oft_isa", compiled_isa());
  benchmark::AddCustomContext("OPENBLAS_CORETYPE", env_or("OPENBLAS_CORETYPE", "(unset)"));
  benchmark::AddCustomContext("OMP_NUM_THREADS", env_or("OMP_NUM_THREADS", "(unset)"));
  benchmark::AddCustomContext("OPENBLAS_NUM_THREADS", env_or("OPENBLAS_NUM_THREADS", "(unset)"));
  return true;
}

/// Registers the context once per executable (each benchmark is one translation unit).
inline const bool context_added = add_context();

}  // namespace oft_bench

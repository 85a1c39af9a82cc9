#pragma once
/// \file config.hpp
/// Basic types, macros and backend tags shared by every oft header (CPU and CUDA). Eigen-free.

#include <cstddef>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define OFT_HOST_DEVICE __host__ __device__
#else
#define OFT_HOST_DEVICE
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

/// OpenMP directive that vanishes without OpenMP, so builds without -fopenmp see no
/// unknown-pragma warnings: OFT_OMP(parallel for schedule(static)).
#define OFT_STRINGIFY(...) #__VA_ARGS__
#if defined(_OPENMP)
#define OFT_OMP(...) _Pragma(OFT_STRINGIFY(omp __VA_ARGS__))
#else
#define OFT_OMP(...)
#endif

namespace oft {

/// Signed index type used for every size, stride and offset. It is Eigen's default index type
/// (std::ptrdiff_t); parameterization.hpp checks that the two agree. config.hpp itself does not
/// include Eigen, so the CUDA backend's headers compile under nvcc without it.
using Index = std::ptrdiff_t;

/// Marker for a block size known only at run time (same value as Eigen::Dynamic).
inline constexpr int Dynamic = -1;

/// Largest block size b that oft accepts anywhere (block specs, generator views, packed lengths,
/// skew expressions). Refusing larger b keeps b*b and b(b-1)/2 far from overflowing an Index; a
/// single 65536 x 65536 float block is already 16 GiB, beyond any OFT layer (PEFT's blocks are
/// 8 to 256 wide, and full-width OFT of a 16384-wide layer is b = 16384).
inline constexpr Index kMaxBlockSize = Index(1) << 16;

/// Largest number of Neumann terms k (CayleyNeumann{k}, the tolerance mode's max_terms, PEFT's
/// num_cayley_neumann_terms - 2). Each term costs one b x b product forward and three backward;
/// k = 1024 already reaches 1e-6 of exact Cayley at rho = 0.987, where exact Cayley is cheaper.
inline constexpr int kMaxNeumannTerms = 1024;

/// Backend tags. Operators are specialized on these; a backend that was not included
/// (e.g. `cuda` without <oft/cuda.hpp>) is a readable compile error.
struct cpu {};
struct cuda {};

namespace detail {
/// Number of threads the CPU backend may use (OpenMP's setting, 1 without OpenMP).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}
/// Index of the calling thread inside an OpenMP parallel region (0 outside or without OpenMP).
inline int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}
}  // namespace detail

}  // namespace oft

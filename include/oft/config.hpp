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

/// \file bench_layer_eigen.cpp
/// bench_layer with EIGEN_USE_BLAS undefined: every product uses Eigen's built-in GEMM even in a
/// build that links oft::blas, so one run compares both GEMM backends on the same machine.
#if defined(EIGEN_USE_BLAS)
#undef EIGEN_USE_BLAS
#endif
#include "bench_layer_impl.hpp"

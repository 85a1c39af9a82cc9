/// \file bench_layer.cpp
/// OFT linear layer step vs the bare base GEMM step vs the weight-centric step, with Eigen's
/// products going to the linked BLAS when the build defines EIGEN_USE_BLAS (oft::blas).
/// See bench_layer_impl.hpp; bench_layer_eigen.cpp is the same with Eigen's own GEMM.
#include "bench_layer_impl.hpp"

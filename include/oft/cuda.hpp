#pragma once
/// \file cuda.hpp
/// The CUDA backend: BlockOrthogonal<T, Policy, oft::cuda> and OftLinear<T, Policy, oft::cuda>
/// over DeviceMatrixView (pointer, rows, cols, leading dimension), for T in float, double,
/// __half, __nv_bfloat16. Include it from .cu files compiled by nvcc; it does not include Eigen
/// and does not need the CPU headers (both backends share config, index, policies, errors).
/// Link CUDA::cudart and CUDA::cublas (CMake target oft::cuda does).

#if !defined(__CUDACC__)
#error "<oft/cuda.hpp> must be compiled by nvcc (include it from a .cu file)"
#endif

#include "cuda/block_orthogonal.hpp"
#include "cuda/device_view.hpp"
#include "cuda/error.hpp"
#include "cuda/linear.hpp"
#include "cuda/numeric.hpp"
#include "cuda/quant.hpp"

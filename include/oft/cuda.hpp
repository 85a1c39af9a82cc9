#pragma once
/// \file cuda.hpp
/// The CUDA backend: BlockOrthogonal<T, Parameterization, oft::cuda> and OftLinear<T, Parameterization, oft::cuda>
/// over DeviceMatrixView (pointer, rows, cols, leading dimension), for T in float, double,
/// __half, __nv_bfloat16; QOFT (quantized frozen bases, float activations) in oft::cuda_quant;
/// the BOFT and GOFT families as Butterfly<T, Parameterization, oft::cuda> (float, double) and
/// Givens<T, oft::cuda>; HRA as Householder<T, oft::cuda> (float, double).
/// Include it from .cu files compiled by nvcc. It does not include Eigen: besides what both
/// backends share (config, index, parameterizations, errors) it uses only the Eigen-free quantization
/// formats of quant/ (bnb4, int8, frozen_base).
/// Link CUDA::cudart and CUDA::cublas (CMake target oft::cuda does).

#if !defined(__CUDACC__)
#error "<oft/cuda.hpp> must be compiled by nvcc (include it from a .cu file)"
#endif

#include "cuda/adapter_bank.hpp"
#include "cuda/block_orthogonal.hpp"
#include "cuda/butterfly.hpp"
#include "cuda/device_view.hpp"
#include "cuda/error.hpp"
#include "cuda/givens.hpp"
#include "cuda/householder.hpp"
#include "cuda/linear.hpp"
#include "cuda/numeric.hpp"
#include "cuda/qoft_linear.hpp"
#include "cuda/quant.hpp"

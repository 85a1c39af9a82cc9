#pragma once
/// \file cuda/kernels_linear.hpp
/// Small helpers of OftLinear<cuda>: cuBLAS data types and the bias broadcast.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "../config.hpp"
#include "error.hpp"
#include "numeric.hpp"

namespace oft::detail::cuda {

template <class T>
cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>)
    return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, __half>)
    return CUDA_R_16F;
  else
    return CUDA_R_16BF;
}

/// z[t][o] = bias[o] for every row t.
template <class T>
__global__ void broadcast_rows_kernel(const T* bias, T* z, Index ldz, Index rows, Index cols) {
  const Index total = rows * cols;
  for (Index e = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index t = e / cols, o = e % cols;
    z[t * ldz + o] = bias[o];
  }
}

template <class T>
void broadcast_rows(const T* bias, T* z, Index ldz, Index rows, Index cols, cudaStream_t stream) {
  const Index total = rows * cols;
  if (total == 0) return;
  const Index threads = 256;
  const Index grid = std::min<Index>((total + threads - 1) / threads, 65535);
  broadcast_rows_kernel<T><<<static_cast<unsigned>(grid), threads, 0, stream>>>(bias, z, ldz, rows,
                                                                                cols);
  check_launch("broadcast_rows_kernel", "OftLinear<cuda>::forward (bias)");
}

}  // namespace oft::detail::cuda

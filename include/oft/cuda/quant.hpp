#pragma once
/// \file cuda/quant.hpp
/// Quantized frozen bases on the GPU (QOFT): the device views of bitsandbytes NF4/FP4 and
/// LLM.int8 weights, a kernel that dequantizes any rectangle of W into a float32 panel (the values
/// of the CPU dequantizers in quant/, bit for bit: one float32 product per value, then the
/// format's dtype rounding), and the two fused products of quant/fused_gemm.hpp:
///
///   forward   Z = Y W^T   panels of kFusedPanelWidth rows of W, each dequantized then one SGEMM
///   backward  dY = dZ W   panels of kFusedPanelWidth columns of W
///
/// The panel is caller-owned device scratch of fused_panel_floats(view) floats, so a layer keeps
/// the quantized bytes plus one panel, never the float W. Row-major activations (PyTorch's
/// layout); the GEMMs are cuBLAS's, fp32 throughout. Everything is enqueued on `stream`; nothing
/// is allocated.
///
/// Verified on an NVIDIA H200 (2026-11-26): tests/cuda/test_cuda_quant.cu compares every result
/// with the CPU dequantizers (bit for bit) and products (gamma_k bounds); memcheck and racecheck
/// clean. The QOFT layer over these products is cuda/qoft_linear.hpp.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "../config.hpp"
#include "../errors.hpp"
#include "../index.hpp"
#include "error.hpp"

namespace oft::cuda_quant {

/// Rows of W per forward panel, columns per backward panel. Wider than the CPU's 512 (a cache
/// size there): on an H200 (d = n_out = 4096, N = 4096, bench_cuda's cuda_qoft_base_step) the
/// two fused products took 5.83 / 5.53 / 5.48 / 5.47 ms with panels of 512 / 1024 / 2048 / 4096
/// against 5.40 ms for the dense float products; narrow panels make cuBLAS run small GEMMs.
inline constexpr Index kFusedPanelWidth = 2048;

/// What a dequantized value is rounded to after code * scale (quant/frozen_base.hpp's
/// DequantDtype: a float16 or bfloat16 model's bitsandbytes base).
enum class Rounding : int { F32 = 0, F16 = 1, BF16 = 2 };

/// NF4/FP4 in device memory: `packed` ((rows*cols+1)/2 bytes, first value in the high nibble),
/// `absmax` (one float per block of `blocksize` values of the flattened weight; with double
/// quantization, the absmax already read back), and the format's 16 code values.
struct Bnb4View {
  const std::uint8_t* packed = nullptr;
  const float* absmax = nullptr;
  Index rows = 0, cols = 0, blocksize = 64;
  std::array<float, 16> code{};
  Rounding rounding = Rounding::F32;
};

/// LLM.int8 in device memory: `values` (rows x cols int8) and one float `scales` per row (SCB).
struct Int8View {
  const std::int8_t* values = nullptr;
  const float* scales = nullptr;
  Index rows = 0, cols = 0;
};

/// Floats of panel scratch dequant_gemm_nt / dequant_gemm_nn need for a rows x cols base.
/// `width`: the panel width passed to the products (kFusedPanelWidth unless measured otherwise).
inline Index fused_panel_floats(Index rows, Index cols, Index width = kFusedPanelWidth) {
  return std::max(std::min(width, rows) * cols, rows * std::min(width, cols));
}

namespace detail {

struct Code16 {
  float v[16];
};

__device__ __forceinline__ float round_as(float value, Rounding rounding) {
  if (rounding == Rounding::F16) return __half2float(__float2half_rn(value));
  if (rounding == Rounding::BF16) return __bfloat162float(__float2bfloat16_rn(value));
  return value;
}

/// Values per thread and threads per block of the dequantize kernels: a thread dequantizes
/// kValuesPerThread consecutive columns of one row (one 16-byte store when the output allows it).
inline constexpr int kValuesPerThread = 4;
inline constexpr int kDequantThreads = 128;

/// Stores v[0..count) at dst: one float4 store when all four are there and dst is 16-byte
/// aligned, else one value at a time.
__device__ __forceinline__ void store_values(float* dst, const float (&v)[kValuesPerThread],
                                             Index count) {
  if (count == kValuesPerThread && (reinterpret_cast<std::uintptr_t>(dst) & 15) == 0) {
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    for (int k = 0; k < kValuesPerThread; ++k)
      if (k < count) dst[k] = v[k];
  }
}

/// out[i * ld + j] = W[row0 + i, col0 + j]. grid.x covers one row's columns (kValuesPerThread per
/// thread), grid.y strides over the rows, so no thread divides a flat index. Blocks of
/// 2^block_shift values. The kernels are templates (Out = float) so that a header included by
/// several .cu files defines them once.
template <class Out>
__global__ void dequantize_bnb4_kernel(const std::uint8_t* packed, const float* absmax, Index cols,
                                       int block_shift, Code16 code, Rounding rounding, Index row0,
                                       Index nrows, Index col0, Index ncols, Out* out, Index ld) {
  // The code in shared memory: a kernel-parameter array indexed by each thread's own 4-bit value
  // would be read through the constant cache, which serializes different addresses in a warp.
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code.v[threadIdx.x];
  __syncthreads();
  const Index j0 = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) * kValuesPerThread;
  if (j0 >= ncols) return;
  const Index count = ncols - j0 < kValuesPerThread ? ncols - j0 : kValuesPerThread;
  for (Index i = blockIdx.y; i < nrows; i += gridDim.y) {
    const Index e0 = (row0 + i) * cols + col0 + j0;  // index into the flattened weight
    float v[kValuesPerThread];
#pragma unroll
    for (int k = 0; k < kValuesPerThread; ++k) {
      if (k < count) {
        const Index e = e0 + k;
        const std::uint8_t byte = __ldg(packed + (e >> 1));
        const int index = (e & 1) ? (byte & 0xF) : (byte >> 4);
        // __fmul_rn: the product is rounded on its own, as on the CPU (no contraction later).
        v[k] = round_as(__fmul_rn(table[index], __ldg(absmax + (e >> block_shift))), rounding);
      }
    }
    store_values(out + i * ld + j0, v, count);
  }
}

template <class Out>
__global__ void dequantize_int8_kernel(const std::int8_t* values, const float* scales, Index cols,
                                       Index row0, Index nrows, Index col0, Index ncols, Out* out,
                                       Index ld) {
  const Index j0 = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) * kValuesPerThread;
  if (j0 >= ncols) return;
  const Index count = ncols - j0 < kValuesPerThread ? ncols - j0 : kValuesPerThread;
  for (Index i = blockIdx.y; i < nrows; i += gridDim.y) {
    const std::int8_t* q = values + (row0 + i) * cols + col0 + j0;
    const float scale = __ldg(scales + row0 + i);
    float v[kValuesPerThread];
#pragma unroll
    for (int k = 0; k < kValuesPerThread; ++k)
      // bitsandbytes' order: (q * SCB) * (1/127), each product rounded (quant/int8.hpp).
      if (k < count)
        v[k] = __fmul_rn(__fmul_rn(static_cast<float>(__ldg(q + k)), scale), 7.874015718698502e-3f);
    store_values(out + i * ld + j0, v, count);
  }
}

/// The 2D launch of the dequantize kernels for an nrows x ncols rectangle.
inline dim3 dequant_grid(Index nrows, Index ncols) {
  const Index per_block = static_cast<Index>(kDequantThreads) * kValuesPerThread;
  return dim3(static_cast<unsigned>((ncols + per_block - 1) / per_block),
              static_cast<unsigned>(std::min<Index>(nrows, 65535)));
}

/// C (m x n, row-major, ldc) = A (m x k, row-major) * op(B) + beta C in fp32; B row-major,
/// `transpose_b`: B is n x k (C = A B^T) else k x n. cuBLAS is column-major: C^T = op(B)^T A^T.
inline void sgemm_row_major(cublasHandle_t handle, Index m, Index n, Index k, const float* a,
                            Index lda, const float* b, Index ldb, bool transpose_b, float beta,
                            float* c, Index ldc, const char* where) {
  const float one = 1.0f;
  const auto to_int = [&](Index v) {
    oft::detail::require(v <= static_cast<Index>(2147483647), where, ": size ", v,
                         " exceeds cuBLAS's int range");
    return static_cast<int>(v);
  };
  oft::detail::cuda::check(cublasSgemm(handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N,
                                 to_int(n), to_int(m), to_int(k), &one, b, to_int(ldb), a,
                                 to_int(lda), &beta, c, to_int(ldc)),
                     "cublasSgemm", where);
}

}  // namespace detail

/// Dequantizes W[row0 : row0 + nrows, col0 : col0 + ncols] into `out` (device, leading dimension
/// ld) on `stream`.
inline void dequantize(const Bnb4View& w, Index row0, Index nrows, Index col0, Index ncols,
                       float* out, Index ld, cudaStream_t stream) {
  if (nrows * ncols == 0) return;
  oft::detail::require(
      w.blocksize >= 1 && w.blocksize <= (Index{1} << 30) && (w.blocksize & (w.blocksize - 1)) == 0,
      "cuda_quant::dequantize: blocksize ", w.blocksize,
      " is not a power of two (bitsandbytes allows 32, 64, ..., 4096)");
  int shift = 0;
  while ((Index{1} << shift) < w.blocksize) ++shift;
  detail::Code16 code{};
  for (int i = 0; i < 16; ++i) code.v[i] = w.code[static_cast<std::size_t>(i)];
  detail::dequantize_bnb4_kernel<float>
      <<<detail::dequant_grid(nrows, ncols), detail::kDequantThreads, 0, stream>>>(
          w.packed, w.absmax, w.cols, shift, code, w.rounding, row0, nrows, col0, ncols, out, ld);
  oft::detail::cuda::check_launch("dequantize_bnb4_kernel", "cuda_quant::dequantize");
}

inline void dequantize(const Int8View& w, Index row0, Index nrows, Index col0, Index ncols,
                       float* out, Index ld, cudaStream_t stream) {
  if (nrows * ncols == 0) return;
  detail::dequantize_int8_kernel<float>
      <<<detail::dequant_grid(nrows, ncols), detail::kDequantThreads, 0, stream>>>(
          w.values, w.scales, w.cols, row0, nrows, col0, ncols, out, ld);
  oft::detail::cuda::check_launch("dequantize_int8_kernel", "cuda_quant::dequantize");
}

/// Z = Y W^T (+ Z when `accumulate`): Y is N x d (row-major, leading dimension ldy >= d), Z is
/// N x n_out (ldz >= n_out). `panel`: fused_panel_floats(rows, cols) device floats. `handle` must
/// be bound to `stream`.
template <class View>
void dequant_gemm_nt(cublasHandle_t handle, const View& w, const float* y, Index ldy, Index n,
                     float* z, Index ldz, float* panel, cudaStream_t stream,
                     bool accumulate = false, Index panel_width = kFusedPanelWidth) {
  const Index d = w.cols, n_out = w.rows;
  oft::detail::require(panel_width >= 1, "cuda_quant::dequant_gemm_nt: panel width ", panel_width);
  for (Index p = 0; p < n_out; p += panel_width) {
    const Index width = std::min(panel_width, n_out - p);
    dequantize(w, p, width, 0, d, panel, d, stream);
    if (n > 0)
      detail::sgemm_row_major(handle, n, width, d, y, ldy, panel, d, true, accumulate ? 1.0f : 0.0f,
                              z + p, ldz, "dequant_gemm_nt");
  }
}

/// dY = dZ W: dZ is N x n_out (row-major, leading dimension lddz >= n_out), dY is N x d
/// (ldy >= d).
template <class View>
void dequant_gemm_nn(cublasHandle_t handle, const View& w, const float* dz, Index lddz, Index n,
                     float* dy, Index ldy, float* panel, cudaStream_t stream,
                     Index panel_width = kFusedPanelWidth) {
  const Index d = w.cols, n_out = w.rows;
  oft::detail::require(panel_width >= 1, "cuda_quant::dequant_gemm_nn: panel width ", panel_width);
  for (Index c = 0; c < d; c += panel_width) {
    const Index width = std::min(panel_width, d - c);
    dequantize(w, 0, n_out, c, width, panel, width, stream);
    if (n > 0)
      detail::sgemm_row_major(handle, n, width, n_out, dz, lddz, panel, width, false, 0.0f, dy + c,
                              ldy, "dequant_gemm_nn");
  }
}

}  // namespace oft::cuda_quant

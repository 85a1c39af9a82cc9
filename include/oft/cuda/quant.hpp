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
/// Status: compiled by nvcc in CI; verified on a GPU only when one is lent
/// (tests/cuda/test_cuda_quant.cu compares every result with the CPU dequantizers and products).
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

/// Rows of W per forward panel, columns per backward panel (as the CPU's kFusedPanelWidth).
inline constexpr Index kFusedPanelWidth = 512;

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
inline Index fused_panel_floats(Index rows, Index cols) {
  return std::max(std::min(kFusedPanelWidth, rows) * cols, rows * std::min(kFusedPanelWidth, cols));
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

/// out[i * ld + j] = W[row0 + i, col0 + j], one thread per value (grid-stride). The kernels are
/// templates (Out = float) so that a header included by several .cu files defines them once.
template <class Out>
__global__ void dequantize_bnb4_kernel(const std::uint8_t* packed, const float* absmax, Index cols,
                                       Index blocksize, Code16 code, Rounding rounding, Index row0, Index nrows,
                                       Index col0, Index ncols, Out* out, Index ld) {
  const Index total = nrows * ncols;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index i = t / ncols, j = t % ncols;
    const Index e = (row0 + i) * cols + col0 + j;  // index into the flattened weight
    const std::uint8_t byte = packed[e >> 1];
    const int index = (e & 1) ? (byte & 0xF) : (byte >> 4);
    // __fmul_rn: the product is rounded on its own, as on the CPU (no contraction with a later op).
    out[i * ld + j] = round_as(__fmul_rn(code.v[index], absmax[e / blocksize]), rounding);
  }
}

template <class Out>
__global__ void dequantize_int8_kernel(const std::int8_t* values, const float* scales, Index cols, Index row0,
                                       Index nrows, Index col0, Index ncols, Out* out, Index ld) {
  const Index total = nrows * ncols;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index i = t / ncols, j = t % ncols;
    const float q = static_cast<float>(values[(row0 + i) * cols + col0 + j]);
    // bitsandbytes' order: (q * SCB) * (1/127), each product rounded (quant/int8.hpp).
    out[i * ld + j] = __fmul_rn(__fmul_rn(q, scales[row0 + i]), 7.874015718698502e-3f);
  }
}

inline unsigned grid_for(Index total) {
  return static_cast<unsigned>(std::min<Index>((total + 255) / 256, 65535));
}

/// C (m x n, row-major, ldc) = A (m x k, row-major) * op(B) in fp32; B row-major, `transpose_b`:
/// B is n x k (C = A B^T) else k x n. cuBLAS is column-major: C^T = op(B)^T A^T.
inline void sgemm_row_major(cublasHandle_t handle, Index m, Index n, Index k, const float* a, Index lda,
                            const float* b, Index ldb, bool transpose_b, float* c, Index ldc, const char* where) {
  const float one = 1.0f, zero = 0.0f;
  const auto to_int = [&](Index v) {
    oft::detail::require(v <= static_cast<Index>(2147483647), where, ": size ", v, " exceeds cuBLAS's int range");
    return static_cast<int>(v);
  };
  cuda_detail::check(cublasSgemm(handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, to_int(n), to_int(m),
                                 to_int(k), &one, b, to_int(ldb), a, to_int(lda), &zero, c, to_int(ldc)),
                     "cublasSgemm", where);
}

}  // namespace detail

/// Dequantizes W[row0 : row0 + nrows, col0 : col0 + ncols] into `out` (device, leading dimension
/// ld) on `stream`.
inline void dequantize(const Bnb4View& w, Index row0, Index nrows, Index col0, Index ncols, float* out, Index ld,
                       cudaStream_t stream) {
  if (nrows * ncols == 0) return;
  detail::Code16 code{};
  for (int i = 0; i < 16; ++i) code.v[i] = w.code[static_cast<std::size_t>(i)];
  detail::dequantize_bnb4_kernel<float><<<detail::grid_for(nrows * ncols), 256, 0, stream>>>(
      w.packed, w.absmax, w.cols, w.blocksize, code, w.rounding, row0, nrows, col0, ncols, out, ld);
  cuda_detail::check_launch("dequantize_bnb4_kernel", "cuda_quant::dequantize");
}

inline void dequantize(const Int8View& w, Index row0, Index nrows, Index col0, Index ncols, float* out, Index ld,
                       cudaStream_t stream) {
  if (nrows * ncols == 0) return;
  detail::dequantize_int8_kernel<float><<<detail::grid_for(nrows * ncols), 256, 0, stream>>>(
      w.values, w.scales, w.cols, row0, nrows, col0, ncols, out, ld);
  cuda_detail::check_launch("dequantize_int8_kernel", "cuda_quant::dequantize");
}

/// Z = Y W^T: Y is N x d (row-major, ld d), Z is N x n_out (row-major, ld ldz >= n_out).
/// `panel`: fused_panel_floats(rows, cols) device floats. `handle` must be bound to `stream`.
template <class View>
void dequant_gemm_nt(cublasHandle_t handle, const View& w, const float* y, Index n, float* z, Index ldz,
                     float* panel, cudaStream_t stream) {
  const Index d = w.cols, n_out = w.rows;
  for (Index p = 0; p < n_out; p += kFusedPanelWidth) {
    const Index width = std::min(kFusedPanelWidth, n_out - p);
    dequantize(w, p, width, 0, d, panel, d, stream);
    if (n > 0) detail::sgemm_row_major(handle, n, width, d, y, d, panel, d, true, z + p, ldz, "dequant_gemm_nt");
  }
}

/// dY = dZ W: dZ is N x n_out (row-major, ld n_out), dY is N x d (row-major, ld ldy >= d).
template <class View>
void dequant_gemm_nn(cublasHandle_t handle, const View& w, const float* dz, Index n, float* dy, Index ldy,
                     float* panel, cudaStream_t stream) {
  const Index d = w.cols, n_out = w.rows;
  for (Index c = 0; c < d; c += kFusedPanelWidth) {
    const Index width = std::min(kFusedPanelWidth, d - c);
    dequantize(w, 0, n_out, c, width, panel, width, stream);
    if (n > 0)
      detail::sgemm_row_major(handle, n, width, n_out, dz, n_out, panel, width, false, dy + c, ldy,
                              "dequant_gemm_nn");
  }
}

}  // namespace oft::cuda_quant

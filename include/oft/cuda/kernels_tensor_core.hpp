#pragma once
/// \file cuda/kernels_tensor_core.hpp
/// Tensor-core kernels for 16-bit activations (__half, __nv_bfloat16) with b a multiple of 16
/// (b <= 64), through the WMMA API (16 x 16 x 16 tiles, fp32 accumulators): sm_70 or newer for
/// __half, sm_80 or newer for __nv_bfloat16, checked on the host against both the device and the
/// architecture the kernels were compiled for (use_tensor_core_path); the CUDA-core kernels run
/// everywhere else.
///
/// Precision: tensor cores multiply 16-bit inputs, but R is fp32. Each R_g is therefore split
/// once per set_generators into R_hi = T(R) and R_lo = T(R - R_hi), and every product is
/// X * R_hi + X * R_lo accumulated in fp32. X is exact in T, so the result carries the error of
/// R_hi + R_lo (about 2^-16 relative for bf16, 2^-22 for fp16) and is rounded to T once, on
/// store: well below T's own rounding (2^-8 for bf16). The backward's G_i = X_i^T dY_i multiplies
/// exact 16-bit values into fp32, so it is as accurate as an fp32 sum.
///
/// Layout: a thread block of 8 warps owns one diagonal block i and token tiles of 128 rows
/// (16 per warp); X (or dY) tiles and R_hi, R_lo are staged in shared memory with row padding,
/// results go through an fp32 staging tile so stores to global memory are coalesced.

#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "error.hpp"
#include "kernels_apply.hpp"
#include "kernels_generators.hpp"
#include "launch.hpp"
#include "numeric.hpp"

namespace oft::detail::cuda {

inline constexpr int kTensorWarps = 8;
inline constexpr int kTensorThreads = 32 * kTensorWarps;
inline constexpr int kTensorLargestBlock = 64;

/// The oldest compute capability with WMMA for T: 7.0 for __half, 8.0 for __nv_bfloat16.
template <class T>
OFT_HOST_DEVICE constexpr int tensor_core_min_arch() {
  return std::is_same_v<T, __nv_bfloat16> ? 80 : 70;
}

/// Block sizes the tensor-core kernels handle: multiples of 16 up to 64.
inline bool tensor_core_block_size(Index b) {
  return b >= 16 && b % 16 == 0 && b <= kTensorLargestBlock;
}

/// Shared-memory carve-up of the tensor-core kernels, identical on host and device. 16-bit rows
/// are padded by 8 elements and fp32 rows by 4: WMMA needs leading dimensions that are
/// multiples of 16 bytes and tile pointers that are 32-byte aligned (the padding also spreads
/// rows over the banks). Regions, in order: apply: x tile, R_hi, R_lo, fp32 out tile;
/// backward: dY tile, X tile, R_hi, R_lo, fp32 out tile, fp32 G staging (kgroups b x ldo).
/// wmma_aligned() checks every offset and stride that WMMA sees; the static_asserts below run
/// it for every supported b, and the host test suite runs it too.
struct TensorSharedLayout {
  int b, lda, ldo, kgroups;
  std::size_t x_tile, r_block, out_tile, g_stage;  // bytes of one region
  std::size_t dy_offset, x_offset, hi_offset, lo_offset, out_offset, g_offset, total;

  OFT_HOST_DEVICE constexpr TensorSharedLayout(int block_size, bool backward)
      : b(block_size),
        lda(block_size + 8),
        ldo(block_size + 4),
        kgroups(groups_for(block_size)),
        x_tile(static_cast<std::size_t>(kTensorTileRows) * (block_size + 8) * 2),
        r_block(static_cast<std::size_t>(block_size) * (block_size + 8) * 2),
        out_tile(static_cast<std::size_t>(kTensorTileRows) * (block_size + 4) * 4),
        g_stage(backward ? static_cast<std::size_t>(groups_for(block_size)) * block_size *
                               (block_size + 4) * 4
                         : 0),
        dy_offset(0),
        x_offset(backward ? x_tile : 0),
        hi_offset(x_offset + x_tile),
        lo_offset(hi_offset + r_block),
        out_offset(lo_offset + r_block),
        g_offset(out_offset + out_tile),
        total(g_offset + g_stage) {}

  /// Warps that share one 16 x 16 tile of G (when there are fewer tiles than warps).
  OFT_HOST_DEVICE static constexpr int groups_for(int block_size) {
    return (block_size / 16) * (block_size / 16) >= kTensorWarps
               ? 1
               : kTensorWarps / ((block_size / 16) * (block_size / 16));
  }
  OFT_HOST_DEVICE constexpr std::size_t bytes() const { return total; }

  /// Every pointer WMMA loads or stores is 32-byte aligned given a 32-byte aligned base:
  /// region offsets, the 16-row and 16-column steps inside the 16-bit and fp32 tiles, the
  /// kgroup stride of the G staging; and the leading dimensions are multiples of 16 bytes.
  OFT_HOST_DEVICE constexpr bool wmma_aligned() const {
    const std::size_t a = kWmmaAlignment;
    const std::size_t lda_bytes = static_cast<std::size_t>(lda) * 2;
    const std::size_t ldo_bytes = static_cast<std::size_t>(ldo) * 4;
    return dy_offset % a == 0 && x_offset % a == 0 && hi_offset % a == 0 && lo_offset % a == 0 &&
           out_offset % a == 0 && g_offset % a == 0 && lda_bytes % 16 == 0 &&
           ldo_bytes % 16 == 0 && (16 * lda_bytes) % a == 0 && (16 * ldo_bytes) % a == 0 &&
           (16 * 2) % a == 0 && (16 * 4) % a == 0 &&
           (static_cast<std::size_t>(b) * ldo_bytes) % a == 0;
  }
};

static_assert(TensorSharedLayout(16, false).wmma_aligned() &&
                  TensorSharedLayout(16, true).wmma_aligned() &&
                  TensorSharedLayout(32, false).wmma_aligned() &&
                  TensorSharedLayout(32, true).wmma_aligned() &&
                  TensorSharedLayout(48, false).wmma_aligned() &&
                  TensorSharedLayout(48, true).wmma_aligned() &&
                  TensorSharedLayout(64, false).wmma_aligned() &&
                  TensorSharedLayout(64, true).wmma_aligned(),
              "a tensor-core shared-memory region or stride lost WMMA's 32-byte alignment");

/// What decides whether the tensor-core path can run, as plain numbers (so that the decision is
/// a pure function, testable on the host with made-up values).
struct TensorCoreEnvironment {
  int device_arch = 0;           ///< the device's compute capability, major * 10 + minor
  int kernel_arch = 0;           ///< virtual architecture the tensor-core kernels were compiled
                                 ///< for (cudaFuncAttributes::ptxVersion; 0: none loads)
  std::size_t shared_limit = 0;  ///< dynamic shared bytes both tensor-core kernels may use
};

/// True when apply and backward of BlockOrthogonal<T, ..., cuda> run on tensor cores: 16-bit T,
/// b a multiple of 16 up to 64, a device and a compiled kernel of at least
/// tensor_core_min_arch<T>() (a kernel built from PTX for an older architecture has no WMMA:
/// see tensor_cores_compiled), and the backward's shared memory fits. Otherwise the CUDA-core
/// kernels run (same results within the documented bounds, slower).
template <class T>
bool use_tensor_core_path(Index b, const TensorCoreEnvironment& env) {
  if constexpr (!is_half_precision_v<T>) {
    (void)b;
    (void)env;
    return false;
  } else {
    return tensor_core_block_size(b) && env.device_arch >= tensor_core_min_arch<T>() &&
           env.kernel_arch >= tensor_core_min_arch<T>() &&
           TensorSharedLayout(static_cast<int>(b), true).bytes() <= env.shared_limit &&
           TensorSharedLayout(static_cast<int>(b), false).bytes() <= env.shared_limit;
  }
}

/// True in a device compilation for an architecture with WMMA for T (and in the host pass).
/// The kernels compile their WMMA code only where this holds: bf16 fragments do not exist below
/// sm_80 (mma.h), half fragments below sm_70. Elsewhere the kernel body is a trap that the host
/// never launches (use_tensor_core_path checks the kernel's architecture).
template <class T>
__host__ __device__ constexpr bool tensor_cores_compiled() {
#if defined(__CUDA_ARCH__)
  return __CUDA_ARCH__ >= 10 * tensor_core_min_arch<T>();
#else
  return true;
#endif
}

/// dst (kTensorTileRows x lda) = rows [row0, row0+rows) of block column col0, zero beyond `rows`.
/// vec: src rows and col0 are 16-byte aligned, so 8 elements move per load.
template <class T>
__device__ void stage_tile(const T* src, Index ld, Index row0, Index rows, Index col0, int b,
                           T* dst, int lda, bool vec) {
  if (vec) {
    const int per_row = b / 8;
    for (int e = threadIdx.x; e < static_cast<int>(kTensorTileRows) * per_row; e += blockDim.x) {
      const int r = e / per_row, c = (e % per_row) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows) v = *reinterpret_cast<const uint4*>(src + (row0 + r) * ld + col0 + c);
      *reinterpret_cast<uint4*>(dst + r * lda + c) = v;
    }
  } else {
    for (int e = threadIdx.x; e < static_cast<int>(kTensorTileRows) * b; e += blockDim.x) {
      const int r = e / b, c = e % b;
      dst[r * lda + c] = r < rows ? src[(row0 + r) * ld + col0 + c] : T(0.0f);
    }
  }
}

/// hi/lo (b x lda) of M_g = R_g or R_g^T.
template <class T>
__device__ void stage_split_block(const T* hi, const T* lo, int b, bool transpose, T* mhi,
                                  T* mlo, int lda) {
  for (int e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int j = e / b, c = e % b;
    const int from = transpose ? c * b + j : e;
    mhi[j * lda + c] = hi[from];
    mlo[j * lda + c] = lo[from];
  }
}

/// out (16 rows of warp w, fp32) = A (16 rows of `a`) * (M_hi + M_lo); every warp of the block.
template <class T>
__device__ void warp_rows_times_block(const T* a, const T* mhi, const T* mlo, float* out, int b,
                                      int lda, int ldo) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32;
  const T* a_rows = a + warp * 16 * lda;
  float* out_rows = out + warp * 16 * ldo;
  for (int ct = 0; ct < b / 16; ++ct) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kt = 0; kt < b / 16; ++kt) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, a_rows + kt * 16, lda);
      wmma::load_matrix_sync(fb, mhi + kt * 16 * lda + ct * 16, lda);
      wmma::mma_sync(acc, fa, fb, acc);
      wmma::load_matrix_sync(fb, mlo + kt * 16 * lda + ct * 16, lda);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out_rows + ct * 16, acc, ldo, wmma::mem_row_major);
  }
}

/// dst rows [row0, row0+rows) of block column col0 = T(out). vec: 8 elements per 16-byte store.
template <class T>
__device__ void store_tile(const float* out, int ldo, T* dst, Index ld, Index row0, Index rows,
                           Index col0, int b, bool vec) {
  if (vec) {
    const int per_row = b / 8;
    for (int e = threadIdx.x; e < static_cast<int>(rows) * per_row; e += blockDim.x) {
      const int r = e / per_row, c = (e % per_row) * 8;
      union {
        uint4 vector;
        T scalars[8];
      } pack;
      for (int k = 0; k < 8; ++k) pack.scalars[k] = from_accumulator<T>(out[r * ldo + c + k]);
      *reinterpret_cast<uint4*>(dst + (row0 + r) * ld + col0 + c) = pack.vector;
    }
  } else {
    for (int e = threadIdx.x; e < static_cast<int>(rows) * b; e += blockDim.x) {
      const int r = e / b, c = e % b;
      dst[(row0 + r) * ld + col0 + c] = from_accumulator<T>(out[r * ldo + c]);
    }
  }
}

/// Body of apply_tensor_core_kernel (instantiated only where tensor_cores_compiled<T>()).
template <class T>
__device__ void apply_tensor_core_tiles(const T* x, Index ldx, T* y, Index ldy, Index n,
                                        const BlockLayout& layout, const T* hi, const T* lo,
                                        bool transpose, bool vec_in, bool vec_out) {
  unsigned char* shared = dynamic_shared_memory();
  const int b = static_cast<int>(layout.b);
  const TensorSharedLayout s(b, false);
  T* xs = reinterpret_cast<T*>(shared + s.x_offset);
  T* mhi = reinterpret_cast<T*>(shared + s.hi_offset);
  T* mlo = reinterpret_cast<T*>(shared + s.lo_offset);
  float* out = reinterpret_cast<float*>(shared + s.out_offset);
  const Index i = blockIdx.x, col0 = i * b;
  if (!block_is_active(layout, i)) {
    copy_block_column(x, ldx, y, ldy, n, b, col0, kTensorTileRows);
    return;
  }
  const Index offset = (layout.shared ? 0 : i) * static_cast<Index>(b) * b;
  stage_split_block(hi + offset, lo + offset, b, transpose, mhi, mlo, s.lda);
  const Index tiles = token_tiles(n, kTensorTileRows);
  for (Index tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const Index row0 = tile * kTensorTileRows, rows = min(kTensorTileRows, n - row0);
    stage_tile(x, ldx, row0, rows, col0, b, xs, s.lda, vec_in);
    __syncthreads();
    warp_rows_times_block(xs, mhi, mlo, out, b, s.lda, s.ldo);
    __syncthreads();
    store_tile(out, s.ldo, y, ldy, row0, rows, col0, b, vec_out);
    __syncthreads();
  }
}

/// Y_i = X_i M_i on tensor cores (M = R or R^T, split into hi + lo). A trap where the
/// architecture has no WMMA for T (tensor_cores_compiled); the host never launches it there.
template <class T>
__global__ void __launch_bounds__(kTensorThreads)
    apply_tensor_core_kernel(const T* x, Index ldx, T* y, Index ldy, Index n, BlockLayout layout,
                             const T* hi, const T* lo, bool transpose, bool vec_in,
                             bool vec_out) {
  if constexpr (tensor_cores_compiled<T>()) {
    apply_tensor_core_tiles(x, ldx, y, ldy, n, layout, hi, lo, transpose, vec_in, vec_out);
  } else {
    __trap();
  }
}

/// Body of backward_tensor_core_kernel (instantiated only where tensor_cores_compiled<T>()).
template <class T>
__device__ void backward_tensor_core_tiles(const T* x, Index ldx, const T* dy, Index lddy, T* dx,
                                           Index lddx, Index n, const BlockLayout& layout,
                                           const T* hi, const T* lo, float* partials, bool vec_in,
                                           bool vec_out) {
  using namespace nvcuda;
  unsigned char* shared = dynamic_shared_memory();
  const int b = static_cast<int>(layout.b);
  const int area = b * b;
  const TensorSharedLayout s(b, true);
  T* dys = reinterpret_cast<T*>(shared + s.dy_offset);
  T* xs = reinterpret_cast<T*>(shared + s.x_offset);
  T* mhi = reinterpret_cast<T*>(shared + s.hi_offset);
  T* mlo = reinterpret_cast<T*>(shared + s.lo_offset);
  float* out = reinterpret_cast<float*>(shared + s.out_offset);
  float* g_stage = reinterpret_cast<float*>(shared + s.g_offset);
  const Index i = blockIdx.x, col0 = i * b;
  float* slot = partials == nullptr
                    ? nullptr
                    : partials + (static_cast<Index>(blockIdx.y) * layout.blocks + i) * area;
  if (!block_is_active(layout, i)) {
    if (dx != nullptr) copy_block_column(dy, lddy, dx, lddx, n, b, col0, kTensorTileRows);
    if (slot != nullptr)
      for (int e = threadIdx.x; e < area; e += blockDim.x) slot[e] = 0.0f;
    return;
  }
  const Index offset = (layout.shared ? 0 : i) * static_cast<Index>(area);
  stage_split_block(hi + offset, lo + offset, b, true, mhi, mlo, s.lda);  // R^T for dX

  // G tiles (16 x 16) of this warp: with fewer tiles than warps, kgroups warps share a tile and
  // split its token steps; otherwise each warp owns tiles warp, warp + 8 (at most 2 for b = 64).
  const int warp = threadIdx.x / 32;
  const int tiles_per_side = b / 16;
  const int g_tiles = tiles_per_side * tiles_per_side;
  const int kgroup = s.kgroups > 1 ? warp / g_tiles : 0;
  constexpr int kMaxOwned = (kTensorLargestBlock / 16) * (kTensorLargestBlock / 16) / kTensorWarps;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> g_acc[kMaxOwned];
  for (int o = 0; o < kMaxOwned; ++o) wmma::fill_fragment(g_acc[o], 0.0f);

  const Index tiles = token_tiles(n, kTensorTileRows);
  for (Index tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const Index row0 = tile * kTensorTileRows, rows = min(kTensorTileRows, n - row0);
    stage_tile(dy, lddy, row0, rows, col0, b, dys, s.lda, vec_in);
    if (slot != nullptr) stage_tile(x, ldx, row0, rows, col0, b, xs, s.lda, vec_in);
    __syncthreads();
    if (slot != nullptr) {
      for (int o = 0; o < kMaxOwned; ++o) {
        const int t = s.kgroups > 1 ? warp % g_tiles : warp + o * kTensorWarps;
        if ((s.kgroups > 1 && o > 0) || t >= g_tiles) break;
        const int pt = t / tiles_per_side, qt = t % tiles_per_side;
        for (int ks = kgroup; ks < static_cast<int>(kTensorTileRows) / 16; ks += s.kgroups) {
          // A = X^T: element (p, token) of the tile sits at xs[token * lda + p] (column-major).
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fa, xs + ks * 16 * s.lda + pt * 16, s.lda);
          wmma::load_matrix_sync(fb, dys + ks * 16 * s.lda + qt * 16, s.lda);
          wmma::mma_sync(g_acc[o], fa, fb, g_acc[o]);
        }
      }
    }
    if (dx != nullptr) {
      warp_rows_times_block(dys, mhi, mlo, out, b, s.lda, s.ldo);
      __syncthreads();
      store_tile(out, s.ldo, dx, lddx, row0, rows, col0, b, vec_out);
    }
    __syncthreads();
  }
  if (slot != nullptr) {
    for (int o = 0; o < kMaxOwned; ++o) {
      const int t = s.kgroups > 1 ? warp % g_tiles : warp + o * kTensorWarps;
      if ((s.kgroups > 1 && o > 0) || t >= g_tiles) break;
      const int pt = t / tiles_per_side, qt = t % tiles_per_side;
      wmma::store_matrix_sync(g_stage + kgroup * b * s.ldo + pt * 16 * s.ldo + qt * 16, g_acc[o],
                              s.ldo, wmma::mem_row_major);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < area; e += blockDim.x) {
      const int p = e / b, q = e % b;
      float sum = 0.0f;
      for (int k = 0; k < s.kgroups; ++k) sum += g_stage[k * b * s.ldo + p * s.ldo + q];
      slot[e] = sum;
    }
  }
}

/// dX_i = dY_i R_i^T and the chunk's partial X_i^T dY_i on tensor cores. A trap where the
/// architecture has no WMMA for T (tensor_cores_compiled); the host never launches it there.
template <class T>
__global__ void __launch_bounds__(kTensorThreads)
    backward_tensor_core_kernel(const T* x, Index ldx, const T* dy, Index lddy, T* dx, Index lddx,
                                Index n, BlockLayout layout, const T* hi, const T* lo,
                                float* partials, bool vec_in, bool vec_out) {
  if constexpr (tensor_cores_compiled<T>()) {
    backward_tensor_core_tiles(x, ldx, dy, lddy, dx, lddx, n, layout, hi, lo, partials, vec_in,
                               vec_out);
  } else {
    __trap();
  }
}

/// hi = T(R), lo = T(R - float(hi)) elementwise.
template <class T>
__global__ void split_blocks_kernel(const float* blocks, Index count, T* hi, T* lo) {
  for (Index e = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<Index>(gridDim.x) * blockDim.x) {
    const float r = blocks[e];
    const T h = from_accumulator<T>(r);
    hi[e] = h;
    lo[e] = from_accumulator<T>(r - to_accumulator<float>(h));
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers (host)
// ---------------------------------------------------------------------------------------------

/// True when 8-element (16-byte) vector loads are valid for every row of a block column.
template <class T>
bool rows_are_16_byte_aligned(const T* p, Index ld) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && (ld * static_cast<Index>(sizeof(T))) % 16 == 0;
}

/// The TensorCoreEnvironment of the current device for T: its compute capability, the virtual
/// architecture this program's tensor-core kernels for T were compiled for (0 when the program
/// has no image of them for this device), and the dynamic shared memory both may use (raising
/// their limits, see DynamicSharedLimits). For float and double: all zero (no tensor-core path).
template <class T>
TensorCoreEnvironment tensor_core_environment(const DeviceInfo& device, const char* where) {
  TensorCoreEnvironment env;
  env.device_arch = device.compute_capability;
  if constexpr (is_half_precision_v<T>) {
    cudaFuncAttributes apply{}, backward{};
    if (cudaFuncGetAttributes(&apply, apply_tensor_core_kernel<T>) != cudaSuccess ||
        cudaFuncGetAttributes(&backward, backward_tensor_core_kernel<T>) != cudaSuccess) {
      (void)cudaGetLastError();  // no loadable image: the CUDA-core kernels run instead
      return env;
    }
    env.kernel_arch = std::min(apply.ptxVersion, backward.ptxVersion);
    env.shared_limit = std::min(dynamic_shared_limit(apply_tensor_core_kernel<T>, where),
                                dynamic_shared_limit(backward_tensor_core_kernel<T>, where));
  }
  return env;
}

template <class T>
void split_blocks(const float* blocks, Index count, T* hi, T* lo, cudaStream_t stream) {
  if (count == 0) return;
  const Index threads = 256;
  const Index grid = std::min<Index>((count + threads - 1) / threads, 65535);
  split_blocks_kernel<T><<<static_cast<unsigned>(grid), threads, 0, stream>>>(blocks, count, hi,
                                                                              lo);
  check_launch("split_blocks_kernel", "BlockOrthogonal<cuda>::set_generators");
}

template <class T>
void apply_tensor_core(const T* x, Index ldx, T* y, Index ldy, Index n, const BlockLayout& layout,
                       const T* hi, const T* lo, bool transpose, cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::apply (tensor cores)";
  if (n == 0 || layout.blocks == 0) return;
  const std::size_t bytes = TensorSharedLayout(static_cast<int>(layout.b), false).bytes();
  require_dynamic_shared(apply_tensor_core_kernel<T>, bytes, layout.b, "apply_tensor_core_kernel",
                         where);
  const bool vec_in = rows_are_16_byte_aligned(x, ldx);
  const bool vec_out = rows_are_16_byte_aligned(y, ldy);
  const dim3 grid(static_cast<unsigned>(layout.blocks),
                  tile_grid(token_tiles(n, kTensorTileRows)));
  apply_tensor_core_kernel<T><<<grid, kTensorThreads, bytes, stream>>>(
      x, ldx, y, ldy, n, layout, hi, lo, transpose, vec_in, vec_out);
  check_launch("apply_tensor_core_kernel", where);
}

template <class T>
void backward_tensor_core(const T* x, Index ldx, const T* dy, Index lddy, T* dx, Index lddx,
                          Index n, const BlockLayout& layout, const T* hi, const T* lo,
                          float* partials, Index chunks, cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::backward (tensor cores)";
  if (layout.blocks == 0) return;
  const std::size_t bytes = TensorSharedLayout(static_cast<int>(layout.b), true).bytes();
  require_dynamic_shared(backward_tensor_core_kernel<T>, bytes, layout.b,
                         "backward_tensor_core_kernel", where);
  const bool vec_in = rows_are_16_byte_aligned(dy, lddy) &&
                      (partials == nullptr || rows_are_16_byte_aligned(x, ldx));
  const bool vec_out = dx == nullptr || rows_are_16_byte_aligned(dx, lddx);
  const unsigned rows = partials != nullptr ? static_cast<unsigned>(chunks)
                                            : tile_grid(token_tiles(n, kTensorTileRows));
  const dim3 grid(static_cast<unsigned>(layout.blocks), rows);
  backward_tensor_core_kernel<T><<<grid, kTensorThreads, bytes, stream>>>(
      x, ldx, dy, lddy, dx, lddx, n, layout, hi, lo, partials, vec_in, vec_out);
  check_launch("backward_tensor_core_kernel", where);
}

}  // namespace oft::detail::cuda

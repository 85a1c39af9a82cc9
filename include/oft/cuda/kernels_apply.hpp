#pragma once
/// \file cuda/kernels_apply.hpp
/// Token-side kernels on CUDA cores (any block size, any activation type): Y_i = X_i M_i per
/// block, and the fused backward dX_i = dY_i R_i^T with per-chunk partial sums of
/// G_i = X_i^T dY_i. One thread block owns one diagonal block i (blockIdx.x) and a strided set of
/// token tiles (blockIdx.y); it stages M_i and each tile in shared memory and accumulates in
/// cuda_parameter_t<T>. Because a thread block reads its whole tile before writing it, outputs may
/// alias inputs exactly (in place). Partial G sums go to a workspace, one slot per
/// (chunk, block), and are reduced in a fixed order (deterministic, no atomics).
/// 16-bit activations with b % 16 == 0 take the tensor-core kernels instead
/// (kernels_tensor_core.hpp).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "../config.hpp"
#include "error.hpp"
#include "kernels_generators.hpp"
#include "launch.hpp"
#include "numeric.hpp"

namespace oft::detail::cuda {

/// Where the blocks of an operator are and which act as the identity.
struct BlockLayout {
  Index blocks = 0;                      ///< r
  Index b = 0;                           ///< block size
  bool shared = false;                   ///< all blocks use generator 0
  const unsigned char* active = nullptr;  ///< r flags in device memory, nullptr: all active
};

inline constexpr int kSimtThreads = 256;
inline constexpr Index kSimtTileRows = 32;
inline constexpr Index kTensorTileRows = 128;

__host__ __device__ inline Index token_tiles(Index n, Index rows) { return (n + rows - 1) / rows; }

/// Token chunks of the backward's partial G sums: enough thread blocks (about 8 per SM) to fill
/// the GPU, never more than there are token tiles or than token_grid_limit(), at least one (so
/// N = 0 still writes zeros). Each chunk is one thread block of the grid's y dimension, which
/// loops over the tiles chunk, chunk + chunks, ...
inline Index gradient_chunks(Index n, Index blocks, int multiprocessors, bool tensor_cores) {
  const Index tiles = token_tiles(n, tensor_cores ? kTensorTileRows : kSimtTileRows);
  const Index wanted = (8 * static_cast<Index>(multiprocessors) + blocks - 1) / blocks;
  return std::max<Index>(
      1, std::min<Index>({tiles, wanted, static_cast<Index>(token_grid_limit())}));
}

/// gridDim.y for a loop over `tiles` token tiles (the kernels stride by gridDim.y): one thread
/// block per tile up to token_grid_limit() (CUDA's 65,535), beyond that several tiles each.
inline unsigned tile_grid(Index tiles) {
  return static_cast<unsigned>(
      std::max<Index>(1, std::min<Index>(tiles, static_cast<Index>(token_grid_limit()))));
}

__device__ __forceinline__ bool block_is_active(const BlockLayout& layout, Index i) {
  return layout.active == nullptr || layout.active[i] != 0;
}

/// dst (rows x b, contiguous) = src rows [row0, row0+rows), columns [col0, col0+b), converted.
template <class T, class P>
__device__ void load_tile(const T* src, Index ld, Index row0, Index rows, Index col0, int b,
                          P* dst) {
  for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
    const Index r = e / b, c = e % b;
    dst[e] = to_accumulator<P>(src[(row0 + r) * ld + col0 + c]);
  }
}

/// Copies block column i of every token tile this thread block owns (inactive blocks: Y_i = X_i).
template <class T>
__device__ void copy_block_column(const T* src, Index lds, T* dst, Index ldd, Index n, int b,
                                  Index col0, Index tile_rows) {
  if (static_cast<const void*>(src) == static_cast<const void*>(dst)) return;  // in place
  const Index tiles = token_tiles(n, tile_rows);
  for (Index tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const Index row0 = tile * tile_rows, rows = min(tile_rows, n - row0);
    for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
      const Index r = e / b, c = e % b;
      dst[(row0 + r) * ldd + col0 + c] = src[(row0 + r) * lds + col0 + c];
    }
  }
}

/// ms (b x b, contiguous) = m or m^T, for a row-major b x b block m.
template <class P>
__device__ void stage_block(const P* m, int b, bool transpose, P* ms) {
  for (int e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int j = e / b, c = e % b;
    ms[e] = transpose ? m[c * b + j] : m[e];
  }
}

/// dst rows [row0, row0+rows) of block column col0 = T(tile * ms): tile is rows x b, ms is b x b,
/// both contiguous in shared memory. Used by the apply (X_i M_i) and the backward (dY_i R_i^T).
template <class T, class P>
__device__ void store_tile_product(const P* tile, const P* ms, Index rows, int b, T* dst,
                                   Index ld, Index row0, Index col0) {
  for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
    const int r = static_cast<int>(e / b), c = static_cast<int>(e % b);
    P sum = P(0);
    for (int j = 0; j < b; ++j) sum += tile[r * b + j] * ms[j * b + c];
    dst[(row0 + r) * ld + col0 + c] = from_accumulator<T>(sum);
  }
}

/// Y_i = X_i M_i (transpose: X_i M_i^T), M_g = mats + g*b*b row-major.
template <class T, class P>
__global__ void apply_simt_kernel(const T* x, Index ldx, T* y, Index ldy, Index n,
                                  BlockLayout layout, const P* mats, bool transpose) {
  P* ms = reinterpret_cast<P*>(dynamic_shared_memory());
  const int b = static_cast<int>(layout.b);
  const Index i = blockIdx.x, col0 = i * b;
  P* xs = ms + b * b;
  if (!block_is_active(layout, i)) {
    copy_block_column(x, ldx, y, ldy, n, b, col0, kSimtTileRows);
    return;
  }
  stage_block(mats + (layout.shared ? 0 : i) * static_cast<Index>(b) * b, b, transpose, ms);
  const Index tiles = token_tiles(n, kSimtTileRows);
  for (Index tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const Index row0 = tile * kSimtTileRows, rows = min(kSimtTileRows, n - row0);
    load_tile(x, ldx, row0, rows, col0, b, xs);
    __syncthreads();
    store_tile_product(xs, ms, rows, b, y, ldy, row0, col0);
    __syncthreads();  // the next tile overwrites xs
  }
}

/// dX_i = dY_i R_i^T (when dx != nullptr) and, when partials != nullptr, the partial sum of
/// X_i^T dY_i over the tiles of chunk blockIdx.y into partials[(chunk * r + i) * b*b].
template <class T, class P>
__global__ void backward_simt_kernel(const T* x, Index ldx, const T* dy, Index lddy, T* dx,
                                     Index lddx, Index n, BlockLayout layout, const P* blocks,
                                     P* partials) {
  const int b = static_cast<int>(layout.b);
  const int area = b * b;
  const Index i = blockIdx.x, col0 = i * b;
  P* ms = reinterpret_cast<P*>(dynamic_shared_memory());  // R_i^T
  P* gs = ms + area;
  P* xs = gs + area;
  P* dys = xs + kSimtTileRows * b;
  P* slot = partials == nullptr
                ? nullptr
                : partials + (static_cast<Index>(blockIdx.y) * layout.blocks + i) * area;
  if (!block_is_active(layout, i)) {
    if (dx != nullptr) copy_block_column(dy, lddy, dx, lddx, n, b, col0, kSimtTileRows);
    if (slot != nullptr)
      for (int e = threadIdx.x; e < area; e += blockDim.x) slot[e] = P(0);
    return;
  }
  stage_block(blocks + (layout.shared ? 0 : i) * static_cast<Index>(area), b, true, ms);
  for (int e = threadIdx.x; e < area; e += blockDim.x) gs[e] = P(0);
  const Index tiles = token_tiles(n, kSimtTileRows);
  for (Index tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const Index row0 = tile * kSimtTileRows, rows = min(kSimtTileRows, n - row0);
    load_tile(dy, lddy, row0, rows, col0, b, dys);
    if (slot != nullptr) load_tile(x, ldx, row0, rows, col0, b, xs);
    __syncthreads();
    if (dx != nullptr) store_tile_product(dys, ms, rows, b, dx, lddx, row0, col0);
    if (slot != nullptr) {
      for (int e = threadIdx.x; e < area; e += blockDim.x) {
        const int p = e / b, q = e % b;
        P sum = gs[e];
        for (int rr = 0; rr < static_cast<int>(rows); ++rr) sum += xs[rr * b + p] * dys[rr * b + q];
        gs[e] = sum;
      }
    }
    __syncthreads();
  }
  if (slot != nullptr)
    for (int e = threadIdx.x; e < area; e += blockDim.x) slot[e] = gs[e];
}

/// grads[g] = sum over the blocks of generator g and over the chunks of their partial sums, in a
/// fixed order.
template <class P>
__global__ void reduce_block_gradients_kernel(const P* partials, Index chunks, BlockLayout layout,
                                              Index generators, P* grads) {
  const Index area = layout.b * layout.b;
  const Index total = generators * area;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index g = t / area, e = t % area;
    const Index first = layout.shared ? 0 : g;
    const Index last = layout.shared ? layout.blocks : g + 1;
    P sum = P(0);
    for (Index i = first; i < last; ++i)
      for (Index c = 0; c < chunks; ++c) sum += partials[(c * layout.blocks + i) * area + e];
    grads[t] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers (host)
// ---------------------------------------------------------------------------------------------

template <class T, class P>
void apply_simt(const T* x, Index ldx, T* y, Index ldy, Index n, const BlockLayout& layout,
                const P* mats, bool transpose, cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::apply (CUDA cores)";
  if (n == 0 || layout.blocks == 0) return;
  const std::size_t bytes =
      static_cast<std::size_t>(layout.b * layout.b + kSimtTileRows * layout.b) * sizeof(P);
  require_dynamic_shared(apply_simt_kernel<T, P>, bytes, layout.b, "apply_simt_kernel", where);
  const dim3 grid(static_cast<unsigned>(layout.blocks), tile_grid(token_tiles(n, kSimtTileRows)));
  apply_simt_kernel<T, P><<<grid, kSimtThreads, bytes, stream>>>(x, ldx, y, ldy, n, layout, mats,
                                                                 transpose);
  check_launch("apply_simt_kernel", where);
}

template <class T, class P>
void backward_simt(const T* x, Index ldx, const T* dy, Index lddy, T* dx, Index lddx, Index n,
                   const BlockLayout& layout, const P* blocks, P* partials, Index chunks,
                   cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::backward (CUDA cores)";
  if (layout.blocks == 0) return;
  const std::size_t bytes =
      static_cast<std::size_t>(2 * layout.b * layout.b + 2 * kSimtTileRows * layout.b) * sizeof(P);
  require_dynamic_shared(backward_simt_kernel<T, P>, bytes, layout.b, "backward_simt_kernel",
                         where);
  const unsigned rows = partials != nullptr ? static_cast<unsigned>(chunks)
                                            : tile_grid(token_tiles(n, kSimtTileRows));
  const dim3 grid(static_cast<unsigned>(layout.blocks), rows);
  backward_simt_kernel<T, P><<<grid, kSimtThreads, bytes, stream>>>(x, ldx, dy, lddy, dx, lddx, n,
                                                                    layout, blocks, partials);
  check_launch("backward_simt_kernel", where);
}

template <class P>
void reduce_block_gradients(const P* partials, Index chunks, const BlockLayout& layout,
                            P* grads, cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::backward (reduce G)";
  const Index generators = layout.shared ? 1 : layout.blocks;
  const Index total = generators * layout.b * layout.b;
  if (total == 0) return;
  const Index threads = 256;
  const Index grid = std::min<Index>((total + threads - 1) / threads, 65535);
  reduce_block_gradients_kernel<P><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
      partials, chunks, layout, generators, grads);
  check_launch("reduce_block_gradients_kernel", where);
}

}  // namespace oft::detail::cuda

#pragma once
/// \file cuda/kernels_bank.hpp
/// The adapter bank's kernels (host class: cuda/adapter_bank.hpp): every token row t of X is
/// rotated by the adapter in slot ids[t], Y_t = X_t R_{ids[t]} (-1: Y_t = X_t).
///
/// Work unit: a thread block owns one column block i (blockIdx.x) and a strided set of token
/// tiles (blockIdx.y), as the single-adapter kernels (kernels_apply.hpp, kernels_tensor_core.hpp)
/// do; what changes is that each tile's rows carry their own adapter:
///   - contiguous routing (prefill): tile k holds rows [k R, k R + R) of X; it may hold several
///     runs of equal ids, which the thread block rotates one after another, each with its own
///     adapter's block i (staged once per run, and not again while the slot stays the same);
///   - gathered routing (decode): a device-side plan (bank_count, bank_plan, bank_scatter below)
///     groups the tokens by slot into tiles of one slot each, so an adapter's block is staged once
///     per tile of its tokens instead of once per token; rows are read and written through the
///     token order, with no copies into slices.
/// Adapters may differ in b: column block i of a run is columns [i b_a, (i + 1) b_a) of its own
/// b_a, and a thread block whose i is past that adapter's block count skips the run. gridDim.x is
/// the shard width over the smallest resident b, so every adapter's blocks are covered; the rows
/// of slot -1 and of identity adapters are copied in chunks of that smallest b (nothing to do in
/// place).
///
/// In place: a thread block reads all the rows of a run (one block column) into shared memory
/// before writing them, and no two thread blocks touch the same (row, column), so Y may be X.
///
/// Bad ids: bank_count records the smallest token index whose id names no adapter in a status
/// word; every apply kernel reads the status first and writes nothing when it is set. The
/// device never throws; the host class reads the status back on request.
///
/// Products: CUDA cores reuse the single-adapter kernels' staging (stage_block) and their fp32 /
/// fp64 accumulation; tensor cores (16-bit T, every resident adapter with b in {16, 32, 48, 64})
/// reuse stage_split_block and warp_rows_times_block with R = R_hi + R_lo split once per adapter
/// when it is added (kernels_tensor_core.hpp states the precision).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "error.hpp"
#include "kernels_apply.hpp"
#include "kernels_tensor_core.hpp"
#include "launch.hpp"
#include "numeric.hpp"

namespace oft::detail::cuda {

/// A slot of the device adapter table.
enum BankSlotState : int { kBankSlotEmpty = 0, kBankSlotIdentity = 1, kBankSlotRotation = 2 };

/// One slot of the bank as the kernels read it (a device array of capacity entries; zero bytes
/// are an empty slot). The blocks are the adapter's in the bank's feature range.
template <class T, class P>
struct BankSlot {
  const P* blocks = nullptr;  ///< generators x b x b, row-major R_g (Y = X R)
  const T* hi = nullptr;      ///< tensor cores: T(R), else nullptr
  const T* lo = nullptr;      ///< tensor cores: T(R - hi)
  int b = 0;
  int count = 0;   ///< blocks in the shard
  int shared = 0;  ///< 1: every block is generator 0's
  int state = kBankSlotEmpty;
};

/// No bad id: the status word's initial value, larger than any token index the host class
/// accepts, and one byte repeated so that a cudaMemsetAsync writes it.
inline constexpr std::int32_t kBankStatusOk = 0x7F7F7F7F;
/// A gathered tile past the plan's last one.
inline constexpr std::int32_t kBankNoTile = -2;

/// Everything an apply kernel reads, by value.
template <class T, class P>
struct BankLaunch {
  const BankSlot<T, P>* table;
  const std::int32_t* ids;        ///< one per token
  const std::int32_t* order;      ///< gathered: token of each plan position; contiguous: nullptr
  const std::int32_t* tile_slot;  ///< gathered: slot of each tile (kBankNoTile past the last)
  const std::int32_t* tile_rows;  ///< gathered: rows of each tile
  const std::int32_t* status;     ///< kBankStatusOk, or the smallest bad token index
  Index n;                        ///< tokens
  Index tiles;                    ///< tiles to loop over (gathered: an upper bound)
  int chunk;                      ///< columns per thread block for identity copies (smallest b)
};

/// Rows of a tile: 32 on CUDA cores, 128 on tensor cores (as the single-adapter kernels).
template <bool kTensor>
inline constexpr Index kBankTileRows = kTensor ? kTensorTileRows : kSimtTileRows;

/// Tiles of a gathered plan of n tokens: each non-empty slot (and -1) rounds its tokens up to
/// whole tiles, so at most ceil(n / rows) plus one partial tile per non-empty bucket.
inline Index bank_gathered_tiles(Index n, Index capacity, Index rows) {
  return token_tiles(n, rows) + std::min<Index>(n, capacity + 1);
}

/// status = smallest t whose id names no adapter; counts[id + 1] += 1 for gathered plans
/// (counts == nullptr for contiguous ones, which only validate).
template <class T, class P>
__global__ void bank_count_kernel(const std::int32_t* ids, Index n, const BankSlot<T, P>* table,
                                  std::int32_t capacity, std::int32_t* status,
                                  std::int32_t* counts) {
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const std::int32_t id = ids[t];
    const bool valid = id == -1 || (id >= 0 && id < capacity && table[id].state != kBankSlotEmpty);
    if (!valid) {
      atomicMin(status, static_cast<std::int32_t>(t));
      continue;
    }
    if (counts != nullptr) atomicAdd(counts + id + 1, 1);
  }
}

/// Threads of bank_plan_kernel (one thread block).
inline constexpr int kBankPlanThreads = 256;

/// One thread block: bucket k (slot k - 1) gets ceil(counts[k] / rows) tiles starting at an
/// exclusive scan of those tile counts; writes each tile's slot and row count, marks the tiles
/// past the last kBankNoTile, and sets cursor[k] to the bucket's first plan position. Each thread
/// scans a contiguous range of buckets, so one pass over the counts suffices for any capacity.
/// (A template, as every kernel in these headers: a non-template __global__ function defined in a
/// header would be defined again by each translation unit that includes it, and fail to link.)
template <int = 0>
__global__ void __launch_bounds__(kBankPlanThreads)
    bank_plan_kernel(const std::int32_t* counts, Index buckets, Index rows, Index max_tiles,
                     std::int32_t* cursor, std::int32_t* tile_slot, std::int32_t* tile_rows) {
  __shared__ Index partial[kBankPlanThreads];
  __shared__ Index total;
  const Index per = (buckets + kBankPlanThreads - 1) / kBankPlanThreads;
  const Index first = threadIdx.x * per, last = min(buckets, first + per);
  Index mine = 0;
  for (Index k = first; k < last; ++k) mine += (counts[k] + rows - 1) / rows;
  partial[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    Index sum = 0;
    for (int k = 0; k < kBankPlanThreads; ++k) {
      const Index here = partial[k];
      partial[k] = sum;
      sum += here;
    }
    total = sum;
  }
  __syncthreads();
  Index tile = partial[threadIdx.x];
  for (Index k = first; k < last; ++k) {
    cursor[k] = static_cast<std::int32_t>(tile * rows);
    for (Index left = counts[k]; left > 0; left -= rows, ++tile) {
      tile_slot[tile] = static_cast<std::int32_t>(k - 1);
      tile_rows[tile] = static_cast<std::int32_t>(min(left, rows));
    }
  }
  for (Index t = total + threadIdx.x; t < max_tiles; t += kBankPlanThreads)
    tile_slot[t] = kBankNoTile;
}

/// order[cursor[id + 1]++] = t. The order inside a bucket depends on the atomics' timing; the
/// results do not, since each row's product is computed the same way wherever the row sits.
template <int = 0>
__global__ void bank_scatter_kernel(const std::int32_t* ids, Index n, const std::int32_t* status,
                                    std::int32_t* cursor, std::int32_t* order) {
  if (*status != kBankStatusOk) return;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<Index>(gridDim.x) * blockDim.x)
    order[atomicAdd(cursor + ids[t] + 1, 1)] = static_cast<std::int32_t>(t);
}

/// The tokens and slots of one tile into shared memory; returns its row count (0: no tile).
template <class T, class P>
__device__ Index bank_stage_tile_rows(const BankLaunch<T, P>& p, Index tile, Index tile_rows,
                                      std::int32_t* s_token, std::int32_t* s_slot) {
  Index rows = 0;
  if (p.order == nullptr) {
    const Index row0 = tile * tile_rows;
    rows = min(tile_rows, p.n - row0);
    for (Index r = threadIdx.x; r < rows; r += blockDim.x) {
      s_token[r] = static_cast<std::int32_t>(row0 + r);
      s_slot[r] = p.ids[row0 + r];
    }
  } else {
    const std::int32_t slot = p.tile_slot[tile];
    if (slot == kBankNoTile) return 0;
    rows = p.tile_rows[tile];
    for (Index r = threadIdx.x; r < rows; r += blockDim.x) {
      s_token[r] = p.order[tile * tile_rows + r];
      s_slot[r] = slot;
    }
  }
  __syncthreads();
  return rows;
}

/// Columns [col0, col0 + width) of the rows s_token[first, last) copied from X to Y.
template <class T>
__device__ void bank_copy_rows(const T* x, Index ldx, T* y, Index ldy, const std::int32_t* s_token,
                               Index first, Index last, Index col0, Index width) {
  if (static_cast<const void*>(x) == static_cast<const void*>(y)) return;
  for (Index e = threadIdx.x; e < (last - first) * width; e += blockDim.x) {
    const Index t = s_token[first + e / width], c = col0 + e % width;
    y[t * ldy + c] = x[t * ldx + c];
  }
}

/// The thread blocks' walk over their tiles and the runs of equal slots in each: `rotate(slot,
/// first, last)` handles a run of an adapter whose block blockIdx.x exists; runs of -1 and of
/// identities are copied here. Returns at once when the status reports a bad id.
template <bool kTensor, class T, class P, class Rotate>
__device__ void bank_walk(const T* x, Index ldx, T* y, Index ldy, const BankLaunch<T, P>& p,
                          std::int32_t* s_token, std::int32_t* s_slot, Rotate&& rotate) {
  if (*p.status != kBankStatusOk) return;
  constexpr Index kRows = kBankTileRows<kTensor>;
  for (Index tile = blockIdx.y; tile < p.tiles; tile += gridDim.y) {
    const Index rows = bank_stage_tile_rows(p, tile, kRows, s_token, s_slot);
    Index start = 0;
    while (start < rows) {  // uniform over the thread block: every thread reads the same slots
      const std::int32_t slot = s_slot[start];
      Index end = start + 1;
      while (end < rows && s_slot[end] == slot) ++end;
      const BankSlot<T, P>* adapter = slot >= 0 ? p.table + slot : nullptr;
      if (adapter == nullptr || adapter->state != kBankSlotRotation)
        bank_copy_rows(x, ldx, y, ldy, s_token, start, end, blockIdx.x * Index(p.chunk), p.chunk);
      else if (static_cast<int>(blockIdx.x) < adapter->count)
        rotate(*adapter, slot, start, end);
      start = end;
    }
    __syncthreads();  // the next tile overwrites s_token and s_slot
  }
}

/// Y = X R_{ids} on CUDA cores. Shared memory: ms (b_max^2 P), xs (kSimtTileRows b_max P), then
/// the tile's tokens and slots (2 kSimtTileRows int32).
template <class T, class P>
__global__ void bank_apply_simt_kernel(const T* x, Index ldx, T* y, Index ldy, BankLaunch<T, P> p,
                                       int b_max) {
  P* ms = reinterpret_cast<P*>(dynamic_shared_memory());
  P* xs = ms + b_max * b_max;
  std::int32_t* s_token = reinterpret_cast<std::int32_t*>(xs + kSimtTileRows * b_max);
  std::int32_t* s_slot = s_token + kSimtTileRows;
  const Index i = blockIdx.x;
  std::int32_t staged = -1;  // slot whose block i is in ms
  bank_walk<false>(x, ldx, y, ldy, p, s_token, s_slot,
                   [&](const BankSlot<T, P>& a, std::int32_t slot, Index first, Index last) {
                     const int b = a.b;
                     const Index col0 = i * b, rows = last - first;
                     if (slot != staged) {
                       stage_block(a.blocks + (a.shared ? 0 : i) * static_cast<Index>(b) * b, b,
                                   false, ms);
                       staged = slot;
                     }
                     for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
                       const Index t = s_token[first + e / b];
                       xs[e] = to_accumulator<P>(x[t * ldx + col0 + e % b]);
                     }
                     __syncthreads();
                     for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
                       const int r = static_cast<int>(e / b), c = static_cast<int>(e % b);
                       P sum = P(0);
                       for (int j = 0; j < b; ++j) sum += xs[r * b + j] * ms[j * b + c];
                       y[s_token[first + r] * ldy + col0 + c] = from_accumulator<T>(sum);
                     }
                     __syncthreads();  // the next run overwrites xs (and perhaps ms)
                   });
}

/// Shared memory of the tensor-core bank kernel: the apply layout of kernels_tensor_core.hpp for
/// the largest resident b, then the tile's tokens and slots.
inline std::size_t bank_tensor_shared_bytes(int b_max) {
  return TensorSharedLayout(b_max, false).bytes() + 2 * kTensorTileRows * sizeof(std::int32_t);
}

/// Body of bank_apply_tensor_core_kernel (instantiated only where tensor_cores_compiled<T>()).
template <class T>
__device__ void bank_tensor_core_tiles(const T* x, Index ldx, T* y, Index ldy,
                                       const BankLaunch<T, float>& p, int b_max) {
  unsigned char* shared = dynamic_shared_memory();
  const TensorSharedLayout big(b_max, false);
  std::int32_t* s_token = reinterpret_cast<std::int32_t*>(shared + big.bytes());
  std::int32_t* s_slot = s_token + kTensorTileRows;
  const Index i = blockIdx.x;
  std::int32_t staged = -1;
  bank_walk<true>(
      x, ldx, y, ldy, p, s_token, s_slot,
      [&](const BankSlot<T, float>& a, std::int32_t slot, Index first, Index last) {
        // Regions at this adapter's own b (all fit in the b_max carve-up: each is smaller).
        const int b = a.b;
        const TensorSharedLayout s(b, false);
        T* xs = reinterpret_cast<T*>(shared + s.x_offset);
        T* mhi = reinterpret_cast<T*>(shared + s.hi_offset);
        T* mlo = reinterpret_cast<T*>(shared + s.lo_offset);
        float* out = reinterpret_cast<float*>(shared + s.out_offset);
        const Index col0 = i * b, rows = last - first;
        // A smaller b than the staged one moves the regions, so restage on any change of slot.
        if (slot != staged) {
          const Index offset = (a.shared ? 0 : i) * static_cast<Index>(b) * b;
          stage_split_block(a.hi + offset, a.lo + offset, b, false, mhi, mlo, s.lda);
          staged = slot;
        }
        for (int e = threadIdx.x; e < static_cast<int>(kTensorTileRows) * b; e += blockDim.x) {
          const int r = e / b, c = e % b;
          xs[r * s.lda + c] = r < rows ? x[s_token[first + r] * ldx + col0 + c] : T(0.0f);
        }
        __syncthreads();
        warp_rows_times_block(xs, mhi, mlo, out, b, s.lda, s.ldo);
        __syncthreads();
        for (Index e = threadIdx.x; e < rows * b; e += blockDim.x) {
          const Index r = e / b, c = e % b;
          y[s_token[first + r] * ldy + col0 + c] = from_accumulator<T>(out[r * s.ldo + c]);
        }
        __syncthreads();
      });
}

/// Y = X R_{ids} on tensor cores (every resident adapter's b is a multiple of 16 up to 64). A
/// trap where the architecture has no WMMA for T; the host never launches it there.
template <class T>
__global__ void __launch_bounds__(kTensorThreads)
    bank_apply_tensor_core_kernel(const T* x, Index ldx, T* y, Index ldy, BankLaunch<T, float> p,
                                  int b_max) {
  if constexpr (tensor_cores_compiled<T>()) {
    bank_tensor_core_tiles(x, ldx, y, ldy, p, b_max);
  } else {
    __trap();
  }
}

}  // namespace oft::detail::cuda

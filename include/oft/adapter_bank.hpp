#pragma once
/// \file adapter_bank.hpp
/// Serving many OFT adapters in one batch: an AdapterBank holds A adapters' block-diagonal
/// rotations for one layer, computed once when each is added, and rotates every token of a
/// batch by its own adapter, Y_t = X_t R_{ids[t]} (kNoAdapter: Y_t = X_t). One shared base GEMM
/// then serves every request, Z = Y W0^T: the rotation costs d b multiply-adds per token
/// against the base layer's d n_out.
///
///   oft::AdapterBank<float> bank(4096, 64);         // d = 4096, up to 64 adapters
///   auto a = bank.add(peft_adapter.rotation_for(module, n_out, 4096));
///   auto b = bank.add(spec, rotations);             // or R's blocks directly
///   bank.apply(x, y, ids);                          // ids: one slot (or -1) per row of x
///
/// Adapters may differ in policy (anything BlockOrthogonal or AnyBlockOrthogonal computes:
/// exact Cayley, Cayley-Neumann, COFT, block_share) and in block size. apply groups the tokens
/// by adapter so that each adapter's blocks are loaded once per register tile of its tokens:
/// runs of equal ids are rotated where they are (prefill), scattered tokens are gathered into
/// slices and back (decode); BankRouting picks or forces the path.
///
/// Tensor parallelism: AdapterBank(d, capacity, FeatureRange{first, count}) holds only the
/// blocks of input features [first, first + count) (a row-parallel rank's shard) and takes X
/// with `count` columns; the ranks' banks together equal the whole, with no communication.
///
/// Concurrency: apply is const and may run on any number of threads at once; add, replace and
/// remove may run on other threads at the same time. A writer computes the new adapter first,
/// then waits for the applies in flight to finish and swaps one pointer; applies that start
/// later see the new table. Slots are fixed at construction, so a writer never moves another
/// adapter.
///
/// Storage: R in the bank's Scalar, or (RotationStorage::BFloat16, float banks) rounded once to
/// bfloat16, half the memory. bfloat16 activations (float banks): Bf16Arithmetic::Float widens
/// them (the default), Bf16Arithmetic::DotProduct (AVX512_BF16 builds) runs vdpbf16ps on D = R - I
/// packed in bfloat16 pairs, bit for bit the single-adapter operator's arithmetic of that name.
/// Fused projections: serving_linear.hpp.
///
/// CUDA: AdapterBank<T, oft::cuda> (cuda/adapter_bank.hpp, from <oft/cuda.hpp>) holds each
/// adapter's R in device memory and rotates tokens by device-resident int32 ids with contiguous
/// and gathered kernels (the gathered plan is built on the device), on tensor cores for 16-bit
/// activations when every resident b is a multiple of 16 up to 64; compiled, not yet run on a
/// GPU (docs/serving.md).

#include "backend.hpp"
#include "cpu/adapter_bank.hpp"

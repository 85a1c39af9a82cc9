#pragma once
/// \file cpu/bank_apply.hpp
/// The CPU loops of the adapter bank (cpu/adapter_bank.hpp): each token's row of X is rotated
/// by its own adapter's blocks, Y_t = X_t R_{a(t)}, through the register-tile kernel
/// (cpu/gemm_tile.hpp). Work arrives as items of at most one register tile of rows that share
/// an adapter, so an adapter's blocks are loaded once per item, not once per token:
///   - contiguous items: the rows [first, first + rows) of X (a prefill request's run of
///     tokens), read and written where they are, as the single-adapter apply does;
///   - gathered items: `rows` token indices of `order` (decode: one token per request, the
///     requests of one adapter scattered over the batch), copied into a slice and back.
/// Items of slot -1 (no adapter) and of identity adapters copy their rows when Y is not X.
/// bfloat16 activations take the float kernels (widened exactly, rounded once), or, in banks
/// built with Bf16Arithmetic::DotProduct, `vdpbf16ps` on each adapter's D = R - I packed in
/// bfloat16 pairs, as the single-adapter apply_bf16_dot (cpu/apply_bf16.hpp). No checks here:
/// the host class validates the ids, the shapes and the table before it builds the items.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "panels.hpp"

namespace oft::detail::cpu {

/// One resident adapter, restricted to the bank's feature range: `spec.blocks` blocks of
/// `spec.block_size` (one shared block when spec.shared), R row-major, Y = X R. An adapter with
/// no blocks is the identity: one that does not touch this layer (or this slice of a fused one).
/// The blocks are kept in Scalar, or (float banks) as bfloat16 bits, rounded to nearest even
/// once when the adapter is added: half the memory and half the traffic of a decode step whose
/// tokens name many adapters, for a rounding of R of at most 2^-9 relative per entry.
template <class Scalar>
struct BankAdapter {
  BlockSpec spec;
  std::vector<Scalar> rotations;                 ///< spec.generators() x b x b, or empty
  std::vector<std::uint16_t> rotations_bf16;     ///< the same as bfloat16 bits, or empty
  /// D = R - I rounded to bfloat16 and packed for `vdpbf16ps` (pack_pairs): spec.generators() x
  /// pair_words(b) words, in DotProduct banks only (else empty). Packed from R in Scalar before
  /// any bfloat16 storage rounds it, as the single-adapter operator packs it.
  std::vector<std::uint32_t> pairs;

  bool identity() const { return rotations.empty() && rotations_bf16.empty(); }
  bool stored_bf16() const { return !rotations_bf16.empty(); }

  /// Block i's R in Scalar: where it is, or widened into `scratch` (b x b) from bfloat16.
  const Scalar* block(Index i, Scalar* scratch) const {
    const Index area = spec.block_size * spec.block_size, offset = spec.generator_of(i) * area;
    if constexpr (std::is_same_v<Scalar, float>) {
      if (stored_bf16()) {
        convert_row(reinterpret_cast<const bfloat16*>(rotations_bf16.data() + offset), area, scratch);
        return scratch;
      }
    }
    (void)scratch;
    return rotations.data() + offset;
  }
  /// Block i's packed pairs (DotProduct banks).
  const std::uint32_t* block_pairs(Index i) const {
    return pairs.data() + spec.generator_of(i) * pair_words(spec.block_size);
  }
  std::size_t bytes() const {
    return rotations.size() * sizeof(Scalar) + rotations_bf16.size() * sizeof(std::uint16_t) +
           pairs.size() * sizeof(std::uint32_t);
  }
};

/// Rows of one item: one register tile, as the single-adapter apply's panels.
inline constexpr Index kBankItemRows = kTileRows;

/// A run of rows sharing one adapter (`slot`, or -1 for none): X's rows [first, first + rows)
/// when the plan is contiguous, else the token indices order[first, first + rows).
struct BankItem {
  std::int32_t slot;
  Index first;
  Index rows;
};

/// What the loops read: the adapter table (indexed by slot) and the token order of a gathered
/// plan (null for a contiguous one).
template <class Scalar>
struct BankPlan {
  const std::unique_ptr<BankAdapter<Scalar>>* table;
  const BankItem* items;
  Index item_count;
  const Index* order;  ///< gathered plans only
  Index max_block_size;  ///< over the adapters the items name (0 when all are identities)
  bool dot_products;     ///< bfloat16 activations through the packed pairs (DotProduct banks)
};

/// Y's rows [first, first + rows) = X's rows R (contiguous rows, in place or out of place).
/// `scratch` holds 2 kBankItemRows b + b^2 Scalars: the slices, then a widened block.
template <class Scalar, class Act>
inline void rotate_contiguous(const BankAdapter<Scalar>& adapter, const ConstMatrixView<Act>& x,
                              const MatrixView<Act>& y, Index first, Index rows,
                              Scalar* scratch) {
  const Index b = adapter.spec.block_size;
  Scalar* widened = scratch + 2 * kBankItemRows * b;
  for (Index i = 0; i < adapter.spec.blocks; ++i) {
    const Scalar* r = adapter.block(i, widened);
    const Act* in = x.row(first) + i * b;
    Act* out = y.row(first) + i * b;
    if constexpr (kDirect<Act, Scalar>) {
      // As cpu/apply.hpp: read X where it is unless an in-place store could clobber rows that a
      // later register tile of the same block still reads.
      const Scalar* a = in;
      Index a_row = x.stride();
      if (in == out && !one_register_tile<Scalar>(b)) {
        copy_slice(in, x.stride(), rows, b, scratch);
        a = scratch, a_row = b;
      }
      gemm_small(rows, b, b, a, a_row, 1, r, b, out, y.stride(), false);
    } else {
      copy_slice(in, x.stride(), rows, b, scratch);  // bfloat16 widened exactly
      gemm_small(rows, b, b, scratch, b, 1, r, b, out, y.stride(), false);
    }
  }
}

/// The rows of tokens[0, rows) of Y = the same rows of X times R: each block's slices are
/// gathered into `scratch` (rows x b), rotated into the next rows x b, and scattered back
/// (rounded to bfloat16 once, as stored, for bfloat16 activations). Scratch as above.
template <class Scalar, class Act>
inline void rotate_gathered(const BankAdapter<Scalar>& adapter, const ConstMatrixView<Act>& x,
                            const MatrixView<Act>& y, const Index* tokens, Index rows,
                            Scalar* scratch) {
  const Index b = adapter.spec.block_size;
  Scalar* gathered = scratch;
  Scalar* rotated = scratch + kBankItemRows * b;
  Scalar* widened = scratch + 2 * kBankItemRows * b;
  for (Index i = 0; i < adapter.spec.blocks; ++i) {
    const Scalar* r = adapter.block(i, widened);
    for (Index t = 0; t < rows; ++t) convert_row(x.row(tokens[t]) + i * b, b, gathered + t * b);
    gemm_small(rows, b, b, gathered, b, 1, r, b, rotated, b, false);
    for (Index t = 0; t < rows; ++t) convert_row(rotated + t * b, b, y.row(tokens[t]) + i * b);
  }
}

/// As rotate_contiguous, for bfloat16 activations through `vdpbf16ps`: Y = X + X D per block,
/// each output row computed as apply_bf16_dot computes it (so bit for bit the single-adapter
/// operator's DotProduct apply). `scratch` holds kBankItemRows b bfloat16 (an in-place copy).
inline void rotate_contiguous_dot(const BankAdapter<float>& adapter,
                                  const ConstMatrixView<bfloat16>& x, const MatrixView<bfloat16>& y,
                                  Index first, Index rows, std::uint16_t* scratch) {
#if defined(OFT_HAVE_BF16_DOT)
  const Index b = adapter.spec.block_size;
  for (Index i = 0; i < adapter.spec.blocks; ++i) {
    const std::uint16_t* in = bits(x.row(first) + i * b);
    std::uint16_t* out = bits(y.row(first) + i * b);
    const std::uint16_t* a = in;
    Index a_row = x.stride();
    if (in == out && !rotate_in_place(b)) {
      // More than one register tile per row: one tile's stores would clobber what another reads.
      copy_bf16_rows(in, x.stride(), rows, b, scratch, b);
      a = scratch, a_row = b;
    }
    rotate_rows(false, rows, b, a, a_row, adapter.block_pairs(i), out, y.stride());
  }
#else
  (void)adapter, (void)x, (void)y, (void)first, (void)rows, (void)scratch;  // never built
#endif
}

/// As rotate_gathered, for bfloat16 activations through `vdpbf16ps`: each block's slices are
/// gathered into `scratch` (rows x b bfloat16), rotated into the next rows x b and scattered back.
inline void rotate_gathered_dot(const BankAdapter<float>& adapter,
                                const ConstMatrixView<bfloat16>& x, const MatrixView<bfloat16>& y,
                                const Index* tokens, Index rows, std::uint16_t* scratch) {
#if defined(OFT_HAVE_BF16_DOT)
  const Index b = adapter.spec.block_size;
  std::uint16_t* gathered = scratch;
  std::uint16_t* rotated = scratch + kBankItemRows * b;
  for (Index i = 0; i < adapter.spec.blocks; ++i) {
    for (Index t = 0; t < rows; ++t)
      std::copy_n(bits(x.row(tokens[t]) + i * b), b, gathered + t * b);
    rotate_rows(false, rows, b, gathered, b, adapter.block_pairs(i), rotated, b);
    for (Index t = 0; t < rows; ++t)
      std::copy_n(rotated + t * b, b, bits(y.row(tokens[t]) + i * b));
  }
#else
  (void)adapter, (void)x, (void)y, (void)tokens, (void)rows, (void)scratch;  // never built
#endif
}

/// Runs every item of `plan` over X -> Y, split across threads item by item.
template <class Scalar, class Act>
inline void bank_apply(const BankPlan<Scalar>& plan, const ConstMatrixView<Act>& x,
                       const MatrixView<Act>& y) {
  const bool in_place = x.data() == y.data();
  const Index scratch_size =
      (2 * kBankItemRows + plan.max_block_size) * plan.max_block_size;
  const bool on_stack = scratch_size <= kStackScratch;
  [[maybe_unused]] const double flops = 2.0 * static_cast<double>(x.rows()) *
                                        static_cast<double>(x.cols()) *
                                        static_cast<double>(plan.max_block_size);
  OFT_OMP(parallel if (flops > kParallelFlops && plan.item_count > 1)) {
    alignas(64) Scalar stack_scratch[kStackScratch];
    Scalar* scratch =
        on_stack ? stack_scratch
                 : detail::thread_buffer<Scalar, detail::ScratchSlot::BankScratch>(scratch_size);
    OFT_OMP(for schedule(dynamic))
    for (Index k = 0; k < plan.item_count; ++k) {
      const BankItem& item = plan.items[k];
      if (item.slot < 0 || plan.table[item.slot]->identity()) {
        if (in_place) continue;
        for (Index t = 0; t < item.rows; ++t) {
          const Index row = plan.order ? plan.order[item.first + t] : item.first + t;
          std::copy(x.row(row), x.row(row) + x.cols(), y.row(row));
        }
        continue;
      }
      const BankAdapter<Scalar>& adapter = *plan.table[item.slot];
      if constexpr (std::is_same_v<Act, bfloat16> && std::is_same_v<Scalar, float>) {
        if (plan.dot_products) {
          // 2 kBankItemRows b bfloat16 fit in the float scratch's first kBankItemRows b floats.
          auto* half_scratch = reinterpret_cast<std::uint16_t*>(scratch);
          if (plan.order)
            rotate_gathered_dot(adapter, x, y, plan.order + item.first, item.rows, half_scratch);
          else
            rotate_contiguous_dot(adapter, x, y, item.first, item.rows, half_scratch);
          continue;
        }
      }
      if (plan.order)
        rotate_gathered(adapter, x, y, plan.order + item.first, item.rows, scratch);
      else
        rotate_contiguous(adapter, x, y, item.first, item.rows, scratch);
    }
  }
}

}  // namespace oft::detail::cpu

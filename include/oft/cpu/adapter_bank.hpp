#pragma once
/// \file cpu/adapter_bank.hpp
/// AdapterBank<Scalar, cpu>: the CPU backend's host class of the adapter bank (public API
/// documented in <oft/adapter_bank.hpp> and docs/serving.md). It owns a fixed table of adapter
/// slots, each adapter's blocks of R restricted to the bank's feature range, checks every
/// argument before anything is written, plans the tokens into items and hands them to the
/// loops of cpu/bank_apply.hpp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "../backend.hpp"
#include "../bank_types.hpp"
#include "../errors.hpp"
#include "../half_types.hpp"
#include "../index.hpp"
#include "../view.hpp"
#include "bank_apply.hpp"

namespace oft {

template <class Scalar_>
class AdapterBank<Scalar_, cpu> {
 public:
  using Scalar = Scalar_;
  static_assert(std::is_floating_point_v<Scalar>, "oft::AdapterBank needs float or double");
  /// The id of a token that takes no adapter (Y = X for its row).
  static constexpr std::int32_t kNoAdapter = -1;

  /// A bank of `capacity` slots for a layer with `features` input features, holding all of them.
  /// `storage` keeps R in Scalar or (float banks) bfloat16; `arithmetic` chooses how bfloat16
  /// activations are computed (float banks): Bf16Arithmetic::Float widens them and runs the float
  /// kernels (bit for bit the single-adapter Float path), Bf16Arithmetic::DotProduct (builds with
  /// AVX512_BF16) runs `vdpbf16ps` on D = R - I packed in bfloat16 pairs (bit for bit the
  /// single-adapter DotProduct path), at b^2 x 2 more bytes per block kept.
  AdapterBank(Index features, Index capacity, RotationStorage storage = RotationStorage::Scalar,
              Bf16Arithmetic arithmetic = Bf16Arithmetic::Float)
      : AdapterBank(features, capacity, FeatureRange{0, features}, storage, arithmetic) {}

  /// A bank holding features [shard.first, shard.first + shard.count) of a layer with `features`
  /// input features (a tensor-parallel rank's input columns): apply takes X with shard.count
  /// columns, and each adapter keeps only its blocks in that range.
  AdapterBank(Index features, Index capacity, FeatureRange shard,
              RotationStorage storage = RotationStorage::Scalar,
              Bf16Arithmetic arithmetic = Bf16Arithmetic::Float)
      : features_(features),
        shard_(shard),
        storage_(storage),
        arithmetic_(arithmetic),
        slots_(static_cast<std::size_t>(capacity)) {
    detail::require(storage == RotationStorage::Scalar || std::is_same_v<Scalar, float>,
                    "adapter bank: bfloat16 storage of R is for float banks");
    detail::require(arithmetic == Bf16Arithmetic::Float || std::is_same_v<Scalar, float>,
                    "adapter bank: Bf16Arithmetic::DotProduct is for float banks");
    detail::require(arithmetic == Bf16Arithmetic::Float || detail::cpu::kHasBf16Dot,
                    "adapter bank: Bf16Arithmetic::DotProduct needs a build with AVX512_BF16, "
                    "AVX512BW and AVX512VL (e.g. -march=native on a CPU that has them); this "
                    "build has not");
    detail::require(features >= 1, "adapter bank features=", features, " must be at least 1");
    detail::require(capacity >= 1 && capacity <= kMaxCapacity, "adapter bank capacity=", capacity,
                    " must be in [1, ", kMaxCapacity, "]");
    detail::require(shard.first >= 0 && shard.count >= 1 && shard.first <= features - shard.count,
                    "adapter bank shard [", shard.first, ", ", shard.first + shard.count,
                    ") is not a non-empty range of the layer's features [0, ", features, ")");
  }

  AdapterBank(const AdapterBank&) = delete;
  AdapterBank& operator=(const AdapterBank&) = delete;

  Index features() const { return features_; }          ///< d of the whole layer
  const FeatureRange& shard() const { return shard_; }  ///< the columns apply reads and writes
  Index capacity() const { return static_cast<Index>(slots_.size()); }
  RotationStorage storage() const { return storage_; }
  Bf16Arithmetic bf16_arithmetic() const { return arithmetic_; }

  /// Slots holding an adapter now.
  Index size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return static_cast<Index>(std::count_if(slots_.begin(), slots_.end(),
                                            [](const auto& slot) { return slot != nullptr; }));
  }
  bool contains(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return slot >= 0 && slot < capacity() && slots_[static_cast<std::size_t>(slot)] != nullptr;
  }

  /// An adapter computed and checked for this bank, not yet resident: add and replace take it.
  /// Preparing first lets a caller check several banks before changing any (a fused layer's
  /// slices), and keeps theta -> R out of the writer's lock.
  class Prepared {
   public:
    std::size_t bytes() const { return adapter_->bytes(); }

   private:
    friend class AdapterBank;
    explicit Prepared(std::unique_ptr<detail::cpu::BankAdapter<Scalar>> adapter)
        : adapter_(std::move(adapter)) {}
    std::unique_ptr<detail::cpu::BankAdapter<Scalar>> adapter_;
  };

  /// Prepares an adapter given R's blocks for the whole layer: `rotations` holds
  /// spec.generators() row-major b x b blocks R_g (Y = X R, the orientation of
  /// BlockOrthogonal::apply); the bank keeps the blocks in its feature range. Throws
  /// std::invalid_argument for a spec of another width or a block size that does not divide the
  /// shard, std::domain_error for a non-finite entry.
  Prepared prepare(const BlockSpec& spec, const Scalar* rotations) const {
    return Prepared(make_adapter(spec, [&](Index g, Scalar* to) {
      const Index area = spec.block_size * spec.block_size;
      std::copy(rotations + g * area, rotations + (g + 1) * area, to);
    }));
  }

  /// Prepares the rotation of an operator with spec() and block(i) (BlockOrthogonal,
  /// AnyBlockOrthogonal: any policy, exact or Neumann, COFT, block_share), computed once here.
  template <class Operator>
  Prepared prepare(const Operator& op) const {
    return Prepared(make_adapter(op));
  }

  /// Prepares an adapter that leaves this layer alone (its tokens pass through, as
  /// kNoAdapter's): a fused layer's slice that an adapter does not target keeps the slot
  /// numbering of the others.
  Prepared prepare_identity() const { return Prepared(std::make_unique<Adapter>()); }

  /// Makes a prepared adapter resident in the lowest free slot and returns the slot. Throws
  /// std::invalid_argument for a full bank (the bank is unchanged).
  Index add(Prepared adapter) { return insert(std::move(adapter.adapter_)); }
  /// prepare and add in one call; the same checks, the bank unchanged on a refusal.
  Index add(const BlockSpec& spec, const Scalar* rotations) { return add(prepare(spec, rotations)); }
  template <class Operator>
  Index add(const Operator& op) {
    return add(prepare(op));
  }
  Index add_identity() { return add(prepare_identity()); }

  /// Replaces the adapter in `slot` (which must hold one) by a prepared one.
  void replace(Index slot, Prepared adapter) { swap_into(slot, std::move(adapter.adapter_)); }
  void replace(Index slot, const BlockSpec& spec, const Scalar* rotations) {
    replace(slot, prepare(spec, rotations));
  }
  template <class Operator>
  void replace(Index slot, const Operator& op) {
    replace(slot, prepare(op));
  }

  /// Frees `slot` (which must hold an adapter); tokens may no longer name it.
  void remove(Index slot) { swap_into(slot, nullptr); }

  /// Bytes of the blocks `slot` holds (in this bank's feature range; 0 for the identity).
  std::size_t adapter_bytes(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return occupied(slot, "adapter_bytes").bytes();
  }
  /// The block size of the adapter in `slot` (0 for the identity).
  Index block_size(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return occupied(slot, "block_size").spec.block_size;
  }

  /// Y = X R_{ids[t]} row by row: token t (row t of X, shard().count columns) is rotated by the
  /// adapter in slot ids[t], or copied for kNoAdapter. Y may be X itself (in place) or disjoint
  /// from it. Activations are Scalar, or bfloat16 for a float bank (computed as the bank's
  /// bf16_arithmetic() says). Returns the routing used. Throws std::invalid_argument, before
  /// anything is written, for a shape mismatch, ids of another length, or an id that is out of
  /// range or names an empty slot.
  template <class Act>
  BankRouting apply(ConstMatrixView<Act> x, MatrixView<Act> y, const std::int32_t* ids,
                    Index id_count, BankRouting routing = BankRouting::Automatic) const {
    static_assert(std::is_same_v<Act, Scalar> ||
                      (std::is_same_v<Act, bfloat16> && std::is_same_v<Scalar, float>),
                  "AdapterBank::apply takes the bank's Scalar, or bfloat16 for a float bank");
    detail::require(x.cols() == shard_.count, "X has ", x.cols(),
                    " columns, expected the bank's shard width ", shard_.count);
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
    detail::require(id_count == x.rows(), "adapter ids have ", id_count,
                    " entries, expected one per row of X (", x.rows(), ")");
    detail::require(ids != nullptr || id_count == 0, "adapter ids are a null pointer");

    std::shared_lock<std::shared_mutex> lock(mutex_);
    Index max_block_size = 0;
    for (Index t = 0; t < id_count; ++t) {
      const std::int32_t id = ids[t];
      detail::require(id == kNoAdapter || (id >= 0 && id < capacity() &&
                                           slots_[static_cast<std::size_t>(id)] != nullptr),
                      "adapter ids[", t, "]=", id, " names no adapter (capacity ", capacity(),
                      "; ", kNoAdapter, " means none)");
      if (id != kNoAdapter)
        max_block_size =
            std::max(max_block_size, slots_[static_cast<std::size_t>(id)]->spec.block_size);
    }
    if (x.rows() == 0) return routing == BankRouting::Automatic ? BankRouting::Contiguous : routing;

    Plan& plan = thread_plan();
    if (routing == BankRouting::Automatic) routing = choose_routing(ids, id_count);
    if (routing == BankRouting::Contiguous)
      plan_contiguous(ids, id_count, plan);
    else
      plan_gathered(ids, id_count, plan);
    const detail::cpu::BankPlan<Scalar> loops{
        slots_.data(), plan.items.data(), static_cast<Index>(plan.items.size()),
        routing == BankRouting::Gathered ? plan.order.data() : nullptr, max_block_size,
        arithmetic_ == Bf16Arithmetic::DotProduct};
    detail::cpu::bank_apply(loops, x, y);
    return routing;
  }

  /// apply with ids from a std::vector.
  template <class Act>
  BankRouting apply(ConstMatrixView<Act> x, MatrixView<Act> y, const std::vector<std::int32_t>& ids,
                    BankRouting routing = BankRouting::Automatic) const {
    return apply(x, y, ids.data(), static_cast<Index>(ids.size()), routing);
  }

 private:
  using Adapter = detail::cpu::BankAdapter<Scalar>;
  // Ids are int32: a table this large would hold gigabytes of blocks.
  static constexpr Index kMaxCapacity = 1 << 20;

  // The calling thread's plan, kept between calls so that a steady-state apply allocates nothing.
  struct Plan {
    std::vector<detail::cpu::BankItem> items;
    std::vector<Index> order;
    std::vector<Index> offsets;
  };
  static Plan& thread_plan() {
    thread_local Plan plan;
    plan.items.clear();
    return plan;
  }

  // Contiguous when the runs of equal ids average at least a register tile of rows: then each
  // run's rows are rotated where they are with the adapter's blocks loaded once per tile, as a
  // gathered item would load them, without the copies.
  static BankRouting choose_routing(const std::int32_t* ids, Index count) {
    Index runs = 1;
    for (Index t = 1; t < count; ++t) runs += ids[t] != ids[t - 1];
    return count >= runs * detail::cpu::kBankItemRows ? BankRouting::Contiguous
                                                      : BankRouting::Gathered;
  }

  static void plan_contiguous(const std::int32_t* ids, Index count, Plan& plan) {
    Index start = 0;
    while (start < count) {
      Index end = start + 1;
      while (end < count && ids[end] == ids[start]) ++end;
      for (Index first = start; first < end; first += detail::cpu::kBankItemRows)
        plan.items.push_back({ids[start], first, std::min(detail::cpu::kBankItemRows, end - first)});
      start = end;
    }
  }

  // A stable counting sort of the tokens by slot (kNoAdapter first), cut into items.
  void plan_gathered(const std::int32_t* ids, Index count, Plan& plan) const {
    const std::size_t buckets = slots_.size() + 1;  // bucket 0 holds kNoAdapter
    plan.offsets.assign(buckets + 1, 0);
    for (Index t = 0; t < count; ++t) ++plan.offsets[static_cast<std::size_t>(ids[t] + 1) + 1];
    for (std::size_t k = 1; k <= buckets; ++k) plan.offsets[k] += plan.offsets[k - 1];
    plan.order.resize(static_cast<std::size_t>(count));
    for (Index t = 0; t < count; ++t)
      plan.order[static_cast<std::size_t>(plan.offsets[static_cast<std::size_t>(ids[t] + 1)]++)] = t;
    // offsets[k] is now the end of bucket k, i.e. the start of bucket k + 1.
    Index start = 0;
    for (std::size_t k = 0; k < buckets; ++k) {
      const Index end = plan.offsets[k];
      for (Index first = start; first < end; first += detail::cpu::kBankItemRows)
        plan.items.push_back({static_cast<std::int32_t>(k) - 1, first,
                              std::min(detail::cpu::kBankItemRows, end - first)});
      start = end;
    }
  }

  template <class Operator>
  std::unique_ptr<Adapter> make_adapter(const Operator& op) const {
    const BlockSpec& spec = op.spec();
    return make_adapter(spec, [&](Index g, Scalar* to) {
      // block(i) is block i's R; with a shared generator every block is generator 0's.
      const auto block = op.block(g);
      const Index b = spec.block_size;
      for (Index row = 0; row < b; ++row)
        for (Index col = 0; col < b; ++col) to[row * b + col] = static_cast<Scalar>(block(row, col));
    });
  }

  // The adapter for `spec` restricted to the shard; fill(g, to) writes generator g's b x b R.
  template <class Fill>
  std::unique_ptr<Adapter> make_adapter(const BlockSpec& spec, Fill&& fill) const {
    spec.validate();
    const Index b = spec.block_size;
    detail::require(spec.features() == features_, "adapter has d=", spec.features(), " (r=",
                    spec.blocks, " blocks of b=", b, "), the bank's layer has d=", features_);
    detail::require(shard_.first % b == 0 && shard_.count % b == 0, "adapter block size b=", b,
                    " does not divide the bank's shard [", shard_.first, ", ",
                    shard_.first + shard_.count, "): shards must end on block boundaries");
    auto adapter = std::make_unique<Adapter>();
    adapter->spec = BlockSpec{shard_.count / b, b, spec.shared};
    const Index first_block = shard_.first / b, area = b * b;
    const Index kept = adapter->spec.generators();
    adapter->rotations.resize(static_cast<std::size_t>(kept * area));
    for (Index g = 0; g < kept; ++g) fill(spec.shared ? 0 : first_block + g, adapter->rotations.data() + g * area);
    for (const Scalar value : adapter->rotations)
      detail::require_domain(std::isfinite(value), "adapter rotation has a non-finite entry");
    if constexpr (std::is_same_v<Scalar, float>) {
      if (arithmetic_ == Bf16Arithmetic::DotProduct) {
        const Index words = detail::cpu::pair_words(b);
        adapter->pairs.resize(static_cast<std::size_t>(kept * words));
        for (Index g = 0; g < kept; ++g)
          detail::cpu::pack_pairs(adapter->rotations.data() + g * area, b,
                                  adapter->pairs.data() + g * words);
      }
    }
    if (storage_ == RotationStorage::BFloat16) {
      adapter->rotations_bf16.resize(adapter->rotations.size());
      for (std::size_t k = 0; k < adapter->rotations.size(); ++k)
        adapter->rotations_bf16[k] = detail::cpu::narrow_bf16(static_cast<float>(adapter->rotations[k]));
      adapter->rotations = {};
    }
    return adapter;
  }

  Index insert(std::unique_ptr<Adapter> adapter) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    for (std::size_t slot = 0; slot < slots_.size(); ++slot)
      if (!slots_[slot]) {
        slots_[slot] = std::move(adapter);
        return static_cast<Index>(slot);
      }
    detail::require(false, "adapter bank is full (capacity ", capacity(),
                    "): remove an adapter first");
    return -1;
  }

  // Puts `adapter` (null to remove) in an occupied slot; the old adapter is freed after the
  // lock is released, so a waiting apply resumes as soon as the pointer is swapped.
  void swap_into(Index slot, std::unique_ptr<Adapter> adapter) {
    std::unique_ptr<Adapter> old;
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      occupied(slot, adapter ? "replace" : "remove");
      old = std::exchange(slots_[static_cast<std::size_t>(slot)], std::move(adapter));
    }
  }

  const Adapter& occupied(Index slot, const char* operation) const {
    detail::require(slot >= 0 && slot < capacity(), "adapter bank ", operation, ": slot ", slot,
                    " is out of range [0, ", capacity(), ")");
    const auto& adapter = slots_[static_cast<std::size_t>(slot)];
    detail::require(adapter != nullptr, "adapter bank ", operation, ": slot ", slot,
                    " holds no adapter");
    return *adapter;
  }

  Index features_;
  FeatureRange shard_;
  RotationStorage storage_;
  Bf16Arithmetic arithmetic_;
  // Sized once: adding or removing an adapter never moves the others. Readers (apply) hold the
  // lock shared for their whole call; writers hold it exclusively only to swap one pointer.
  std::vector<std::unique_ptr<Adapter>> slots_;
  mutable std::shared_mutex mutex_;
};

}  // namespace oft

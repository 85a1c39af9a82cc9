#pragma once
/// \file cuda/adapter_bank.hpp
/// AdapterBank<T, cuda>: the adapter bank (<oft/adapter_bank.hpp>, cpu/adapter_bank.hpp) on the
/// GPU. A adapters' block-diagonal rotations resident in device memory for one layer; each token
/// row t of X is rotated by the adapter in slot ids[t], Y_t = X_t R_{ids[t]} (-1: Y_t = X_t),
/// with the CPU bank's slots, shards, checks and messages.
///
/// T is the activation type (float, double, __half, __nv_bfloat16); R is stored in
/// cuda_parameter_t<T> (double for double, float otherwise) and products accumulate in it, as
/// BlockOrthogonal<T, ..., cuda> does. For 16-bit T, adapters whose b is a multiple of 16 up to
/// 64 also keep R split into T(R) + T(R - T(R)) for the tensor cores (kernels_tensor_core.hpp
/// states the precision); apply runs on tensor cores when every resident adapter has such a b
/// (and the device and the compiled kernels have WMMA for T), and on CUDA cores otherwise.
///
/// Memory: each adapter's blocks (its shard's part) are uploaded once, when it is prepared, into
/// buffers of its own; a device table of `capacity` slots holds their pointers and shapes. Slots
/// are fixed at construction, so an add never moves another adapter.
///
/// Ids live in device memory (int32, as a serving engine keeps its batch metadata, and as a CUDA
/// graph needs them). apply checks them on the device: a first kernel records the smallest token
/// whose id names no adapter, and every later kernel of that apply then writes nothing;
/// first_bad_token reads the record back (it synchronizes). The overload taking the ids as a
/// host vector checks them on the host first and throws std::invalid_argument with the CPU
/// bank's message before anything is enqueued.
///
/// Routing: Contiguous needs no plan (each tile of rows rotates its runs of equal ids in turn);
/// Gathered builds its plan on the device (a count, a one-block scan, a scatter: three small
/// kernels, no host round trip) so the ids never travel to the host. Automatic picks Contiguous
/// when there are at least a tile of rows per resident adapter (plus one for -1), Gathered
/// otherwise (the shape of decode); the host-vector overload counts the runs as the CPU bank does.
///
/// Streams and concurrency: apply only enqueues on its stream and needs a caller-owned device
/// workspace of workspace_bytes(N) bytes (256-byte aligned) per apply in flight. apply is const
/// and may be called from many host threads at once. add, replace and remove are synchronous
/// and may run on other threads meanwhile: they prepare the new adapter first, then, holding the
/// bank's lock, wait for the whole device (cudaDeviceSynchronize, so no apply already enqueued on
/// any stream still reads the slot) and rewrite one table entry; an apply enqueued later uses the
/// new table. They are meant for loading and unloading adapters, not for a decode step.

#include <cuda_runtime.h>

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
#include "../index.hpp"
#include "block_orthogonal.hpp"
#include "device_view.hpp"
#include "error.hpp"
#include "kernels_bank.hpp"
#include "launch.hpp"
#include "numeric.hpp"
#include "workspace.hpp"

namespace oft {

template <class Scalar_>
class AdapterBank<Scalar_, cuda> {
 public:
  using Scalar = Scalar_;                      ///< activation type
  using Parameter = cuda_parameter_t<Scalar>;  ///< stored R and accumulation (float or double)
  /// The id of a token that takes no adapter (Y = X for its row).
  static constexpr std::int32_t kNoAdapter = -1;

  /// A bank of `capacity` slots for a layer with `features` input features, on the current CUDA
  /// device. Throws std::invalid_argument for bad sizes, oft::cuda_error without a device.
  AdapterBank(Index features, Index capacity)
      : AdapterBank(features, capacity, FeatureRange{0, features}) {}

  /// A bank holding features [shard.first, shard.first + shard.count) (a tensor-parallel rank's
  /// input columns): apply takes X with shard.count columns.
  AdapterBank(Index features, Index capacity, FeatureRange shard)
      : features_(features),
        shard_(checked(features, capacity, shard)),
        slots_(static_cast<std::size_t>(capacity)),
        device_(detail::cuda::query_device(kConstructor)),
        tensor_env_(tensor_environment()),
        table_(static_cast<std::size_t>(capacity)) {
    // Shared-memory limits are set now, not first inside a later apply (or a graph capture).
    (void)detail::cuda::dynamic_shared_limit(
        detail::cuda::bank_apply_simt_kernel<Scalar, Parameter>, kConstructor);
    detail::cuda::check(cudaMemset(table_.data(), 0, table_.bytes()), "cudaMemset", kConstructor);
  }

  AdapterBank(const AdapterBank&) = delete;
  AdapterBank& operator=(const AdapterBank&) = delete;

  Index features() const { return features_; }
  const FeatureRange& shard() const { return shard_; }
  Index capacity() const { return static_cast<Index>(slots_.size()); }

  Index size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return static_cast<Index>(std::count_if(slots_.begin(), slots_.end(),
                                            [](const auto& slot) { return slot != nullptr; }));
  }
  bool contains(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return slot >= 0 && slot < capacity() && slots_[static_cast<std::size_t>(slot)] != nullptr;
  }

 private:
  // One resident adapter: its blocks in the shard, in device memory (empty for the identity).
  struct Adapter {
    BlockSpec spec{};                ///< restricted to the shard; b = 0 for the identity
    DeviceBuffer<Parameter> blocks;  ///< generators x b x b, row-major R_g
    DeviceBuffer<Scalar> hi, lo;     ///< 16-bit T, tensor-core b: the split of R

    bool identity() const { return spec.block_size == 0; }
    bool tensor_cores() const { return hi.size() > 0; }
    std::size_t bytes() const { return blocks.bytes() + hi.bytes() + lo.bytes(); }
  };

 public:
  /// An adapter uploaded and checked for this bank, not yet resident (see the CPU bank).
  class Prepared {
   public:
    std::size_t bytes() const { return adapter_->bytes(); }

   private:
    friend class AdapterBank;
    explicit Prepared(std::unique_ptr<Adapter> adapter) : adapter_(std::move(adapter)) {}
    std::unique_ptr<Adapter> adapter_;
  };

  /// Prepares an adapter from R's blocks for the whole layer in host memory: spec.generators()
  /// row-major b x b blocks (Y = X R); the bank uploads those in its feature range. Throws
  /// std::invalid_argument for a spec of another width or a b that does not divide the shard,
  /// std::domain_error for a non-finite entry (before anything is uploaded).
  Prepared prepare(const BlockSpec& spec, const Parameter* rotations) const {
    return Prepared(make_adapter(spec, [&](Index g, Parameter* to) {
      const Index area = spec.block_size * spec.block_size;
      std::copy(rotations + g * area, rotations + (g + 1) * area, to);
    }));
  }

  /// Prepares the rotation of a host operator with spec() and block(i) (a CPU BlockOrthogonal
  /// or AnyBlockOrthogonal, from a host-compiled caller), computed once here.
  template <class Operator>
  Prepared prepare(const Operator& op) const {
    const BlockSpec& spec = op.spec();
    return Prepared(make_adapter(spec, [&](Index g, Parameter* to) {
      const auto block = op.block(g);
      const Index b = spec.block_size;
      for (Index row = 0; row < b; ++row)
        for (Index col = 0; col < b; ++col)
          to[row * b + col] = static_cast<Parameter>(block(row, col));
    }));
  }

  /// Prepares the current rotation of a GPU operator (its rotation_blocks(); its active-block
  /// mask, a training-time dropout, is not part of the adapter). Waits for the device first, so
  /// a set_generators still in flight on any stream has finished.
  template <class OtherScalar, class Policy>
  Prepared prepare(const BlockOrthogonal<OtherScalar, Policy, cuda>& op) const {
    static_assert(std::is_same_v<cuda_parameter_t<OtherScalar>, Parameter>,
                  "AdapterBank<T, cuda>::prepare: the operator's rotation blocks must have the "
                  "bank's parameter type (float for float, __half and __nv_bfloat16; double for "
                  "double)");
    detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize",
                        "AdapterBank<cuda>::prepare");
    const std::vector<Parameter> blocks = op.rotation_blocks_host(nullptr);
    return prepare(op.spec(), blocks.data());
  }

  /// An adapter that leaves this layer alone (a fused layer's slice it does not target).
  Prepared prepare_identity() const { return Prepared(std::make_unique<Adapter>()); }

  /// Makes a prepared adapter resident in the lowest free slot and returns the slot. Throws
  /// std::invalid_argument for a full bank (the bank is unchanged).
  Index add(Prepared adapter) { return insert(std::move(adapter.adapter_)); }
  Index add(const BlockSpec& spec, const Parameter* rotations) {
    return add(prepare(spec, rotations));
  }
  template <class Operator>
  Index add(const Operator& op) {
    return add(prepare(op));
  }
  Index add_identity() { return add(prepare_identity()); }

  /// Replaces the adapter in `slot` (which must hold one).
  void replace(Index slot, Prepared adapter) { swap_into(slot, std::move(adapter.adapter_)); }
  void replace(Index slot, const BlockSpec& spec, const Parameter* rotations) {
    replace(slot, prepare(spec, rotations));
  }
  template <class Operator>
  void replace(Index slot, const Operator& op) {
    replace(slot, prepare(op));
  }

  /// Frees `slot` (which must hold an adapter).
  void remove(Index slot) { swap_into(slot, nullptr); }

  /// Device bytes `slot` holds: its blocks in the shard, plus their tensor-core split for 16-bit
  /// T (0 for the identity).
  std::size_t adapter_bytes(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return occupied(slot, "adapter_bytes").bytes();
  }
  /// The block size of the adapter in `slot` (0 for the identity).
  Index block_size(Index slot) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return occupied(slot, "block_size").spec.block_size;
  }

  /// True when an apply now would run on tensor cores (16-bit T, every resident adapter with a
  /// tensor-core b, WMMA on the device and in the compiled kernels).
  bool use_tensor_cores() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return shape().tensor_cores;
  }

  /// Bytes of device workspace an apply of `tokens` rows needs (any routing, either kernel).
  std::size_t workspace_bytes(Index tokens) const {
    detail::require(tokens >= 0, "AdapterBank<cuda>::workspace_bytes: negative token count ",
                    tokens);
    return layout(tokens).total;
  }

  /// Y = X R_{ids[t]} row by row, with `ids` in device memory (id_count = X's rows). Y may be X
  /// (in place) or disjoint from it. Throws std::invalid_argument, before anything is enqueued,
  /// for shapes, aliasing, host pointers, ids of another length or a small workspace. Ids are
  /// checked on the device: if one names no adapter, nothing is written to Y and
  /// first_bad_token(workspace) reports the smallest such token. Returns the routing used.
  BankRouting apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                    const std::int32_t* ids, Index id_count, void* workspace,
                    std::size_t workspace_size, cudaStream_t stream,
                    BankRouting routing = BankRouting::Automatic) const {
    const char* where = "AdapterBank<cuda>::apply";
    require_apply_arguments(x, y, id_count, workspace, workspace_size, where);
    detail::require(ids != nullptr || id_count == 0, where, ": adapter ids are a null pointer");
    detail::cuda::require_device_pointer(ids, "adapter ids", where);
    if (x.rows() == 0) return routing == BankRouting::Automatic ? BankRouting::Contiguous : routing;
    std::shared_lock<std::shared_mutex> lock(mutex_);
    const Shape s = shape();
    if (routing == BankRouting::Automatic)
      routing = x.rows() >= (resident() + 1) * tile_rows(s) ? BankRouting::Contiguous
                                                            : BankRouting::Gathered;
    enqueue(x, y, ids, workspace, routing, s, stream, where);
    return routing;
  }

  /// The same with the ids in host memory: they are checked here, with the CPU bank's messages,
  /// before anything is enqueued, Automatic counts their runs as the CPU bank does, and they are
  /// copied into the workspace (cudaMemcpyAsync from pageable memory: it returns once `ids` has
  /// been read, so the caller may reuse it; the copy may wait for earlier work on `stream`).
  BankRouting apply(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
                    const std::vector<std::int32_t>& ids, void* workspace,
                    std::size_t workspace_size, cudaStream_t stream,
                    BankRouting routing = BankRouting::Automatic) const {
    const char* where = "AdapterBank<cuda>::apply";
    const Index count = static_cast<Index>(ids.size());
    require_apply_arguments(x, y, count, workspace, workspace_size, where);
    if (x.rows() == 0) return routing == BankRouting::Automatic ? BankRouting::Contiguous : routing;
    std::shared_lock<std::shared_mutex> lock(mutex_);
    for (Index t = 0; t < count; ++t) {
      const std::int32_t id = ids[static_cast<std::size_t>(t)];
      detail::require(id == kNoAdapter || (id >= 0 && id < capacity() &&
                                           slots_[static_cast<std::size_t>(id)] != nullptr),
                      "adapter ids[", t, "]=", id, " names no adapter (capacity ", capacity(), "; ",
                      kNoAdapter, " means none)");
    }
    const Shape s = shape();
    if (routing == BankRouting::Automatic) {
      Index runs = 1;
      for (std::size_t t = 1; t < ids.size(); ++t) runs += ids[t] != ids[t - 1];
      routing = count >= runs * tile_rows(s) ? BankRouting::Contiguous : BankRouting::Gathered;
    }
    const Layout parts = layout(count);
    auto* device_ids = reinterpret_cast<std::int32_t*>(static_cast<char*>(workspace) + parts.ids);
    detail::cuda::check(cudaMemcpyAsync(device_ids, ids.data(), ids.size() * sizeof(std::int32_t),
                                        cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync", where);
    enqueue(x, y, device_ids, workspace, routing, s, stream, where);
    return routing;
  }

  /// The smallest token whose id named no adapter in the last apply that used `workspace`
  /// (nothing was written to Y then), or -1 when every id was valid. Synchronizes `stream`.
  Index first_bad_token(const void* workspace, cudaStream_t stream) const {
    const char* where = "AdapterBank<cuda>::first_bad_token";
    detail::require(workspace != nullptr, where, ": null workspace");
    detail::cuda::require_device_pointer(workspace, "workspace", where);
    std::int32_t status = 0;
    detail::cuda::check(
        cudaMemcpyAsync(&status, workspace, sizeof status, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync", where);
    detail::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize", where);
    return status == detail::cuda::kBankStatusOk ? Index(-1) : Index(status);
  }

 private:
  static constexpr const char* kConstructor = "AdapterBank<cuda> constructor";
  // Ids are int32, and token indices travel through int32 plans and the status word.
  static constexpr Index kMaxCapacity = 1 << 20;
  static constexpr Index kMaxTokens = detail::cuda::kBankStatusOk - 1;

  static FeatureRange checked(Index features, Index capacity, FeatureRange shard) {
    detail::require(features >= 1, "adapter bank features=", features, " must be at least 1");
    detail::require(capacity >= 1 && capacity <= kMaxCapacity, "adapter bank capacity=", capacity,
                    " must be in [1, ", kMaxCapacity, "]");
    detail::require(shard.first >= 0 && shard.count >= 1 && shard.first <= features - shard.count,
                    "adapter bank shard [", shard.first, ", ", shard.first + shard.count,
                    ") is not a non-empty range of the layer's features [0, ", features, ")");
    return shard;
  }

  // The tensor-core kernel's environment, as BlockOrthogonal<cuda> derives its own: the device,
  // the architecture the kernel was compiled for, its shared-memory limit.
  detail::cuda::TensorCoreEnvironment tensor_environment() const {
    detail::cuda::TensorCoreEnvironment env;
    env.device_arch = device_.compute_capability;
    if constexpr (is_half_precision_v<Scalar>) {
      cudaFuncAttributes attributes{};
      if (cudaFuncGetAttributes(&attributes, detail::cuda::bank_apply_tensor_core_kernel<Scalar>) !=
          cudaSuccess) {
        (void)cudaGetLastError();  // no loadable image: CUDA cores only
        return env;
      }
      env.kernel_arch = attributes.ptxVersion;
      env.shared_limit = detail::cuda::dynamic_shared_limit(
          detail::cuda::bank_apply_tensor_core_kernel<Scalar>, kConstructor);
    }
    return env;
  }

  bool tensor_core_block(Index b) const {
    if constexpr (!is_half_precision_v<Scalar>) {
      (void)b;
      return false;
    } else {
      return detail::cuda::tensor_core_block_size(b) &&
             tensor_env_.device_arch >= detail::cuda::tensor_core_min_arch<Scalar>() &&
             tensor_env_.kernel_arch >= detail::cuda::tensor_core_min_arch<Scalar>() &&
             detail::cuda::bank_tensor_shared_bytes(static_cast<int>(b)) <=
                 tensor_env_.shared_limit;
    }
  }

  // What one apply's launch depends on, from the resident adapters (under the lock).
  struct Shape {
    Index b_min = 0, b_max = 0;  // over rotations; 0 when every slot is empty or an identity
    bool tensor_cores = false;
  };
  Shape shape() const {
    Shape s;
    bool all_tensor = true;
    for (const auto& slot : slots_) {
      if (!slot || slot->identity()) continue;
      const Index b = slot->spec.block_size;
      s.b_min = s.b_min == 0 ? b : std::min(s.b_min, b);
      s.b_max = std::max(s.b_max, b);
      all_tensor = all_tensor && slot->tensor_cores();
    }
    s.tensor_cores = s.b_max > 0 && all_tensor;
    return s;
  }
  static Index tile_rows(const Shape& s) {
    return s.tensor_cores ? detail::cuda::kBankTileRows<true> : detail::cuda::kBankTileRows<false>;
  }
  Index resident() const {
    return static_cast<Index>(std::count_if(slots_.begin(), slots_.end(),
                                            [](const auto& slot) { return slot != nullptr; }));
  }

  // Byte offsets of the workspace's parts (each 256-byte aligned): the status word, a copy of
  // host ids, the gathered plan's bucket counts and cursors, tile slots and rows, and the token
  // order, sized for the larger of the two tile heights' plans.
  struct Layout {
    std::size_t ids, counts, cursor, tile_slot, tile_rows, order, total;
    Index max_tiles;
  };
  Layout layout(Index tokens) const {
    using detail::cuda::align_up;
    const auto words = [](Index count) {
      return align_up(static_cast<std::size_t>(count) * sizeof(std::int32_t));
    };
    Index max_tiles = 0, max_positions = 0;
    for (const Index rows :
         {detail::cuda::kBankTileRows<false>, detail::cuda::kBankTileRows<true>}) {
      const Index tiles = detail::cuda::bank_gathered_tiles(tokens, capacity(), rows);
      max_tiles = std::max(max_tiles, tiles);
      max_positions = std::max(max_positions, tiles * rows);
    }
    Layout l{};
    l.max_tiles = max_tiles;
    l.ids = words(1);
    l.counts = l.ids + words(tokens);
    l.cursor = l.counts + words(capacity() + 1);
    l.tile_slot = l.cursor + words(capacity() + 1);
    l.tile_rows = l.tile_slot + words(max_tiles);
    l.order = l.tile_rows + words(max_tiles);
    l.total = l.order + words(max_positions);
    return l;
  }

  template <class X, class Y>
  void require_apply_arguments(const DeviceMatrixView<X>& x, const DeviceMatrixView<Y>& y,
                               Index id_count, const void* workspace, std::size_t workspace_size,
                               const char* where) const {
    detail::require(x.cols() == shard_.count, where, ": X has ", x.cols(),
                    " columns, expected the bank's shard width ", shard_.count);
    detail::cuda::require_shape(y, x.rows(), x.cols(), "Y", where);
    detail::cuda::require_in_place_or_disjoint(y, x, "Y", "X", where);
    detail::require(id_count == x.rows(), where, ": adapter ids have ", id_count,
                    " entries, expected one per row of X (", x.rows(), ")");
    detail::require(x.rows() <= kMaxTokens, where, ": ", x.rows(), " tokens; at most ", kMaxTokens,
                    " (int32 token indices)");
    detail::cuda::require_device_pointer(x.data(), "X", where);
    detail::cuda::require_device_pointer(y.data(), "Y", where);
    if (x.rows() > 0)
      detail::cuda::require_workspace(workspace, workspace_size, workspace_bytes(x.rows()),
                                      x.rows(), where);
  }

  // The kernels of one apply, in order on `stream` (the lock is held shared).
  void enqueue(DeviceMatrixView<const Scalar> x, DeviceMatrixView<Scalar> y,
               const std::int32_t* ids, void* workspace, BankRouting routing, const Shape& s,
               cudaStream_t stream, const char* where) const {
    using namespace detail::cuda;
    const Index n = x.rows();
    const Layout parts = layout(n);
    char* base = static_cast<char*>(workspace);
    const auto part = [&](std::size_t offset) {
      return reinterpret_cast<std::int32_t*>(base + offset);
    };
    std::int32_t* status = part(0);
    const bool gathered = routing == BankRouting::Gathered;
    const Index rows = tile_rows(s);
    const Index buckets = capacity() + 1;
    // kBankStatusOk is 0x7F7F7F7F, so one byte memset initializes the status word.
    check(cudaMemsetAsync(status, 0x7F, sizeof(std::int32_t), stream), "cudaMemsetAsync", where);
    if (gathered)
      check(cudaMemsetAsync(part(parts.counts), 0,
                            static_cast<std::size_t>(buckets) * sizeof(std::int32_t), stream),
            "cudaMemsetAsync", where);
    const unsigned token_blocks = static_cast<unsigned>(std::min<Index>((n + 255) / 256, 4096));
    bank_count_kernel<Scalar, Parameter><<<token_blocks, 256, 0, stream>>>(
        ids, n, table_.data(), static_cast<std::int32_t>(capacity()), status,
        gathered ? part(parts.counts) : nullptr);
    check_launch("bank_count_kernel", where);

    BankLaunch<Scalar, Parameter> p{};
    p.table = table_.data();
    p.ids = ids;
    p.status = status;
    p.n = n;
    p.tiles = token_tiles(n, rows);
    if (gathered) {
      const Index max_tiles = bank_gathered_tiles(n, capacity(), rows);
      bank_plan_kernel<><<<1, kBankPlanThreads, 0, stream>>>(
          part(parts.counts), buckets, rows, max_tiles, part(parts.cursor), part(parts.tile_slot),
          part(parts.tile_rows));
      check_launch("bank_plan_kernel", where);
      bank_scatter_kernel<><<<token_blocks, 256, 0, stream>>>(ids, n, status, part(parts.cursor),
                                                            part(parts.order));
      check_launch("bank_scatter_kernel", where);
      p.order = part(parts.order);
      p.tile_slot = part(parts.tile_slot);
      p.tile_rows = part(parts.tile_rows);
      p.tiles = max_tiles;
    }
    // Every resident b divides the shard and is at least b_min, so shard / b_min column blocks
    // cover every adapter's blocks; identity rows are copied b_min columns per thread block.
    const Index chunk = s.b_min > 0 ? s.b_min : shard_.count;
    p.chunk = static_cast<int>(chunk);
    const dim3 grid(static_cast<unsigned>(shard_.count / chunk), tile_grid(p.tiles));
    const int b_max = static_cast<int>(s.b_max);
    if constexpr (is_half_precision_v<Scalar>) {
      if (s.tensor_cores) {
        const std::size_t bytes = bank_tensor_shared_bytes(b_max);
        require_dynamic_shared(bank_apply_tensor_core_kernel<Scalar>, bytes, s.b_max,
                               "bank_apply_tensor_core_kernel", where);
        bank_apply_tensor_core_kernel<Scalar>
            <<<grid, kTensorThreads, bytes, stream>>>(x.data(), x.ld(), y.data(), y.ld(), p, b_max);
        check_launch("bank_apply_tensor_core_kernel", where);
        return;
      }
    }
    const std::size_t bytes =
        static_cast<std::size_t>(b_max * b_max + kSimtTileRows * b_max) * sizeof(Parameter) +
        2 * static_cast<std::size_t>(kSimtTileRows) * sizeof(std::int32_t);
    require_dynamic_shared(bank_apply_simt_kernel<Scalar, Parameter>, bytes, s.b_max,
                           "bank_apply_simt_kernel", where);
    bank_apply_simt_kernel<Scalar, Parameter>
        <<<grid, kSimtThreads, bytes, stream>>>(x.data(), x.ld(), y.data(), y.ld(), p, b_max);
    check_launch("bank_apply_simt_kernel", where);
  }

  // The adapter for `spec` restricted to the shard, checked on the host and then uploaded;
  // fill(g, to) writes generator g's b x b R.
  template <class Fill>
  std::unique_ptr<Adapter> make_adapter(const BlockSpec& spec, Fill&& fill) const {
    const char* where = "AdapterBank<cuda>::prepare";
    spec.validate();
    const Index b = spec.block_size;
    detail::require(spec.features() == features_, "adapter has d=", spec.features(),
                    " (r=", spec.blocks, " blocks of b=", b,
                    "), the bank's layer has d=", features_);
    detail::require(shard_.first % b == 0 && shard_.count % b == 0, "adapter block size b=", b,
                    " does not divide the bank's shard [", shard_.first, ", ",
                    shard_.first + shard_.count, "): shards must end on block boundaries");
    const BlockSpec kept_spec{shard_.count / b, b, spec.shared};
    const Index first_block = shard_.first / b, area = b * b;
    const Index kept = kept_spec.generators();
    std::vector<Parameter> host(static_cast<std::size_t>(kept * area));
    for (Index g = 0; g < kept; ++g)
      fill(spec.shared ? 0 : first_block + g, host.data() + g * area);
    for (const Parameter value : host)
      detail::require_domain(std::isfinite(value), "adapter rotation has a non-finite entry");

    auto adapter = std::make_unique<Adapter>();
    adapter->spec = kept_spec;
    adapter->blocks = DeviceBuffer<Parameter>(host.size());
    detail::cuda::check(cudaMemcpy(adapter->blocks.data(), host.data(), adapter->blocks.bytes(),
                                   cudaMemcpyHostToDevice),
                        "cudaMemcpy", where);
    if (tensor_core_block(b)) {
      adapter->hi = DeviceBuffer<Scalar>(host.size());
      adapter->lo = DeviceBuffer<Scalar>(host.size());
      split(*adapter, where);
    }
    return adapter;
  }

  void split(Adapter& adapter, const char* where) const {
    if constexpr (is_half_precision_v<Scalar>) {
      const Index count = static_cast<Index>(adapter.blocks.size());
      const Index grid = std::min<Index>((count + 255) / 256, 65535);
      detail::cuda::split_blocks_kernel<Scalar><<<static_cast<unsigned>(grid), 256>>>(
          adapter.blocks.data(), count, adapter.hi.data(), adapter.lo.data());
      detail::cuda::check_launch("split_blocks_kernel", where);
      detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", where);
    } else {
      (void)adapter;
      (void)where;
    }
  }

  detail::cuda::BankSlot<Scalar, Parameter> entry(const Adapter* adapter) const {
    detail::cuda::BankSlot<Scalar, Parameter> e{};
    if (adapter == nullptr) return e;
    if (adapter->identity()) {
      e.state = detail::cuda::kBankSlotIdentity;
      return e;
    }
    e.blocks = adapter->blocks.data();
    e.hi = adapter->tensor_cores() ? adapter->hi.data() : nullptr;
    e.lo = adapter->tensor_cores() ? adapter->lo.data() : nullptr;
    e.b = static_cast<int>(adapter->spec.block_size);
    e.count = static_cast<int>(adapter->spec.blocks);
    e.shared = adapter->spec.shared ? 1 : 0;
    e.state = detail::cuda::kBankSlotRotation;
    return e;
  }

  // Rewrites table entry `slot` once no enqueued apply can still read it (lock held exclusively).
  void write_entry(Index slot, const Adapter* adapter, const char* where) {
    const auto e = entry(adapter);
    detail::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", where);
    detail::cuda::check(cudaMemcpy(table_.data() + slot, &e, sizeof e, cudaMemcpyHostToDevice),
                        "cudaMemcpy", where);
  }

  Index insert(std::unique_ptr<Adapter> adapter) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    for (std::size_t slot = 0; slot < slots_.size(); ++slot)
      if (!slots_[slot]) {
        write_entry(static_cast<Index>(slot), adapter.get(), "AdapterBank<cuda>::add");
        slots_[slot] = std::move(adapter);
        return static_cast<Index>(slot);
      }
    detail::require(false, "adapter bank is full (capacity ", capacity(),
                    "): remove an adapter first");
    return -1;
  }

  // The old adapter's device memory is freed after the lock is released; no apply reads it by
  // then (write_entry drained the device, and later applies see the new entry).
  void swap_into(Index slot, std::unique_ptr<Adapter> adapter) {
    std::unique_ptr<Adapter> old;
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      const char* operation = adapter ? "replace" : "remove";
      occupied(slot, operation);
      write_entry(slot, adapter.get(),
                  adapter ? "AdapterBank<cuda>::replace" : "AdapterBank<cuda>::remove");
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
  // Sized once: adding or removing an adapter never moves the others. Readers (apply) hold the
  // lock shared while they enqueue; writers hold it exclusively to drain the device and rewrite
  // one entry.
  std::vector<std::unique_ptr<Adapter>> slots_;
  detail::cuda::DeviceInfo device_;
  detail::cuda::TensorCoreEnvironment tensor_env_;
  DeviceBuffer<detail::cuda::BankSlot<Scalar, Parameter>> table_;  ///< capacity entries
  mutable std::shared_mutex mutex_;
};

}  // namespace oft

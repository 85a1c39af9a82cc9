#pragma once
/// \file cpu/serving_linear.hpp
/// ServingLinear<Scalar, cpu>: the CPU backend's serving layer (public API documented in
/// <oft/serving_linear.hpp> and docs/serving.md): one AdapterBank per output slice of a frozen
/// weight (cpu/adapter_bank.hpp), and the slice's GEMM through Eigen (an external BLAS when
/// EIGEN_USE_BLAS is defined, OpenMP otherwise), as OftLinear's base GEMM.

#include <cstdint>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include "../backend.hpp"
#include "../detail/layer_checks.hpp"
#include "../parameterization.hpp"
#include "../workspace.hpp"
#include "adapter_bank.hpp"

namespace oft {

template <class Scalar_>
class ServingLinear<Scalar_, cpu> {
 public:
  using Scalar = Scalar_;
  using Bank = AdapterBank<Scalar, cpu>;
  using Vector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

  /// A layer over `weight` (n_out x d, copied) whose output rows are the projections `slices`
  /// (their n_out counts, in order: {q, k, v} of a fused QKV, {gate, up}; {} or {n_out} for one
  /// projection), with room for `capacity` adapters; `bias` (n_out entries) may be null;
  /// `storage`: how the banks keep R (adapter_bank.hpp).
  ServingLinear(ConstMatrixView<Scalar> weight, const Scalar* bias, std::vector<Index> slices,
                Index capacity, RotationStorage storage = RotationStorage::Scalar)
      : ServingLinear(weight, bias, std::move(slices), capacity, weight.cols(),
                      FeatureRange{0, weight.cols()}, storage) {}

  /// A row-parallel rank's part of a layer with `features` inputs: `weight` holds W0's columns
  /// [shard.first, shard.first + shard.count) (n_out x shard.count), forward takes X's same
  /// columns and returns this rank's partial Z (the ranks' outputs sum to the layer's; the bias,
  /// if any, is added by the rank that passes it).
  ServingLinear(ConstMatrixView<Scalar> weight, const Scalar* bias, std::vector<Index> slices,
                Index capacity, Index features, FeatureRange shard,
                RotationStorage storage = RotationStorage::Scalar)
      : weight_(weight.map()),
        bias_(bias ? Vector(Eigen::Map<const Vector>(bias, weight.rows())) : Vector()),
        offsets_(slice_offsets(std::move(slices), weight.rows())) {
    detail::require(weight.cols() == shard.count, "W0 has ", weight.cols(),
                    " columns, expected the shard's ", shard.count);
    for (std::size_t k = 0; k + 1 < offsets_.size(); ++k)
      banks_.push_back(std::make_unique<Bank>(features, capacity, shard, storage));
  }

  Index features() const { return weight_.cols(); }  ///< X's columns (the shard's, if sharded)
  Index outputs() const { return weight_.rows(); }   ///< n_out
  Index slices() const { return static_cast<Index>(banks_.size()); }
  Index capacity() const { return banks_.front()->capacity(); }
  const RowMatrix<Scalar>& weight() const { return weight_; }
  /// The bank of slice `k` (its adapters' rotations for that projection).
  const Bank& bank(Index k) const {
    detail::require(k >= 0 && k < slices(), "slice ", k, " is out of range [0, ", slices(), ")");
    return *banks_[static_cast<std::size_t>(k)];
  }

  /// Adds one adapter: `per_slice[k]` is its operator for slice k (anything AdapterBank::add
  /// takes, e.g. AnyBlockOrthogonal), or null where it does not target that projection. Returns
  /// its id, the same slot in every slice's bank. Throws std::invalid_argument (list length, an
  /// operator of another width, a full layer) with the layer unchanged.
  template <class Operator>
  Index add(const std::vector<const Operator*>& per_slice) {
    std::lock_guard<std::mutex> writers(writers_);
    auto prepared = prepare(per_slice);  // every slice checked before any bank changes
    const Index slot = first_free_slot();
    for (std::size_t k = 0; k < banks_.size(); ++k) banks_[k]->add(std::move(prepared[k]));
    return slot;  // the lowest free slot, the same in every bank: writers are serialized
  }

  /// Replaces adapter `id`'s operators (as add takes them).
  template <class Operator>
  void replace(Index id, const std::vector<const Operator*>& per_slice) {
    std::lock_guard<std::mutex> writers(writers_);
    detail::require(banks_.front()->contains(id), "serving layer: adapter ", id, " is not loaded");
    auto prepared = prepare(per_slice);
    for (std::size_t k = 0; k < banks_.size(); ++k) banks_[k]->replace(id, std::move(prepared[k]));
  }

  /// Unloads adapter `id` from every slice.
  void remove(Index id) {
    std::lock_guard<std::mutex> writers(writers_);
    detail::require(banks_.front()->contains(id), "serving layer: adapter ", id, " is not loaded");
    for (auto& bank : banks_) bank->remove(id);
  }

  /// Bytes of adapter `id`'s rotations over all slices.
  std::size_t adapter_bytes(Index id) const {
    std::size_t bytes = 0;
    for (const auto& bank : banks_) bytes += bank->adapter_bytes(id);
    return bytes;
  }

  /// Scalars of workspace forward needs for `tokens` rows: one rotated copy of X, reused by
  /// every slice in turn.
  Index workspace_size(Index tokens) const { return tokens * features(); }

  /// Z = (X R_{ids[t]}) W_k^T + bias, slice by slice: each slice's rotated input goes through
  /// that slice's rows of W0 only, so the GEMMs together cost one base GEMM (N d n_out), never
  /// a batch of one copy of X per slice. X: N x d; Z: N x n_out, disjoint from X; ids as
  /// AdapterBank::apply takes them. Checked before anything is written.
  void forward(ConstMatrixView<Scalar> x, const std::int32_t* ids, Index id_count,
               MatrixView<Scalar> z, Workspace<Scalar>& workspace) const {
    detail::check_layer_forward(x, z, features(), outputs(), "Z");
    Scalar* rotated = workspace.reserve(workspace_size(x.rows()));
    MatrixView<Scalar> y(rotated, x.rows(), features());
    auto out = z.map();
    for (std::size_t k = 0; k < banks_.size(); ++k) {
      // The first slice's apply checks the ids (the banks hold the same slots) before Z is
      // written; it writes only the workspace.
      banks_[k]->apply(x, y, ids, id_count);
      const Index first = offsets_[k], rows = offsets_[k + 1] - offsets_[k];
      out.middleCols(first, rows).noalias() = y.map() * weight_.middleRows(first, rows).transpose();
    }
    if (bias_.size() > 0) out.rowwise() += bias_;
  }

  void forward(ConstMatrixView<Scalar> x, const std::vector<std::int32_t>& ids,
               MatrixView<Scalar> z, Workspace<Scalar>& workspace) const {
    forward(x, ids.data(), static_cast<Index>(ids.size()), z, workspace);
  }

 private:
  static std::vector<Index> slice_offsets(std::vector<Index> slices, Index outputs) {
    if (slices.empty()) slices.push_back(outputs);
    std::vector<Index> offsets{0};
    for (const Index rows : slices) {
      detail::require(rows >= 1, "serving layer slice of ", rows, " outputs (must be at least 1)");
      offsets.push_back(offsets.back() + rows);
    }
    detail::require(offsets.back() == outputs, "serving layer slices sum to ", offsets.back(),
                    " outputs, W0 has n_out=", outputs);
    return offsets;
  }

  template <class Operator>
  std::vector<typename Bank::Prepared> prepare(const std::vector<const Operator*>& per_slice) const {
    detail::require(static_cast<Index>(per_slice.size()) == slices(), "serving layer: ",
                    per_slice.size(), " operators given, one per slice expected (", slices(), ")");
    std::vector<typename Bank::Prepared> prepared;
    for (std::size_t k = 0; k < banks_.size(); ++k)
      prepared.push_back(per_slice[k] ? banks_[k]->prepare(*per_slice[k])
                                      : banks_[k]->prepare_identity());
    return prepared;
  }

  Index first_free_slot() const {
    for (Index slot = 0; slot < capacity(); ++slot)
      if (!banks_.front()->contains(slot)) return slot;
    detail::require(false, "serving layer is full (capacity ", capacity(),
                    "): remove an adapter first");
    return -1;
  }

  RowMatrix<Scalar> weight_;
  Vector bias_;
  std::vector<Index> offsets_;  ///< slice k is rows [offsets_[k], offsets_[k + 1]) of W0
  std::vector<std::unique_ptr<Bank>> banks_;
  std::mutex writers_;  // add/replace/remove keep every bank's slots identical
};

}  // namespace oft

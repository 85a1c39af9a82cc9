#pragma once
/// \file givens_spec.hpp
/// The layout of a Givens orthogonal matrix (GOFT: Ma et al., "Parameter Efficient
/// Quasi-Orthogonal Fine-Tuning via Givens Rotation", ICML 2024, arXiv 2404.04316, Eq. 1-3;
/// docs/families.md section 3): R = P_L ... P_2 P_1, each stage P_r a product of disjoint Givens
/// rotations G(i, j; t) (G_ii = G_jj = cos t, G_ij = -sin t, G_ji = sin t), one angle each,
/// stored stage-major (stage 1's angles first, in pair order).
///
///   GivensLayout::Goft       the paper's: stage r pairs (2^r k, 2^r k + 2^(r-1)) for every k
///                            with 2^r k + 2^(r-1) < d; d - 1 angles over ceil(log2 d) stages,
///                            any d >= 2 (the paper takes d a power of two; the authors' first
///                            code carries odd counts this way).
///   GivensLayout::Butterfly  ours: stage r pairs (i, i + 2^(r-1)) for every i whose bit r-1 is
///                            clear; d a power of two, d/2 angles per stage. PEFT's BOFT with
///                            b = 2 and m = log2 d is this layout (block g of factor i is stage
///                            i+1's pair g).
/// Eigen-free.

#include <cstddef>
#include <utility>
#include <vector>

#include "config.hpp"
#include "errors.hpp"

namespace oft {

enum class GivensLayout { Goft, Butterfly };

/// The stages of pairs (i < j) for d features; stages()[0] is stage 1.
class GivensSpec {
 public:
  /// Throws std::invalid_argument naming the values unless d >= 2 (and a power of two for the
  /// butterfly layout).
  GivensSpec(Index features, GivensLayout layout) : features_(features), layout_(layout) {
    detail::require(features >= 2 && features <= (Index{1} << 40), "givens features d=", features,
                    " must be in [2, 2^40]");
    if (layout == GivensLayout::Butterfly)
      detail::require((features & (features - 1)) == 0, "givens features d=", features,
                      " must be a power of two for the butterfly layout");
    for (Index half = 1; half < features; half *= 2) {  // half = 2^(r-1)
      std::vector<std::pair<Index, Index>> stage;
      if (layout == GivensLayout::Goft) {
        for (Index i = 0; i + half < features; i += 2 * half) stage.emplace_back(i, i + half);
      } else {
        for (Index i = 0; i < features; ++i)
          if ((i & half) == 0) stage.emplace_back(i, i + half);
      }
      angles_ += static_cast<Index>(stage.size());
      stages_.push_back(std::move(stage));
    }
  }

  Index features() const { return features_; }
  GivensLayout layout() const { return layout_; }
  /// Total angles: d - 1 (Goft), (d/2) log2 d (Butterfly).
  Index angles() const { return angles_; }
  const std::vector<std::vector<std::pair<Index, Index>>>& stages() const { return stages_; }

 private:
  Index features_;
  GivensLayout layout_;
  Index angles_ = 0;
  std::vector<std::vector<std::pair<Index, Index>>> stages_;
};

}  // namespace oft

#pragma once
/// \file butterfly_spec.hpp
/// The layout of a butterfly orthogonal matrix (BOFT: Liu et al., "Parameter-Efficient Orthogonal
/// Finetuning via Butterfly Factorization", ICLR 2024; Hugging Face PEFT's `tuners/boft`):
/// M = B_{m-1} ... B_1 B_0 over d = N b features, each factor B_i a block-diagonal rotation of N
/// blocks of b between fixed butterfly permutations, B_i = P_i diag(R_{i,0..N-1}) P_i^T.
///
/// Block g of factor i acts on two runs of h = b/2 features, L/2 = b 2^(i-1) apart
/// (docs/families.md, section 1.3): with L = b 2^i and g = seg 2^i + t (0 <= t < 2^i),
///
///     feature(i, g, p) = seg L + t h + p               for p <  h
///                      = seg L + (t + 2^i) h + p - h   for p >= h
///
/// Factor 0 is plain block-diagonal OFT (feature(0, g, p) = g b + p). Applied to the rows of X,
/// X M = X B_{m-1} ... B_0: factor m-1 acts first. PEFT checks these conditions: b and N even
/// when m > 1, and 2^(m-1) divides N. Eigen-free (the operator is <oft/butterfly.hpp>).

#include <cstddef>
#include <vector>

#include "config.hpp"
#include "errors.hpp"

namespace oft {

/// d = blocks * block_size features, `factors` butterfly factors of `blocks` blocks each.
struct ButterflySpec {
  Index blocks = 0;      ///< N, blocks per factor
  Index block_size = 0;  ///< b
  Index factors = 1;     ///< m

  /// The spec for d features in blocks of b; throws std::invalid_argument naming the values
  /// unless d = N b with the conditions above.
  static ButterflySpec from_features(Index features, Index block_size, Index factors) {
    detail::require(block_size >= 1 && block_size <= kMaxBlockSize, "butterfly block_size b=",
                    block_size, " must be in [1, ", kMaxBlockSize, "]");
    detail::require(features >= 1 && features % block_size == 0, "butterfly features d=",
                    features, " must be a positive multiple of block_size b=", block_size);
    ButterflySpec spec{features / block_size, block_size, factors};
    spec.validate();
    return spec;
  }

  Index features() const { return blocks * block_size; }
  /// Rows of the packed generators: m N (factor i's blocks are rows i N .. i N + N - 1).
  Index generators() const { return factors * blocks; }
  /// Packed numbers per block, b(b-1)/2.
  Index packed() const { return block_size * (block_size - 1) / 2; }

  /// Throws std::invalid_argument naming the values unless the layout exists.
  void validate() const {
    detail::require(block_size >= 1 && block_size <= kMaxBlockSize, "butterfly block_size b=",
                    block_size, " must be in [1, ", kMaxBlockSize, "]");
    detail::require(blocks >= 1, "butterfly blocks N=", blocks, " must be >= 1");
    detail::require(factors >= 1 && factors <= 62, "butterfly factors m=", factors,
                    " must be in [1, 62]");
    if (factors > 1) {
      detail::require(block_size % 2 == 0, "butterfly block_size b=", block_size,
                      " must be even when factors m=", factors, " > 1");
      detail::require(blocks % 2 == 0, "butterfly blocks N=", blocks,
                      " must be even when factors m=", factors, " > 1");
      detail::require(blocks % (Index{1} << (factors - 1)) == 0, "butterfly blocks N=", blocks,
                      " must be a multiple of 2^(m-1)=", Index{1} << (factors - 1),
                      " for factors m=", factors);
    }
  }

  /// The feature that row/column p of block g of factor i acts on.
  Index feature(Index factor, Index block, Index p) const {
    if (factor == 0) return block * block_size + p;
    const Index h = block_size / 2, span = Index{1} << factor, length = block_size * span;
    const Index seg = block / span, t = block % span;
    return p < h ? seg * length + t * h + p : seg * length + (t + span) * h + (p - h);
  }

  /// position[f] = g b + p for the feature f = feature(factor, g, p): where factor i's gathered
  /// order puts feature f (PEFT's block_butterfly_perm, pi_i).
  std::vector<Index> positions(Index factor) const {
    std::vector<Index> position(static_cast<std::size_t>(features()));
    for (Index g = 0; g < blocks; ++g)
      for (Index p = 0; p < block_size; ++p)
        position[static_cast<std::size_t>(feature(factor, g, p))] = g * block_size + p;
    return position;
  }
};

}  // namespace oft

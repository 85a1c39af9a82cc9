#pragma once
/// \file index.hpp
/// Index math of the packed skew-symmetric layout (SPEC section 3). Host/device code: the CUDA
/// backend uses the same functions, so the CPU tests cover both.
///
/// Layout: a generator of block size b is stored as m = b(b-1)/2 numbers, the strict upper
/// triangle of U listed row by row: (0,1),(0,2),...,(0,b-1),(1,2),...,(b-2,b-1). Element (p,q),
/// p<q, sits at k = p(2b-p-1)/2 + (q-p-1), and Q = U - U^T.

#include <cmath>
#include <limits>

#include "config.hpp"
#include "errors.hpp"

namespace oft {

/// Number of packed entries of one b x b skew-symmetric generator: b(b-1)/2.
OFT_HOST_DEVICE constexpr Index packed_size(Index b) { return b * (b - 1) / 2; }

/// Offset of element (p,q), p<q, in the packed row of a generator with block size b.
OFT_HOST_DEVICE constexpr Index packed_index(Index p, Index q, Index b) {
  return p * (2 * b - p - 1) / 2 + (q - p - 1);
}

/// Offset where row p of the strict upper triangle starts: packed_index(p, p+1, b).
OFT_HOST_DEVICE constexpr Index packed_row_start(Index p, Index b) {
  return p * (2 * b - p - 1) / 2;
}

namespace detail {
/// b(b-1)/2 in unsigned 64-bit arithmetic, exact for b <= 2^32 + 1 (halve the even factor first).
OFT_HOST_DEVICE constexpr unsigned long long triangular(unsigned long long b) {
  return (b % 2 == 0) ? (b / 2) * (b - 1) : b * ((b - 1) / 2);
}
}  // namespace detail

/// Block size b with b(b-1)/2 == m, or -1 when m is not a triangular number (m >= 0).
/// Exact integer arithmetic for every m an Index holds: the floating-point square root only
/// gives a first guess, and b never exceeds 2^32 (the largest b with b(b-1)/2 < 2^63).
OFT_HOST_DEVICE inline Index block_size_or_negative(Index m) {
  if (m < 0) return -1;
  constexpr unsigned long long kLargest = 1ull << 32;
  const auto target = static_cast<unsigned long long>(m);
  auto b = static_cast<unsigned long long>((1.0 + std::sqrt(1.0 + 8.0 * static_cast<double>(m))) /
                                           2.0);
  if (b > kLargest) b = kLargest;
  if (b < 1) b = 1;
  // Correct a rounding error of the square root in either direction.
  while (b > 1 && detail::triangular(b) > target) --b;
  while (b < kLargest && detail::triangular(b + 1) <= target) ++b;
  return detail::triangular(b) == target ? static_cast<Index>(b) : -1;
}

namespace detail {
/// Throws std::invalid_argument unless 1 <= b <= kMaxBlockSize; `what` names the quantity.
inline void require_block_size(Index b, const char* what = "block size") {
  require(b >= 1 && b <= kMaxBlockSize, what, " must lie in [1, ", kMaxBlockSize,
          "] (kMaxBlockSize), got b=", b);
}
}  // namespace detail

/// Block size b from a packed length m = b(b-1)/2, as SPEC section 3 gives it:
/// b = (1 + sqrt(1 + 8m)) / 2. Throws std::invalid_argument when m is not triangular or implies
/// b > kMaxBlockSize. m = 0 gives b = 1 (a 1 x 1 block has no free parameter; R = [1]).
inline Index block_size_from_packed(Index m) {
  const Index b = block_size_or_negative(m);
  detail::require(b >= 1, "packed length ", m,
                  " is not a triangular number b(b-1)/2, so it is no packed skew generator");
  detail::require(b <= kMaxBlockSize, "packed length ", m, " implies block size b=", b,
                  ", above kMaxBlockSize=", kMaxBlockSize);
  return b;
}

/// How the feature dimension d splits into r blocks of size b, and whether all blocks share one
/// generator (PEFT's block_share). Invariant once validated: d = blocks * block_size.
struct BlockSpec {
  Index blocks = 0;      ///< r, number of diagonal blocks
  Index block_size = 0;  ///< b, size of each block
  bool shared = false;   ///< one generator for all blocks

  /// Builds a spec from the feature size d and the block size b; throws unless b divides d.
  static BlockSpec from_features(Index d, Index b, bool shared = false) {
    detail::require_block_size(b);
    detail::require(d >= 1 && d % b == 0, "feature size d=", d,
                    " is not divisible by block size b=", b);
    return BlockSpec{d / b, b, shared};
  }

  Index features() const { return blocks * block_size; }          ///< d = r*b
  Index generators() const { return shared ? 1 : blocks; }          ///< rows of theta
  Index packed() const { return packed_size(block_size); }          ///< m = b(b-1)/2
  Index generator_of(Index block) const { return shared ? 0 : block; }

  /// Throws std::invalid_argument unless the spec is usable: r >= 1, 1 <= b <= kMaxBlockSize,
  /// and d = r*b fits in an Index.
  void validate() const {
    detail::require(blocks >= 1 && block_size >= 1, "block spec needs r >= 1 and b >= 1, got r=",
                    blocks, " b=", block_size);
    detail::require_block_size(block_size);
    detail::require(blocks <= std::numeric_limits<Index>::max() / block_size, "block spec r=",
                    blocks, " blocks of b=", block_size, " has more features than an Index holds");
  }
};

}  // namespace oft

#pragma once
/// \file dropout.hpp
/// Multiplicative block dropout (SPEC section 3, PEFT's MultiplicativeDropoutLayer): during
/// training, floor(p * r) of the r blocks, chosen uniformly at random, are replaced by the
/// identity. With one shared generator for all blocks PEFT drops nothing; so does oft.
///
/// Reproducible by construction: the mask depends only on (r, p, seed), through SplitMix64 and a
/// partial Fisher–Yates shuffle, so it is the same on every platform and compiler (unlike
/// std::uniform_int_distribution). Feed it to BlockOrthogonal::set_active_blocks.

#include <cstdint>
#include <numeric>
#include <vector>

#include "errors.hpp"
#include "index.hpp"

namespace oft {

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, fully specified generator.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform integer in [0, bound) by rejection (no modulo bias).
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % bound);
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % bound;
  }

 private:
  std::uint64_t state_;
};

/// Active-block flags (1 = keep R_i, 0 = identity) for `spec`, dropping floor(p * r) blocks.
/// p must lie in [0, 1]. Use a new seed per training step (e.g. base_seed + step).
inline std::vector<unsigned char> dropout_mask(const BlockSpec& spec, double p,
                                               std::uint64_t seed) {
  spec.validate();
  detail::require(p >= 0.0 && p <= 1.0, "dropout probability must lie in [0, 1], got ", p);
  const Index r = spec.blocks;
  std::vector<unsigned char> active(static_cast<size_t>(r), 1);
  if (spec.shared || r == 1) return active;
  const Index drop = static_cast<Index>(p * static_cast<double>(r));
  std::vector<Index> order(static_cast<size_t>(r));
  std::iota(order.begin(), order.end(), Index(0));
  SplitMix64 rng(seed);
  for (Index i = 0; i < drop; ++i) {  // partial Fisher–Yates: the first `drop` entries
    const Index j = i + static_cast<Index>(rng.below(static_cast<std::uint64_t>(r - i)));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
    active[static_cast<size_t>(order[static_cast<size_t>(i)])] = 0;
  }
  return active;
}

}  // namespace oft

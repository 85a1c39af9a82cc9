// Index math of the packed skew-symmetric layout (index.hpp, SPEC section 3).

#include <gtest/gtest.h>

#include <limits>
#include <oft/index.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::throws_with;

// The SPEC layout written out by hand for b = 4: row by row over the strict upper triangle.
TEST(PackedIndex, MatchesHandEnumeratedLayoutForB4) {
  const std::vector<std::pair<Index, Index>> order = {{0, 1}, {0, 2}, {0, 3},
                                                      {1, 2}, {1, 3}, {2, 3}};
  for (Index k = 0; k < static_cast<Index>(order.size()); ++k) {
    const auto [p, q] = order[static_cast<size_t>(k)];
    EXPECT_EQ(oft::packed_index(p, q, 4), k) << "(p,q)=(" << p << "," << q << ")";
  }
  EXPECT_EQ(oft::packed_size(4), 6);
  EXPECT_EQ(oft::packed_row_start(0, 4), 0);
  EXPECT_EQ(oft::packed_row_start(1, 4), 3);
  EXPECT_EQ(oft::packed_row_start(2, 4), 5);
  EXPECT_EQ(oft::packed_row_start(3, 4), 6);  // one past the end: row 3 is empty
}

// For general b the formula must enumerate 0, 1, ..., m-1 in row-major order of the upper
// triangle, and packed_row_start(p) must be the offset of (p, p+1).
TEST(PackedIndex, EnumeratesUpperTriangleRowByRow) {
  for (Index b = 1; b <= 40; ++b) {
    Index k = 0;
    for (Index p = 0; p < b; ++p) {
      EXPECT_EQ(oft::packed_row_start(p, b), k) << "b=" << b << " p=" << p;
      for (Index q = p + 1; q < b; ++q, ++k) {
        ASSERT_EQ(oft::packed_index(p, q, b), k) << "b=" << b << " (" << p << "," << q << ")";
        if (q == p + 1) {
          EXPECT_EQ(oft::packed_index(p, q, b), oft::packed_row_start(p, b));
        }
      }
    }
    EXPECT_EQ(k, oft::packed_size(b)) << "b=" << b;
    EXPECT_EQ(oft::packed_size(b), b * (b - 1) / 2);
  }
}

TEST(PackedIndex, IsConstexpr) {
  static_assert(oft::packed_size(4) == 6);
  static_assert(oft::packed_index(1, 3, 4) == 4);
  static_assert(oft::packed_row_start(2, 4) == 5);
  static_assert(oft::packed_size(32) == 496);
  SUCCEED();
}

TEST(BlockSizeFromPacked, TriangularNumbers) {
  EXPECT_EQ(oft::block_size_from_packed(0), 1);  // 1 x 1 block, no parameter
  EXPECT_EQ(oft::block_size_from_packed(1), 2);
  EXPECT_EQ(oft::block_size_from_packed(3), 3);
  EXPECT_EQ(oft::block_size_from_packed(6), 4);
  EXPECT_EQ(oft::block_size_from_packed(496), 32);
  EXPECT_EQ(oft::block_size_from_packed(2016), 64);
  for (Index b = 2; b <= 2000; ++b)
    ASSERT_EQ(oft::block_size_from_packed(oft::packed_size(b)), b) << "b=" << b;
}

TEST(BlockSizeFromPacked, RejectsNonTriangular) {
  // Every m strictly between two consecutive triangular numbers is rejected.
  for (Index b = 2; b <= 300; ++b)
    for (Index m = oft::packed_size(b) + 1; m < oft::packed_size(b + 1); ++m) {
      ASSERT_EQ(oft::block_size_or_negative(m), -1) << "m=" << m;
      ASSERT_THROW(oft::block_size_from_packed(m), std::invalid_argument) << "m=" << m;
    }
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::block_size_from_packed(5); }, {"5"}));
  EXPECT_TRUE(
      throws_with<std::invalid_argument>([] { oft::block_size_from_packed(497); }, {"497"}));
  EXPECT_EQ(oft::block_size_or_negative(-1), -1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::block_size_from_packed(-3); }, {"-3"}));
}

// Beyond 2^53 the double square root in the first guess is inexact; the integer correction must
// still give the exact answer and reject neighbours. b up to 3e9 keeps b(b+1) below 2^63.
TEST(BlockSizeFromPacked, ExactForLargeM) {
  const std::vector<Index> sizes = {94906267,     94906268,     134217729,   2147483648LL,
                                    2147483649LL, 3037000000LL, 3000000001LL};
  for (Index b : sizes) {
    const Index m = oft::packed_size(b);
    EXPECT_EQ(oft::block_size_or_negative(m), b) << "b=" << b;
    // Exact, but above the documented cap on b: refused with both numbers named.
    EXPECT_TRUE(throws_with<std::invalid_argument>([m] { oft::block_size_from_packed(m); },
                                                   {std::to_string(m), "b=" + std::to_string(b),
                                                    "kMaxBlockSize"}));
    EXPECT_EQ(oft::block_size_or_negative(m - 1), -1) << "b=" << b;
    EXPECT_EQ(oft::block_size_or_negative(m + 1), -1) << "b=" << b;
    EXPECT_TRUE(throws_with<std::invalid_argument>([m] { oft::block_size_from_packed(m + 1); },
                                                   {std::to_string(m + 1)}));
  }
}

// Up to the largest m an Index can hold: b = 2^32 gives m = 2^31 (2^32 - 1) < 2^63, and
// INT64_MAX lies strictly between two triangular numbers. b (b + 1) overflows 64-bit signed
// arithmetic here, so this also checks (under UBSan) that the search does not overflow.
TEST(BlockSizeFromPacked, LargestRepresentableM) {
  const std::vector<Index> sizes = {3037000500LL, 3037000501LL, 4294967295LL, 4294967296LL};
  for (Index b : sizes) {
    const Index m = (b % 2 == 0) ? (b / 2) * (b - 1) : b * ((b - 1) / 2);
    EXPECT_EQ(oft::block_size_or_negative(m), b) << "b=" << b;
    EXPECT_EQ(oft::block_size_or_negative(m - 1), -1) << "b=" << b;
    EXPECT_EQ(oft::block_size_or_negative(m + 1), -1) << "b=" << b;
  }
  const Index max = std::numeric_limits<Index>::max();
  EXPECT_EQ(oft::block_size_or_negative(max), -1);
  EXPECT_EQ(oft::block_size_or_negative(max - 1), -1);
  // No capture: max is a constant expression, which clang warns about capturing.
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { oft::block_size_from_packed(std::numeric_limits<Index>::max()); },
      {std::to_string(max)}));
}

TEST(BlockSpec, FromFeatures) {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(96, 8);
  EXPECT_EQ(spec.blocks, 12);
  EXPECT_EQ(spec.block_size, 8);
  EXPECT_FALSE(spec.shared);
  EXPECT_EQ(spec.features(), 96);
  EXPECT_EQ(spec.generators(), 12);
  EXPECT_EQ(spec.packed(), 28);
  EXPECT_EQ(spec.generator_of(5), 5);

  const oft::BlockSpec shared = oft::BlockSpec::from_features(96, 8, true);
  EXPECT_TRUE(shared.shared);
  EXPECT_EQ(shared.generators(), 1);
  for (Index i = 0; i < shared.blocks; ++i) EXPECT_EQ(shared.generator_of(i), 0);

  EXPECT_NO_THROW(oft::BlockSpec::from_features(7, 1).validate());
  EXPECT_EQ(oft::BlockSpec::from_features(7, 7).blocks, 1);
}

}  // namespace

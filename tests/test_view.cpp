// Non-owning views over raw memory (view.hpp) and packed generator views (skew.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <oft/skew.hpp>
#include <oft/view.hpp>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::throws_with;

// --- compile-time properties: const views cannot be written through -------------------------

using MutableView = oft::MatrixView<double>;
using ConstView = oft::MatrixView<const double>;
static_assert(std::is_same_v<decltype(std::declval<const MutableView&>()(0, 0)), double&>);
static_assert(std::is_same_v<decltype(std::declval<const ConstView&>()(0, 0)), const double&>);
static_assert(std::is_assignable_v<decltype(std::declval<MutableView&>()(0, 0)), double>);
static_assert(!std::is_assignable_v<decltype(std::declval<ConstView&>()(0, 0)), double>);
static_assert(std::is_const_v<std::remove_pointer_t<decltype(std::declval<ConstView&>().data())>>);
static_assert(std::is_const_v<std::remove_pointer_t<decltype(std::declval<ConstView&>().row(0))>>);
static_assert(std::is_same_v<ConstView::Scalar, double>);
// Mutable -> const converts implicitly; const -> mutable does not exist at all.
static_assert(std::is_convertible_v<MutableView, ConstView>);
static_assert(!std::is_convertible_v<ConstView, MutableView>);
static_assert(!std::is_constructible_v<MutableView, ConstView>);
// The Eigen map of a const view is read-only.
static_assert(!std::is_assignable_v<decltype(std::declval<ConstView&>().map()(0, 0)), double>);
static_assert(std::is_assignable_v<decltype(std::declval<MutableView&>().map()(0, 0)), double>);

using MutableGen = oft::GeneratorView<float>;
using ConstGen = oft::GeneratorView<const float>;
static_assert(!std::is_assignable_v<decltype(std::declval<ConstGen&>()(0, 0, 1)), float>);
static_assert(std::is_assignable_v<decltype(std::declval<MutableGen&>()(0, 0, 1)), float>);
static_assert(std::is_const_v<std::remove_pointer_t<decltype(std::declval<ConstGen&>().row(0))>>);
static_assert(std::is_convertible_v<MutableGen, ConstGen>);
static_assert(!std::is_convertible_v<ConstGen, MutableGen>);
static_assert(!std::is_constructible_v<MutableGen, ConstGen>);
// Owning generators hand out a const view from a const object only.
static_assert(
    std::is_same_v<decltype(std::declval<const oft::Generators<float>&>().view()), ConstGen>);
static_assert(std::is_convertible_v<const oft::Generators<float>&, ConstGen>);
static_assert(!std::is_convertible_v<const oft::Generators<float>&, MutableGen>);

// --- MatrixView -------------------------------------------------------------------------------

TEST(MatrixView, RowStrideAddressesSliceOfWiderBuffer) {
  const Index rows = 3, cols = 4, stride = 7;
  std::vector<double> buffer(static_cast<size_t>(rows * stride));
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<double>(i);
  MutableView v(buffer.data(), rows, cols, stride);
  EXPECT_EQ(v.rows(), rows);
  EXPECT_EQ(v.cols(), cols);
  EXPECT_EQ(v.stride(), stride);
  EXPECT_FALSE(v.empty());
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) {
      EXPECT_EQ(&v(i, j), buffer.data() + i * stride + j);
      EXPECT_EQ(v.map()(i, j), static_cast<double>(i * stride + j));
    }
  EXPECT_EQ(v.row(2), buffer.data() + 2 * stride);

  // Writing through the map touches only the viewed elements.
  v.map().setConstant(-1.0);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < stride; ++j)
      EXPECT_EQ(buffer[static_cast<size_t>(i * stride + j)],
                j < cols ? -1.0 : static_cast<double>(i * stride + j));

  // Sub-view keeps the stride.
  const MutableView sub = v.block(1, 2, 2, 2);
  EXPECT_EQ(sub.rows(), 2);
  EXPECT_EQ(sub.cols(), 2);
  EXPECT_EQ(sub.stride(), stride);
  EXPECT_EQ(&sub(1, 1), buffer.data() + 2 * stride + 3);

  // Address range for overlap tests: first byte to one past the last element.
  EXPECT_EQ(v.begin_address(), buffer.data());
  EXPECT_EQ(v.end_address(), buffer.data() + (rows - 1) * stride + cols);
}

TEST(MatrixView, DefaultStrideIsWidthAndEmptyViews) {
  double data[6] = {};
  const MutableView v(data, 2, 3);
  EXPECT_EQ(v.stride(), 3);
  const MutableView empty(nullptr, 0, 5);
  EXPECT_TRUE(empty.empty());
  EXPECT_TRUE(MutableView().empty());
}

TEST(MatrixView, ViewOfRowMajorEigenMatrix) {
  oft_test::RowMat<float> m(3, 5);
  m.setZero();
  auto v = oft::view(m);
  static_assert(std::is_same_v<decltype(v), oft::MatrixView<float>>);
  v(1, 2) = 4.0f;
  EXPECT_EQ(m(1, 2), 4.0f);
  const auto& cm = m;
  auto cv = oft::view(cm);
  static_assert(std::is_same_v<decltype(cv), oft::MatrixView<const float>>);
  EXPECT_EQ(cv(1, 2), 4.0f);

  // A row-major block keeps the parent's outer stride.
  auto blk = m.block(1, 1, 2, 3);
  auto bv = oft::view(blk);
  EXPECT_EQ(bv.stride(), 5);
  EXPECT_EQ(&bv(0, 0), &m(1, 1));
}

TEST(MatrixView, OverlapAndSameMemory) {
  std::vector<double> buffer(40);
  const MutableView a(buffer.data(), 4, 5, 10);
  const MutableView shifted(buffer.data() + 1, 4, 5, 10);  // partial overlap
  const MutableView empty(buffer.data() + 3, 0, 5, 10);
  EXPECT_TRUE(oft::detail::same_memory(a, a));
  EXPECT_FALSE(oft::detail::same_memory(a, shifted));
  EXPECT_TRUE(oft::detail::overlaps(a, shifted));
  EXPECT_TRUE(oft::detail::overlaps(shifted, a));
  EXPECT_FALSE(oft::detail::overlaps(a, empty));  // empty views overlap nothing
  std::vector<double> other(20);
  EXPECT_FALSE(oft::detail::overlaps(a, MutableView(other.data(), 4, 5)));
  // Adjacent but disjoint: the last row of `first` ends where `second` begins.
  const MutableView first(buffer.data(), 2, 10);
  const MutableView second(buffer.data() + 20, 2, 10);
  EXPECT_FALSE(oft::detail::overlaps(first, second));
}

// The overlap test is exact for views with one row stride: interleaved column slices of one
// buffer share no element; a single shared element anywhere is found.
TEST(MatrixView, OverlapIsExactForEqualStrides) {
  std::vector<double> buffer(6 * 10);
  double* base = buffer.data();
  const MutableView left(base, 6, 4, 10), right(base + 4, 6, 6, 10);  // columns [0,4) and [4,10)
  EXPECT_FALSE(oft::detail::overlaps(left, right));
  EXPECT_FALSE(oft::detail::overlaps(right, left));
  const MutableView middle(base + 3, 6, 2, 10);  // columns [3,5): shares column 3 with `left`
  EXPECT_TRUE(oft::detail::overlaps(left, middle));
  EXPECT_TRUE(oft::detail::overlaps(middle, right));
  // Right slice starting one row down: still disjoint from the left slice.
  const MutableView right_lower(base + 10 + 4, 5, 6, 10);
  EXPECT_FALSE(oft::detail::overlaps(left, right_lower));
  EXPECT_FALSE(oft::detail::overlaps(right_lower, left));
  // A slice that wraps: starts at column 8 and is 4 wide with stride 10 covers columns 8, 9 of
  // row i and 0, 1 of row i + 1 (stride 10 >= width 4 is legal; it reads across the row end).
  const MutableView wrapping(base + 8, 3, 4, 10);  // rows 0-2 cols 8,9 + rows 1-3 cols 0,1
  EXPECT_TRUE(oft::detail::overlaps(left, wrapping));
  const MutableView left_rows_4_5(base + 40, 2, 4, 10);  // rows 4-5, columns [0,4)
  EXPECT_FALSE(oft::detail::overlaps(left_rows_4_5, wrapping));
  const MutableView left_row_3(base + 30, 1, 4, 10);  // row 3 columns [0, 4): wrap reaches it
  EXPECT_TRUE(oft::detail::overlaps(left_row_3, wrapping));
  EXPECT_TRUE(oft::detail::overlaps(wrapping, left_row_3));
  // Brute force over every start offset and width in a small buffer, both orders.
  const auto elements = [&](const MutableView& v) {
    std::vector<bool> used(buffer.size(), false);
    for (Index i = 0; i < v.rows(); ++i)
      for (Index j = 0; j < v.cols(); ++j) used[static_cast<size_t>(&v(i, j) - base)] = true;
    return used;
  };
  for (Index start_a = 0; start_a < 12; ++start_a)
    for (Index start_b = 0; start_b < 24; ++start_b)
      for (Index width_a = 1; width_a <= 5; ++width_a)
        for (Index width_b = 1; width_b <= 5; ++width_b)
          for (Index rows_a = 1; rows_a <= 3; ++rows_a)
          for (Index rows_b = 1; rows_b <= 3; ++rows_b) {
            const MutableView a(base + start_a, rows_a, width_a, 5);
            const MutableView b(base + start_b, rows_b, width_b, 5);
            const auto ea = elements(a), eb = elements(b);
            bool shared = false;
            for (size_t e = 0; e < ea.size(); ++e) shared = shared || (ea[e] && eb[e]);
            ASSERT_EQ(oft::detail::overlaps(a, b), shared)
                << start_a << " " << start_b << " " << width_a << " " << width_b << " " << rows_a
                << " " << rows_b;
            ASSERT_EQ(oft::detail::overlaps(b, a), shared);
          }
  // Different strides with intersecting address ranges are reported as overlapping
  // (conservative), even where no element is shared.
  const MutableView double_stride(base + 4, 2, 2, 20);  // elements 4, 5, 24, 25: columns 4-5
  EXPECT_TRUE(oft::detail::overlaps(left, double_stride));
}

TEST(MatrixView, RejectsBadShapes) {
  double data[12] = {};
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { MutableView(data, 3, 4, 2); },
                                                 {"stride 2", "width 4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { MutableView(data, -1, 4); }, {"-1x4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { MutableView(nullptr, 2, 3); }, {"2x3"}));
}

// --- GeneratorView ------------------------------------------------------------------------------

TEST(GeneratorView, RowStrideLargerThanPacked) {
  const Index b = 4, m = 6, stride = 9, count = 3;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> buffer(static_cast<size_t>(count * stride), nan);  // padding stays NaN
  for (Index g = 0; g < count; ++g)
    for (Index k = 0; k < m; ++k)
      buffer[static_cast<size_t>(g * stride + k)] = static_cast<double>(10 * g + k + 1);
  oft::GeneratorView<double> theta(buffer.data(), count, b, stride);
  EXPECT_EQ(theta.count(), count);
  EXPECT_EQ(theta.block_size(), b);
  EXPECT_EQ(theta.packed(), m);
  EXPECT_EQ(theta.stride(), stride);
  EXPECT_EQ(theta.row(2), buffer.data() + 2 * stride);
  // (p,q) = (1,3) is packed index 4.
  EXPECT_EQ(&theta(2, 1, 3), buffer.data() + 2 * stride + 4);
  EXPECT_EQ(theta(1, 1, 3), 15.0);

  // dense() reads only the packed entries (the NaN padding never enters), with Q = U - U^T.
  for (Index g = 0; g < count; ++g) {
    const auto q = theta.dense(g);
    ASSERT_TRUE(q.allFinite()) << "generator " << g;
    for (Index p = 0; p < b; ++p) {
      EXPECT_EQ(q(p, p), 0.0);
      for (Index c = p + 1; c < b; ++c) {
        EXPECT_EQ(q(p, c), theta(g, p, c));
        EXPECT_EQ(q(c, p), -theta(g, p, c));
      }
    }
  }
  EXPECT_NO_THROW(theta.require_finite());

  // Writing through a mutable generator view.
  theta(0, 2, 3) = -7.5;
  EXPECT_EQ(buffer[static_cast<size_t>(oft::packed_index(2, 3, b))], -7.5);

  // Converting to a const view keeps shape and stride.
  const oft::GeneratorView<const double> ctheta = theta;
  EXPECT_EQ(ctheta.stride(), stride);
  EXPECT_EQ(ctheta.data(), buffer.data());
  EXPECT_EQ(ctheta(2, 1, 3), theta(2, 1, 3));
}

TEST(GeneratorView, FromMatrixViewDeducesBlockSize) {
  std::vector<float> buffer(2 * 500, 0.0f);
  const oft::GeneratorView<float> theta(oft::MatrixView<float>(buffer.data(), 2, 496, 500));
  EXPECT_EQ(theta.block_size(), 32);
  EXPECT_EQ(theta.stride(), 500);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::GeneratorView<float>(oft::MatrixView<float>(buffer.data(), 2, 497, 500)); },
      {"497"}));
}

TEST(Generators, ZeroInitializedOwningStorage) {
  oft::Generators<double> theta(3, 5);
  EXPECT_EQ(theta.count(), 3);
  EXPECT_EQ(theta.block_size(), 5);
  EXPECT_EQ(theta.packed(), 10);
  EXPECT_TRUE(theta.values().isZero(0.0));
  for (Index g = 0; g < 3; ++g) EXPECT_TRUE(theta.dense(g).isZero(0.0));
  theta.row(1)[oft::packed_index(0, 4, 5)] = 2.0;
  const oft::GeneratorView<double> v = theta.view();
  EXPECT_EQ(v(1, 0, 4), 2.0);
  EXPECT_EQ(theta.dense(1)(4, 0), -2.0);

  const oft::Generators<double> shared(oft::BlockSpec::from_features(20, 5, true));
  EXPECT_EQ(shared.count(), 1);
  const oft::Generators<double> unshared(oft::BlockSpec::from_features(20, 5, false));
  EXPECT_EQ(unshared.count(), 4);
}

}  // namespace

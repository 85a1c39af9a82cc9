// Packed skew-symmetric generators: unpack_skew, pack_skew, pack_skew_gradient (skew.hpp), and
// compile-time block sizes through oft::skew<B> (expressions.hpp).

#include <gtest/gtest.h>

#include <oft/expressions.hpp>
#include <oft/skew.hpp>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

// Q = U - U^T: the packed entry for (p,q), p<q, lands at Q(p,q) with + sign and Q(q,p) with -.
TEST(UnpackSkew, SignAndPositionOfEveryEntry) {
  for (Index b : {2, 3, 5, 8}) {
    const Index m = oft::packed_size(b);
    for (Index p = 0; p < b; ++p)
      for (Index q = p + 1; q < b; ++q) {
        std::vector<double> row(static_cast<size_t>(m), 0.0);
        row[static_cast<size_t>(oft::packed_index(p, q, b))] = 1.5;
        MatD dense;
        oft::unpack_skew(row.data(), b, dense);
        MatD expected = MatD::Zero(b, b);
        expected(p, q) = 1.5;
        expected(q, p) = -1.5;
        EXPECT_TRUE(oft_test::all_equal(dense, expected))
            << "b=" << b << " (" << p << "," << q << ")";
      }
  }
}

TEST(UnpackSkew, HandWrittenB3) {
  // theta = [a01, a02, a12] = [1, 2, 3]
  const double row[3] = {1.0, 2.0, 3.0};
  MatD q;
  oft::unpack_skew(row, 3, q);
  MatD expected(3, 3);
  expected << 0, 1, 2,  //
      -1, 0, 3,         //
      -2, -3, 0;
  EXPECT_TRUE(oft_test::all_equal(q, expected));
}

TEST(PackSkew, RoundTrip) {
  Rng rng(11);
  for (Index b : {1, 2, 3, 7, 16, 33}) {
    const Index m = oft::packed_size(b);
    std::vector<double> row(static_cast<size_t>(m));
    for (double& v : row) v = rng.uniform();
    MatD q;
    oft::unpack_skew(row.data(), b, q);
    EXPECT_TRUE(oft_test::all_equal(q, MatD(-q.transpose()))) << "not skew, b=" << b;
    std::vector<double> back(static_cast<size_t>(m), -99.0);
    oft::pack_skew(q, back.data());
    EXPECT_EQ(back, row) << "b=" << b;

    // Dense skew -> packed -> dense.
    const MatD dense = oft_test::random_skew(b, rng);
    std::vector<float> packed(static_cast<size_t>(m));
    oft::pack_skew(dense.cast<float>(), packed.data());
    oft_test::Mat<float> again;
    oft::unpack_skew(packed.data(), b, again);
    EXPECT_TRUE(oft_test::all_equal(again, dense.cast<float>())) << "b=" << b;
  }
}

// pack_skew reads only the strict upper triangle (PEFT-style storage of U).
TEST(PackSkew, ReadsUpperTriangleOnly) {
  MatD q(3, 3);
  q << 9, 1, 2,  //
      8, 9, 3,   //
      7, 6, 9;
  double row[3] = {};
  oft::pack_skew(q, row);
  EXPECT_EQ(row[0], 1.0);
  EXPECT_EQ(row[1], 2.0);
  EXPECT_EQ(row[2], 3.0);
}

// dL/dtheta(p,q) = dL/dQ(p,q) - dL/dQ(q,p), written out for b = 3 on a general (non-skew) dQ.
TEST(PackSkewGradient, ChainRuleThroughUMinusUTranspose) {
  MatD dq(3, 3);
  dq << 1, 2, 3,  //
      4, 5, 6,    //
      7, 8, 9;
  double row[3] = {};
  oft::pack_skew_gradient(dq, row);
  EXPECT_EQ(row[0], 2.0 - 4.0);  // (0,1)
  EXPECT_EQ(row[1], 3.0 - 7.0);  // (0,2)
  EXPECT_EQ(row[2], 6.0 - 8.0);  // (1,2)

  // Accumulate mode adds (shared generators sum over blocks).
  oft::pack_skew_gradient(dq, row, true);
  EXPECT_EQ(row[0], -4.0);
  EXPECT_EQ(row[1], -8.0);
  EXPECT_EQ(row[2], -4.0);
  // Overwrite mode ignores previous content.
  oft::pack_skew_gradient(dq, row, false);
  EXPECT_EQ(row[0], -2.0);
}

// pack_skew_gradient is the adjoint of unpack_skew: <dQ, unpack(t)> = <pack_grad(dQ), t>.
TEST(PackSkewGradient, IsAdjointOfUnpack) {
  Rng rng(5);
  for (Index b : {2, 5, 12}) {
    const Index m = oft::packed_size(b);
    std::vector<double> t(static_cast<size_t>(m)), g(static_cast<size_t>(m));
    for (double& v : t) v = rng.uniform();
    MatD dq(b, b);
    for (Index i = 0; i < b; ++i)
      for (Index j = 0; j < b; ++j) dq(i, j) = rng.uniform();
    MatD q;
    oft::unpack_skew(t.data(), b, q);
    oft::pack_skew_gradient(dq, g.data());
    double lhs = (dq.array() * q.array()).sum(), rhs = 0.0, scale = 0.0;
    for (Index k = 0; k < m; ++k) {
      rhs += g[static_cast<size_t>(k)] * t[static_cast<size_t>(k)];
      scale += std::abs(g[static_cast<size_t>(k)] * t[static_cast<size_t>(k)]);
    }
    // Two sums of about b^2 terms each: gamma_{b^2} bound on each side.
    EXPECT_LE(std::abs(lhs - rhs), 2.0 * oft_test::gamma<double>(b * b) * 2.0 * scale) << "b=" << b;
  }
}

// A compile-time block size works with unpack_skew and oft::skew<4>.
TEST(FixedBlockSize, UnpackAndSkewExpression) {
  const double row[6] = {1, 2, 3, 4, 5, 6};
  // Initialized: unpack_skew writes through a const reference (Eigen's out-parameter idiom),
  // which GCC's -Wmaybe-uninitialized cannot see at -O1.
  Eigen::Matrix<double, 4, 4> fixed = Eigen::Matrix<double, 4, 4>::Constant(99.0);
  oft::unpack_skew(row, 4, fixed);
  MatD dynamic;
  oft::unpack_skew(row, 4, dynamic);
  EXPECT_TRUE(oft_test::all_equal(fixed, dynamic));
  EXPECT_EQ(fixed(1, 3), 5.0);  // (1,3) is packed index 4
  EXPECT_EQ(fixed(3, 1), -5.0);

  const auto expr = oft::skew<4>(row, 4);
  const auto q = expr.eval();
  static_assert(std::is_same_v<std::decay_t<decltype(q)>, Eigen::Matrix<double, 4, 4>>);
  EXPECT_EQ(expr.size(), 4);
  EXPECT_TRUE(oft_test::all_equal(q, fixed));
  // Fixed and dynamic expressions give the same Cayley rotation.
  EXPECT_TRUE(oft_test::all_equal(oft::cayley(oft::skew<4>(row, 4)).eval(),
                                  oft::cayley(oft::skew(row, 4)).eval()));
  EXPECT_THROW(oft::skew<4>(row, 3), std::invalid_argument);
}

}  // namespace

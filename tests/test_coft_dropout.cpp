// COFT projection (coft.hpp) and multiplicative block dropout (dropout.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/coft.hpp>
#include <oft/dropout.hpp>
#include <stdexcept>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

// --- COFT -------------------------------------------------------------------------------------

// The SPEC's real-number radius (double); PEFT's float32 one is tested below.
TEST(Coft, RadiusIsEpsOverSqrtR) {
  EXPECT_EQ(oft::coft_radius(6e-5, 1), 6e-5);
  EXPECT_EQ(oft::coft_radius(6e-5, 4), 3e-5);  // division by 2 is exact
  for (Index r : {2, 3, 7, 256})
    EXPECT_DOUBLE_EQ(oft::coft_radius(0.1, r), 0.1 / std::sqrt(static_cast<double>(r)));
  EXPECT_TRUE(
      oft_test::throws_with<std::invalid_argument>([] { oft::coft_radius(0.1, 0); }, {"0"}));
}

template <class Scalar>
void check_projection() {
  Rng rng(1);
  const Index b = 6, count = 5;
  const double radius = 0.5;
  // Rows with ||Q||_F = sqrt(2) ||row|| of 0.1, 0.3, 0.45 (inside), 2, 10 (outside); the exact
  // boundary is tested separately with exactly representable values.
  const double frob[count] = {0.1, 0.3, 0.45, 2.0, 10.0};
  oft::Generators<Scalar> theta(count, b);
  for (Index g = 0; g < count; ++g) {
    const auto row = oft_test::random_generators<double>(1, b, frob[g] / std::sqrt(2.0), rng);
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = static_cast<Scalar>(row.row(0)[k]);
  }
  const oft::Generators<Scalar> before = theta;
  std::vector<double> norms_before(count);
  for (Index g = 0; g < count; ++g)
    norms_before[g] = before.dense(g).template cast<double>().norm();

  const Index scaled = oft::coft_project(theta.view(), radius);
  Index expected_scaled = 0;
  for (Index g = 0; g < count; ++g) {
    const double norm_after = theta.dense(g).template cast<double>().norm();
    if (norms_before[g] <= radius) {
      // Inside the ball (or on it): untouched, bit for bit.
      for (Index k = 0; k < theta.packed(); ++k)
        EXPECT_EQ(theta.row(g)[k], before.row(g)[k]) << "generator " << g;
    } else {
      ++expected_scaled;
      // On the sphere: ||Q||_F = radius up to a few roundings (norm, factor, products).
      EXPECT_NEAR(norm_after, radius, 4.0 * theta.packed() * oft_test::eps<Scalar>() * radius)
          << "generator " << g;
      // Same direction: every entry scaled by the same factor radius / ||Q||_F.
      const double factor = radius / norms_before[g];
      for (Index k = 0; k < theta.packed(); ++k)
        EXPECT_NEAR(double(theta.row(g)[k]), factor * double(before.row(g)[k]),
                    2.0 * oft_test::eps<Scalar>() * std::abs(factor * double(before.row(g)[k])) +
                        theta.packed() * oft_test::eps<Scalar>() * radius)
            << "generator " << g << " entry " << k;
    }
  }
  EXPECT_EQ(scaled, expected_scaled);
  EXPECT_GE(expected_scaled, 2);
  // Projecting again changes nothing (idempotent up to the boundary test of rounding).
  const oft::Generators<Scalar> once = theta;
  oft::coft_project(theta.view(), radius * (1.0 + 8.0 * theta.packed() * oft_test::eps<Scalar>()));
  EXPECT_TRUE(oft_test::all_equal(theta.values(), once.values()));
}

TEST(Coft, ProjectionDouble) { check_projection<double>(); }
TEST(Coft, ProjectionFloat) { check_projection<float>(); }

TEST(Coft, ExactBoundaryAndZeroRadius) {
  // b = 2: a single entry a, ||Q||_F = sqrt(2) |a|; sqrt(2 * 0.25) == 0.5 * sqrt(2) exactly
  // (sqrt is correctly rounded and scaling by 1/2 is exact), so row 0 lies on the boundary.
  oft::Generators<double> theta(3, 2);
  theta.row(0)[0] = 0.5;   // ||Q||_F = 0.5 sqrt(2)
  theta.row(1)[0] = -3.0;  // outside
  theta.row(2)[0] = 0.0;   // zero generator
  const double radius = 0.5 * std::sqrt(2.0);
  EXPECT_EQ(oft::coft_project(theta.view(), radius), 1);
  EXPECT_EQ(theta.row(0)[0], 0.5);
  EXPECT_NEAR(theta.row(1)[0], -0.5, 2.0 * oft_test::eps<double>());
  // Radius 0 collapses every nonzero generator to Q = 0 and leaves zero ones alone.
  EXPECT_EQ(oft::coft_project(theta.view(), 0.0), 2);
  EXPECT_EQ(theta.row(0)[0], 0.0);
  EXPECT_EQ(theta.row(1)[0], 0.0);
  EXPECT_EQ(theta.row(2)[0], 0.0);
}

TEST(Coft, RejectsBadRadius) {
  oft::Generators<double> theta(2, 3);
  theta.row(0)[0] = 5.0;
  const auto before = theta.values();
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::coft_project(theta.view(), -0.5); }, {"-0.5"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::coft_project(theta.view(), std::numeric_limits<double>::infinity()); }, {"inf"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::coft_project(theta.view(), std::nan("")); }, {"nan"}));
  EXPECT_TRUE(oft_test::all_equal(theta.values(), before));
}

// --- COFT in PEFT's float32 arithmetic (peft::coft_radius, peft::coft_project) ------------------

// eps' = fl32(fl32(1 / fl32(sqrt(P))) * fl32(eps)) (SPEC section 8). The expected values were
// computed by hand in float32 outside C++ (Python: every float32 operation done in double and
// rounded once to float32 with struct.pack('f'), which is exact for + - * / and sqrt since
// double carries more than 2 * 24 + 2 bits). For eps = 6e-5 the double radius rounded to float
// agrees with PEFT's for P = 1, 3, 7, 12 and differs in the last bit for P = 96 (also for
// P = 2, 6, 8, 24, 32, 128 among P <= 128); more disagreements for other eps below.
TEST(CoftPeft, Float32RadiusPinnedByHand) {
  struct Case {
    double eps;
    oft::Index rows;
    float peft, double_rounded;
  };
  const Case cases[] = {
      {6e-5, 1, 0x1.f75104p-15f, 0x1.f75104p-15f},  {6e-5, 3, 0x1.229704p-15f, 0x1.229704p-15f},
      {6e-5, 7, 0x1.7c78b4p-16f, 0x1.7c78b4p-16f},  {6e-5, 12, 0x1.229704p-16f, 0x1.229704p-16f},
      {6e-5, 96, 0x1.9af4c6p-18f, 0x1.9af4c8p-18f}, {1e-5, 3, 0x1.837404p-18f, 0x1.837406p-18f},
      {0.1, 6, 0x1.4e6fdep-5f, 0x1.4e6fep-5f},      {1.0, 7, 0x1.83092p-2f, 0x1.83091ep-2f},
  };
  int differing = 0;
  for (const Case& c : cases) {
    EXPECT_EQ(oft::peft::coft_radius(c.eps, c.rows), c.peft) << c.eps << " P=" << c.rows;
    EXPECT_EQ(static_cast<float>(oft::coft_radius(c.eps, c.rows)), c.double_rounded)
        << c.eps << " P=" << c.rows;
    differing += c.peft != c.double_rounded;
  }
  EXPECT_EQ(differing, 4);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([] { oft::peft::coft_radius(1e-3, 0); },
                                                           {"generator", "0"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([] { oft::peft::coft_radius(-1e-3, 4); },
                                                           {"-0.001"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { oft::peft::coft_radius(std::nan(""), 4); }, {"nan"}));
}

// PEFT's projection order, fl32(fl32(theta / nu) * eps'), pinned by hand (same float32 method as
// above): b = 3, row (0.5, -0.25, 0.3f), eps' = peft::coft_radius(0.1, 2) = 0x1.21a186p-4, nu =
// fl32(sqrt(2 * 0.6525)) = 0x1.cb6026p-1. Its third entry is 0x1.835f40p-6, where the other
// order fl32(theta * fl32(eps' / nu)) would give 0x1.835f3ep-6.
TEST(CoftPeft, ProjectionInPeftOrderPinnedByHand) {
  const float radius = oft::peft::coft_radius(0.1, 2);
  ASSERT_EQ(radius, 0x1.21a186p-4f);
  oft::Generators<float> theta(2, 3);
  theta.row(0)[0] = 0.5f;
  theta.row(0)[1] = -0.25f;
  theta.row(0)[2] = 0.3f;
  theta.row(1)[0] = 0.01f;  // ||Q||_F = 0.01 sqrt(2) < radius: kept bit for bit
  EXPECT_EQ(oft::peft::coft_project(theta.view(), radius), 1);
  EXPECT_EQ(theta.row(0)[0], 0x1.42cf5ep-5f);
  EXPECT_EQ(theta.row(0)[1], -0x1.42cf5ep-6f);
  EXPECT_EQ(theta.row(0)[2], 0x1.835f40p-6f);
  EXPECT_EQ(theta.row(1)[0], 0.01f);
  EXPECT_EQ(theta.row(1)[1], 0.0f);

  // b = 2, theta = 3, eps' = 1: nu = fl32(sqrt(18)) = 0x1.0f876cp+2, 3 / nu = 0x1.6a09e8p-1.
  oft::Generators<float> single(1, 2);
  single.row(0)[0] = 3.0f;
  EXPECT_EQ(oft::peft::coft_project(single.view(), oft::peft::coft_radius(1.0, 1)), 1);
  EXPECT_EQ(single.row(0)[0], 0x1.6a09e8p-1f);
}

TEST(CoftPeft, BoundarySignedZeroAndErrors) {
  // ||Q||_F == eps' exactly (in float): kept, as torch.where(norm <= eps) keeps it.
  oft::Generators<float> theta(1, 2);
  theta.row(0)[0] = 0.5f;
  const float on_sphere = static_cast<float>(std::sqrt(0.5));  // fl32(sqrt(2 * 0.25))
  EXPECT_EQ(oft::peft::coft_project(theta.view(), on_sphere), 0);
  EXPECT_EQ(theta.row(0)[0], 0.5f);
  EXPECT_EQ(oft::peft::coft_project(theta.view(), std::nextafter(on_sphere, 0.0f)), 1);
  // A scaled row's -0 becomes +0 (PEFT adds the zero matrix); its other entries keep their sign.
  oft::Generators<float> zeros(1, 3);
  zeros.row(0)[0] = -0.0f;
  zeros.row(0)[1] = 3.0f;
  zeros.row(0)[2] = -4.0f;
  EXPECT_EQ(oft::peft::coft_project(zeros.view(), 1.0f), 1);
  EXPECT_FALSE(std::signbit(zeros.row(0)[0]));
  EXPECT_GT(zeros.row(0)[1], 0.0f);
  EXPECT_LT(zeros.row(0)[2], 0.0f);
  // Bad radii are refused before anything is written.
  const auto before = zeros.values();
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::peft::coft_project(zeros.view(), -1.0f); }, {"-1"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::peft::coft_project(zeros.view(), std::numeric_limits<float>::infinity()); },
      {"inf"}));
  EXPECT_TRUE(oft_test::all_equal(zeros.values(), before));
}

// Random float generators against the same steps written out with explicit float operations
// (the exact norm rounded to float, then theta / nu, then * eps'), bit for bit; every scaled row
// ends on the sphere to a few float roundings.
TEST(CoftPeft, ProjectionMatchesFloatStepsOnRandomRows) {
  Rng rng(11);
  const Index b = 8, count = 12;
  oft::Generators<float> theta = oft_test::uniform_generators<float>(count, b, 0.2, rng);
  const oft::Generators<float> before = theta;
  const float radius = oft::peft::coft_radius(1.0, count);
  const Index scaled = oft::peft::coft_project(theta.view(), radius);
  Index expected_scaled = 0;
  for (Index g = 0; g < count; ++g) {
    long double squares = 0.0L;  // the dense Q: each entry twice
    for (Index k = 0; k < theta.packed(); ++k)
      squares += 2.0L * static_cast<long double>(before.row(g)[k]) * before.row(g)[k];
    const float nu = static_cast<float>(std::sqrt(squares));
    if (nu <= radius) {
      for (Index k = 0; k < theta.packed(); ++k) EXPECT_EQ(theta.row(g)[k], before.row(g)[k]);
      continue;
    }
    ++expected_scaled;
    for (Index k = 0; k < theta.packed(); ++k) {
      const float direction = before.row(g)[k] / nu;
      EXPECT_EQ(theta.row(g)[k], direction * radius) << "generator " << g << " entry " << k;
    }
    EXPECT_NEAR(std::sqrt(2.0) * oft_test::row_rho_bound(theta.row(g), theta.packed()),
                double(radius), 4.0 * theta.packed() * oft_test::eps<float>() * radius);
  }
  EXPECT_EQ(scaled, expected_scaled);
  EXPECT_GE(expected_scaled, 6);
}

// --- SplitMix64 -------------------------------------------------------------------------------

// Reference outputs of SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c) for seed 0,
// recomputed independently (Python, 64-bit wrap-around arithmetic) before pinning.
TEST(SplitMix64, PublishedReferenceValuesSeedZero) {
  oft::SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(rng.next(), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(rng.next(), 0x06C45D188009454Full);
  // The test suite's own independent implementation agrees for other seeds too.
  for (std::uint64_t seed : {1ull, 42ull, 0xDEADBEEFull}) {
    oft::SplitMix64 a(seed);
    oft_test::Rng b(seed);
    for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next(), b.bits()) << "seed " << seed;
  }
}

TEST(SplitMix64, BelowStaysInRange) {
  oft::SplitMix64 rng(7);
  for (std::uint64_t bound : {1ull, 2ull, 3ull, 10ull, 1000ull, (1ull << 63) + 1}) {
    for (int i = 0; i < 200; ++i) ASSERT_LT(rng.below(bound), bound);
  }
  EXPECT_EQ(rng.below(1), 0u);
  // All residues of a small bound occur.
  std::vector<int> hits(5, 0);
  for (int i = 0; i < 500; ++i) ++hits[static_cast<size_t>(rng.below(5))];
  for (int h : hits) EXPECT_GT(h, 0);
}

// --- dropout mask -----------------------------------------------------------------------------

Index zeros(const std::vector<unsigned char>& mask) {
  Index n = 0;
  for (unsigned char m : mask) n += m == 0;
  return n;
}

TEST(Dropout, DropsExactlyFloorPR) {
  for (Index r : {2, 3, 7, 16, 100})
    for (double p : {0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.999, 1.0})
      for (std::uint64_t seed : {0ull, 1ull, 12345ull}) {
        const auto mask = oft::dropout_mask(oft::BlockSpec{r, 4, false}, p, seed);
        ASSERT_EQ(static_cast<Index>(mask.size()), r);
        EXPECT_EQ(zeros(mask), static_cast<Index>(std::floor(p * static_cast<double>(r))))
            << "r=" << r << " p=" << p << " seed=" << seed;
        for (unsigned char m : mask) EXPECT_TRUE(m == 0 || m == 1);
      }
}

TEST(Dropout, ReproducibleAndSeedDependent) {
  const oft::BlockSpec spec{100, 8, false};
  const auto a = oft::dropout_mask(spec, 0.5, 42);
  const auto b = oft::dropout_mask(spec, 0.5, 42);
  EXPECT_EQ(a, b);
  // C(100, 50) ~ 1e29 masks: distinct seeds giving the same one would be a bug.
  EXPECT_NE(oft::dropout_mask(spec, 0.5, 43), a);
  EXPECT_NE(oft::dropout_mask(spec, 0.5, 0), a);
  // Pinned: the mask for (r = 10, p = 0.3, seed = 0) follows from SplitMix64 and the partial
  // Fisher-Yates shuffle alone, so it is the same on every platform.
  const auto small = oft::dropout_mask(oft::BlockSpec{10, 2, false}, 0.3, 0);
  oft_test::Rng reference(0);  // same generator as oft::SplitMix64 (checked above)
  std::vector<Index> order(10);
  for (Index i = 0; i < 10; ++i) order[static_cast<size_t>(i)] = i;
  std::vector<unsigned char> expected(10, 1);
  for (Index i = 0; i < 3; ++i) {
    const std::uint64_t bound = static_cast<std::uint64_t>(10 - i);
    const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % bound);
    std::uint64_t v = reference.bits();
    while (v >= limit) v = reference.bits();
    const Index j = i + static_cast<Index>(v % bound);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
    expected[static_cast<size_t>(order[static_cast<size_t>(i)])] = 0;
  }
  EXPECT_EQ(small, expected);
}

TEST(Dropout, SharedOrSingleBlockDropsNothing) {
  for (double p : {0.0, 0.5, 1.0}) {
    const auto shared = oft::dropout_mask(oft::BlockSpec{16, 4, true}, p, 3);
    EXPECT_EQ(zeros(shared), 0) << "p=" << p;
    EXPECT_EQ(shared.size(), 16u);
    const auto single = oft::dropout_mask(oft::BlockSpec{1, 4, false}, p, 3);
    EXPECT_EQ(zeros(single), 0) << "p=" << p;
  }
}

TEST(Dropout, RejectsProbabilityOutsideUnitInterval) {
  const oft::BlockSpec spec{8, 4, false};
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::dropout_mask(spec, -0.1, 0); }, {"-0.1"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { oft::dropout_mask(spec, 1.5, 0); },
                                                           {"1.5"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::dropout_mask(spec, std::nan(""), 0); }, {"nan"}));
  EXPECT_THROW(oft::dropout_mask(oft::BlockSpec{0, 4, false}, 0.5, 0), std::invalid_argument);
}

// The mask plugs into the operator: dropped blocks act as the identity.
TEST(Dropout, MaskDrivesOperator) {
  const Index b = 4, r = 10, d = r * b;
  const auto spec = oft::BlockSpec::from_features(d, b);
  Rng rng(9);
  const auto theta = oft_test::random_generators<double>(r, b, 0.5, rng);
  oft::BlockOrthogonal<double, oft::ExactCayley> op(spec);
  op.set_generators(theta);
  const auto mask = oft::dropout_mask(spec, 0.3, 17);
  op.set_active_blocks(mask);
  const oft_test::RowMat<double> x = oft_test::random_matrix<double>(3, d, rng);
  oft_test::RowMat<double> y(3, d);
  op.apply(oft::view(x), oft::view(y));
  for (Index i = 0; i < r; ++i)
    if (!mask[static_cast<size_t>(i)]) {
      EXPECT_TRUE(oft_test::all_equal(y.middleCols(i * b, b), x.middleCols(i * b, b)));
    } else {
      EXPECT_FALSE(oft_test::all_equal(y.middleCols(i * b, b), x.middleCols(i * b, b)));
    }
}

}  // namespace

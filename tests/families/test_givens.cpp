// oft::Givens (GOFT) against the paper's definition (dense stage matrices built here from Eq. 1-3),
// against oft::Butterfly with b = 2 (PEFT's BOFT in the butterfly layout), and its backward against
// central differences. There is no package to check against (docs/families.md section 3).
#include <gtest/gtest.h>

#include "family_test_support.hpp"

#include <oft/butterfly.hpp>
#include <oft/cayley.hpp>
#include <oft/finite_difference.hpp>
#include <oft/givens.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using namespace oft_family_test;

std::vector<double> random_angles(oft::Index count, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uniform(-3.0, 3.0);
  std::vector<double> angles(static_cast<std::size_t>(count));
  for (double& a : angles) a = uniform(rng);
  return angles;
}

/// R = P_L ... P_1 from the paper's G(i, j; t): G_ii = G_jj = cos t, G_ij = -sin t, G_ji = sin t.
Matrix paper_rotation(const oft::GivensSpec& spec, const std::vector<double>& angles) {
  const oft::Index d = spec.features();
  Matrix r = Matrix::Identity(d, d);
  std::size_t k = 0;
  for (const auto& stage : spec.stages()) {
    Matrix p = Matrix::Identity(d, d);
    for (const auto& [i, j] : stage) {
      const double t = angles[k++];
      p(i, i) = p(j, j) = std::cos(t);
      p(i, j) = -std::sin(t);
      p(j, i) = std::sin(t);
    }
    r = p * r;
  }
  return r;
}

}  // namespace

TEST(Givens, LayoutsHaveThePapersPairs) {
  const oft::GivensSpec goft(8, oft::GivensLayout::Goft);
  ASSERT_EQ(goft.stages().size(), 3u);
  EXPECT_EQ(goft.angles(), 7);
  using Pairs = std::vector<std::pair<oft::Index, oft::Index>>;
  EXPECT_EQ(goft.stages()[0], (Pairs{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(goft.stages()[1], (Pairs{{0, 2}, {4, 6}}));
  EXPECT_EQ(goft.stages()[2], (Pairs{{0, 4}}));
  const oft::GivensSpec odd(12, oft::GivensLayout::Goft);  // ceil(log2 12) = 4 stages, d - 1 angles
  EXPECT_EQ(odd.stages().size(), 4u);
  EXPECT_EQ(odd.angles(), 11);
  const oft::GivensSpec butterfly(8, oft::GivensLayout::Butterfly);
  EXPECT_EQ(butterfly.angles(), 12);
  EXPECT_EQ(butterfly.stages()[1], (Pairs{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
}

TEST(Givens, IsThePapersProductOfStages) {
  for (const auto& [d, layout] : {std::pair{16, oft::GivensLayout::Goft}, std::pair{12, oft::GivensLayout::Goft},
                                  std::pair{16, oft::GivensLayout::Butterfly}}) {
    SCOPED_TRACE(d);
    const oft::GivensSpec spec(d, layout);
    oft::Givens<double> goft(spec);
    EXPECT_EQ(goft.dense(), Matrix::Identity(d, d));  // R = I before set_angles
    const std::vector<double> angles = random_angles(spec.angles(), 1);
    goft.set_angles(angles);
    const Matrix r = goft.dense(), want = paper_rotation(spec, angles);
    EXPECT_LT(relative(r, want), 1e-14);
    EXPECT_LT((r.transpose() * r - Matrix::Identity(d, d)).norm(), 1e-13);
    EXPECT_NEAR(r.determinant(), 1.0, 1e-12);

    const Matrix x = random_matrix(5, d, 2);
    Matrix y(5, d), in_place = x, back(5, d);
    goft.apply(oft::view(x), oft::view(y));
    goft.apply(oft::view(in_place), oft::view(in_place));
    EXPECT_EQ((in_place - y).norm(), 0.0);
    EXPECT_LT(relative(y, x * want), 1e-14);
    goft.apply_transposed(oft::view(y), oft::view(back));
    EXPECT_LT(relative(back, x), 1e-14);
  }
}

TEST(Givens, GoftIsTheButterflyLayoutWithTheOtherAnglesZero) {
  const oft::GivensSpec goft_spec(16, oft::GivensLayout::Goft), full_spec(16, oft::GivensLayout::Butterfly);
  const std::vector<double> angles = random_angles(goft_spec.angles(), 3);
  std::vector<double> full(static_cast<std::size_t>(full_spec.angles()), 0.0);
  std::size_t goft_k = 0, full_k = 0;
  for (std::size_t s = 0; s < full_spec.stages().size(); ++s)
    for (const auto& pair : full_spec.stages()[s]) {
      const auto& goft_stage = goft_spec.stages()[s];
      if (goft_k < angles.size() && std::find(goft_stage.begin(), goft_stage.end(), pair) != goft_stage.end())
        full[full_k] = angles[goft_k++];
      ++full_k;
    }
  ASSERT_EQ(goft_k, angles.size());
  oft::Givens<double> goft(goft_spec), butterfly(full_spec);
  goft.set_angles(angles);
  butterfly.set_angles(full);
  EXPECT_LT(relative(goft.dense(), butterfly.dense()), 1e-15);
}

// PEFT's BOFT with b = 2 and m = log2 d is the butterfly layout: block g of factor i is stage
// i+1's pair g, with cos t = R[0][0] and sin t = R[1][0] of its 2 x 2 Cayley block.
TEST(Givens, ButterflyLayoutIsBoftWithBlocksOfTwo) {
  const auto boft_spec = oft::ButterflySpec::from_features(16, 2, 4);
  oft::Butterfly<double, oft::ExactCayley> boft(boft_spec);
  oft::Generators<double> theta(boft_spec.generators(), 2);
  theta.values() = random_matrix(boft_spec.generators(), 1, 4, 0.8);
  boft.set_generators(theta);
  const oft::GivensSpec spec(16, oft::GivensLayout::Butterfly);
  std::vector<double> angles;
  for (oft::Index i = 0; i < boft_spec.factors; ++i)
    for (oft::Index g = 0; g < boft_spec.blocks; ++g) {
      const auto block = boft.block(i, g);
      angles.push_back(std::atan2(block(1, 0), block(0, 0)));
    }
  oft::Givens<double> goft(spec);
  goft.set_angles(angles);
  EXPECT_LT(relative(goft.dense(), boft.dense()), 1e-14);
}

TEST(Givens, BackwardIsTheCentralDifferenceOfItsForward) {
  for (const auto& [features, layout, tokens] : {std::tuple{12, oft::GivensLayout::Goft, 6},
                                                 std::tuple{16, oft::GivensLayout::Butterfly, 6},
                                                 std::tuple{256, oft::GivensLayout::Goft, 300}}) {
    // Plain copies: C++17 lambdas cannot capture structured bindings (clang refuses).
    const oft::Index d = features, rows = tokens;
    SCOPED_TRACE(d);
    const oft::GivensSpec spec(d, layout);
    oft::Givens<double> goft(spec);
    std::vector<double> angles = random_angles(spec.angles(), 5);
    const Matrix x = random_matrix(rows, d, 6), g = random_matrix(rows, d, 7);
    const auto loss = [&] {
      goft.set_angles(angles);
      Matrix y(rows, d);
      goft.apply(oft::view(x), oft::view(y));
      return (y.array() * g.array()).sum();
    };
    const std::vector<double> numeric =
        oft::numerical_gradient(angles.data(), static_cast<oft::Index>(angles.size()), loss);
    goft.set_angles(angles);
    Matrix dx(rows, d);
    std::vector<double> dangles(angles.size());
    oft::Workspace<double> ws;
    goft.backward(oft::view(x), oft::view(g), oft::view(dx), dangles.data(), ws);
    const Eigen::Map<const Eigen::VectorXd> want(numeric.data(), static_cast<oft::Index>(numeric.size()));
    const Eigen::Map<const Eigen::VectorXd> got(dangles.data(), static_cast<oft::Index>(dangles.size()));
    EXPECT_LT((got - want).norm(), 1e-8 * want.norm());
    EXPECT_LT(relative(dx, g * goft.dense().transpose()), 1e-13);

    Matrix dx_only(rows, d), in_place = g;
    std::vector<double> dangles_in_place(angles.size());
    goft.backward(oft::view(x), oft::view(g), oft::view(dx_only), nullptr, ws);
    goft.backward(oft::view(x), oft::view(in_place), oft::view(in_place), dangles_in_place.data(), ws);
    EXPECT_LT(relative(dx_only, dx), 1e-15);
    EXPECT_EQ((in_place - dx).norm(), 0.0);
    EXPECT_EQ(dangles_in_place, dangles);
  }
}

// bfloat16 activations: each row widened exactly, turned in float, rounded once; the angle
// gradients in float equal to the float path's.
TEST(Givens, Bfloat16ActivationsAreTheFloatPathRoundedOnce) {
  oft::Givens<float> goft(oft::GivensSpec(200, oft::GivensLayout::Goft));
  std::vector<float> angles(static_cast<std::size_t>(goft.spec().angles()));
  const std::vector<double> random = random_angles(goft.spec().angles(), 71);
  std::transform(random.begin(), random.end(), angles.begin(), [](double a) { return static_cast<float>(a); });
  goft.set_angles(angles);
  const oft::Index n = 500, d = 200;  // threaded
  const BfMatrix x = to_bf16(random_matrix(n, d, 72)), g = to_bf16(random_matrix(n, d, 73));
  const FloatMatrix xf = widen(x), gf = widen(g);
  FloatMatrix want(n, d), dx_want(n, d);
  BfMatrix y(n, d), dx(n, d), in_place = x;
  goft.apply(oft::view(xf), oft::view(want));
  goft.apply(oft::view(x), oft::view(y));
  EXPECT_TRUE(rounded_once(y, want));
  goft.apply(oft::view(in_place), oft::view(in_place));
  EXPECT_TRUE(in_place == y);
  goft.apply_transposed(oft::view(xf), oft::view(want));
  goft.apply_transposed(oft::view(x), oft::view(y));
  EXPECT_TRUE(rounded_once(y, want));

  std::vector<float> dangles(angles.size()), dangles_want(angles.size());
  oft::Workspace<float> ws;
  goft.backward(oft::view(xf), oft::view(gf), oft::view(dx_want), dangles_want.data(), ws);
  goft.backward(oft::view(x), oft::view(g), oft::view(dx), dangles.data(), ws);
  EXPECT_TRUE(rounded_once(dx, dx_want));
  EXPECT_EQ(dangles, dangles_want);  // the same float arithmetic, row by row
}

TEST(Givens, RefusesBadArgumentsByName) {
  const auto expect_message = [](auto&& call, const std::string& text) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected one saying: " << text;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_message([] { oft::GivensSpec(1, oft::GivensLayout::Goft); }, "givens features d=1 must be in [2, 2^40]");
  expect_message([] { oft::GivensSpec(12, oft::GivensLayout::Butterfly); },
                 "givens features d=12 must be a power of two for the butterfly layout");
  oft::Givens<double> goft(oft::GivensSpec(8, oft::GivensLayout::Goft));
  expect_message([&] { goft.set_angles(std::vector<double>(6)); }, "givens angles has 6 values, expected 7 for d=8");
  std::vector<double> angles(7, 0.1);
  angles[3] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(goft.set_angles(angles), std::domain_error);
  EXPECT_EQ(goft.dense(), Matrix::Identity(8, 8));  // unchanged by the refusal
  Matrix x(2, 9), y(2, 8);
  expect_message([&] { goft.apply(oft::view(x), oft::view(y)); }, "X has 9 columns, expected d=8");
}

// No silent wrong results: every input that used to give a wrong answer, a crash or
// undefined behaviour is now refused with the documented exception, a message naming the values,
// and every output bit-identical to its sentinel pre-fill (or the operator unchanged); and what
// is legal but was refused (disjoint column slices of one buffer) now works.

#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/expressions.hpp>
#include <oft/finite_difference.hpp>
#include <oft/linear.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::Rng;
using oft_test::RowMat;
using oft_test::throws_with;

constexpr double kSentinel = -12345.5;
constexpr Index kB = 4, kR = 3, kD = kB * kR, kN = 5;

using Op = oft::BlockOrthogonal<double, oft::ExactCayley>;

struct Fixture {
  Rng rng{11};
  oft::BlockSpec spec = oft::BlockSpec::from_features(kD, kB);
  oft::Generators<double> theta = oft_test::random_generators<double>(kR, kB, 0.5, rng);
  Op op{spec};
  RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
  RowMat<double> dy = oft_test::random_matrix<double>(kN, kD, rng);
  Fixture() { op.set_generators(theta); }
};

template <class Scalar>
bool untouched(const std::vector<Scalar>& values, const std::vector<Scalar>& saved) {
  return values == saved;
}

// --- non-finite R --------------------------------------------------------------------------------

// Finite theta so large that the float Neumann series overflows: refused, operator unchanged.
TEST(InputSafety, NonFiniteRotationFromFiniteThetaIsRefused) {
  const auto spec = oft::BlockSpec::from_features(8, 4);
  oft::BlockOrthogonal<float, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{4});
  Rng rng(5);
  const auto good = oft_test::random_generators<float>(2, 4, 0.2, rng);
  op.set_generators(good);
  const RowMat<float> before = op.dense();
  oft::Generators<float> huge = good;
  for (Index k = 0; k < huge.packed(); ++k) huge.row(1)[k] = 1e12f;  // Q^5 ~ 1e60: inf in float
  EXPECT_TRUE(throws_with<std::domain_error>([&] { op.set_generators(huge); },
                                             {"non-finite", "generator 1", "k=4", "b=4"}));
  EXPECT_TRUE(oft_test::all_equal(op.dense(), before));
  EXPECT_TRUE(oft_test::all_equal(op.generators().values(), good.values()));
  EXPECT_LT(op.orthogonality_error(), 1e-5);
}

TEST(InputSafety, OrthogonalityErrorOfNonFiniteMatrixIsInfinite) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto norm : {oft::OrthogonalityNorm::Spectral, oft::OrthogonalityNorm::Frobenius}) {
    EXPECT_EQ(oft::orthogonality_error(RowMat<float>::Constant(4, 4, float(nan)), norm),
              std::numeric_limits<double>::infinity());
    RowMat<double> r = RowMat<double>::Identity(3, 3);
    EXPECT_EQ(oft::orthogonality_error(r, norm), 0.0);
    r(2, 1) = std::numeric_limits<double>::infinity();
    EXPECT_EQ(oft::orthogonality_error(r, norm), std::numeric_limits<double>::infinity());
  }
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)oft::orthogonality_error(RowMat<double>::Zero(2, 3)); }, {"2x3"}));
}

// Per-block errors, both norms, against a direct computation; the maximum is the worst block.
TEST(InputSafety, PerBlockOrthogonalityErrors) {
  Rng rng(6);
  const auto spec = oft::BlockSpec::from_features(12, 4);
  oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{1});
  oft::Generators<double> theta(3, 4);
  const double scales[] = {0.05, 0.3, 0.15};  // block 1 is the least orthogonal
  for (Index g = 0; g < 3; ++g)
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = scales[g] * (1.0 + 0.1 * double(k));
  op.set_generators(theta);
  for (const auto norm : {oft::OrthogonalityNorm::Spectral, oft::OrthogonalityNorm::Frobenius}) {
    const std::vector<double> errors = op.orthogonality_errors(norm);
    ASSERT_EQ(errors.size(), 3u);
    for (Index i = 0; i < 3; ++i) {
      const oft_test::MatD r = op.block(i).cast<double>();
      const oft_test::MatD defect = r.transpose() * r - oft_test::MatD::Identity(4, 4);
      const double expected = norm == oft::OrthogonalityNorm::Frobenius
                                  ? defect.norm()
                                  : defect.jacobiSvd().singularValues()(0);
      EXPECT_NEAR(errors[static_cast<size_t>(i)], expected, 1e-14 * (1.0 + expected)) << i;
      EXPECT_GT(errors[static_cast<size_t>(i)], 0.0) << i;
    }
    EXPECT_GT(errors[1], errors[2]);
    EXPECT_GT(errors[2], errors[0]);
    EXPECT_EQ(op.orthogonality_error(norm), errors[1]);
  }
  // Shared generator: every block reports the one generator's error.
  oft::BlockOrthogonal<double, oft::CayleyNeumann> shared(oft::BlockSpec::from_features(12, 4, true),
                                                          oft::CayleyNeumann{1});
  oft::Generators<double> one(1, 4);
  for (Index k = 0; k < one.packed(); ++k) one.row(0)[k] = 0.2;
  shared.set_generators(one);
  const std::vector<double> errors = shared.orthogonality_errors();
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_GT(errors[0], 0.0);
  EXPECT_EQ(errors[0], errors[1]);
  EXPECT_EQ(errors[0], errors[2]);
}

// --- overlap of dtheta and the raw workspace --------------------------------------------------

TEST(InputSafety, DthetaOverlappingActivationsIsRefused) {
  Fixture f;
  // dtheta's 3 x 6 entries live inside X's buffer (the bug destroyed X and gave a wrong dtheta).
  std::vector<double> x_buffer(f.x.data(), f.x.data() + f.x.size());
  const std::vector<double> x_saved = x_buffer;
  const oft::MatrixView<const double> xv(x_buffer.data(), kN, kD);
  const oft::GeneratorView<double> dtheta_in_x(x_buffer.data() + 7, kR, kB);
  std::vector<double> dx(static_cast<size_t>(kN * kD), kSentinel);
  const std::vector<double> dx_saved = dx;
  oft::Workspace<double> ws;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(xv, oft::view(f.dy), oft::MatrixView<double>(dx.data(), kN, kD),
                      dtheta_in_x, ws);
      },
      {"dtheta overlaps X"}));
  EXPECT_TRUE(untouched(x_buffer, x_saved));
  EXPECT_TRUE(untouched(dx, dx_saved));

  // dtheta inside dY, and inside dX.
  std::vector<double> dy_buffer(f.dy.data(), f.dy.data() + f.dy.size());
  const std::vector<double> dy_saved = dy_buffer;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::MatrixView<const double>(dy_buffer.data(), kN, kD),
                      oft::MatrixView<double>(dx.data(), kN, kD),
                      oft::GeneratorView<double>(dy_buffer.data(), kR, kB), ws);
      },
      {"dtheta overlaps dY"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::view(f.dy), oft::MatrixView<double>(dx.data(), kN, kD),
                      oft::GeneratorView<double>(dx.data() + kD, kR, kB), ws);
      },
      {"dtheta overlaps dX"}));
  EXPECT_TRUE(untouched(dy_buffer, dy_saved));
  EXPECT_TRUE(untouched(dx, dx_saved));
}

TEST(InputSafety, RawWorkspaceOverlapsAndNullAreRefused) {
  Fixture f;
  const Index need = f.op.workspace_size();
  oft::Generators<double> dtheta(kR, kB);
  dtheta.values().setConstant(kSentinel);
  std::vector<double> dx(static_cast<size_t>(kN * kD), kSentinel);
  const std::vector<double> dx_saved = dx;
  const oft::MatrixView<double> dxv(dx.data(), kN, kD);

  // A buffer holding dY followed by the workspace, shifted back by one element into dY.
  std::vector<double> shared(static_cast<size_t>(kN * kD + need), 0.0);
  std::copy(f.dy.data(), f.dy.data() + f.dy.size(), shared.begin());
  const std::vector<double> shared_saved = shared;
  const oft::MatrixView<const double> dyv(shared.data(), kN, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), dyv, dxv, dtheta.view(), shared.data() + kN * kD - 1, need);
      },
      {"backward workspace overlaps dY"}));

  // Workspace inside X, dX and dtheta.
  std::vector<double> x_buffer(f.x.data(), f.x.data() + f.x.size());
  x_buffer.resize(static_cast<size_t>(kN * kD + need), 0.0);
  const std::vector<double> x_saved = x_buffer;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::MatrixView<const double>(x_buffer.data(), kN, kD), oft::view(f.dy), dxv,
                      dtheta.view(), x_buffer.data() + 3, need);
      },
      {"backward workspace overlaps X"}));
  std::vector<double> big_dx(static_cast<size_t>(kN * kD + need), kSentinel);
  const std::vector<double> big_dx_saved = big_dx;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::view(f.dy),
                      oft::MatrixView<double>(big_dx.data(), kN, kD), dtheta.view(),
                      big_dx.data() + 1, need);
      },
      {"backward workspace overlaps dX"}));
  std::vector<double> ws_and_dtheta(static_cast<size_t>(need + 1), kSentinel);
  const std::vector<double> ws_and_dtheta_saved = ws_and_dtheta;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward(oft::view(f.x), oft::view(f.dy), dxv,
                      oft::GeneratorView<double>(ws_and_dtheta.data(), kR, kB),
                      ws_and_dtheta.data(), need);
      },
      {"backward workspace overlaps dtheta"}));
  // A null workspace that claims a size.
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { f.op.backward(oft::view(f.x), oft::view(f.dy), dxv, dtheta.view(), nullptr, need); },
      {"null pointer", std::to_string(need) + " scalars"}));
  EXPECT_TRUE(untouched(shared, shared_saved));
  EXPECT_TRUE(untouched(x_buffer, x_saved));
  EXPECT_TRUE(untouched(big_dx, big_dx_saved));
  EXPECT_TRUE(untouched(ws_and_dtheta, ws_and_dtheta_saved));
  EXPECT_TRUE(untouched(dx, dx_saved));
  EXPECT_TRUE(oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel));
  // A workspace right after dY in the same buffer is disjoint, so accepted.
  f.op.backward(oft::view(f.x), dyv, dxv, dtheta.view(), shared.data() + kN * kD, need);
  EXPECT_TRUE(std::equal(f.dy.data(), f.dy.data() + f.dy.size(), shared.begin()));
  EXPECT_FALSE(oft_test::all_sentinel(dtheta.values().data(), dtheta.values().size(), kSentinel));
  // Without dtheta the workspace is not used, so a null one is fine.
  f.op.backward(oft::view(f.x), oft::view(f.dy), dxv, {}, nullptr, 0);
  EXPECT_FALSE(untouched(dx, dx_saved));
}

TEST(InputSafety, BlockGradientsOverlappingDthetaAreRefused) {
  Fixture f;
  std::vector<double> buffer(static_cast<size_t>(kD * kB), 0.5);
  const std::vector<double> saved = buffer;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.backward_from_block_gradients(
            oft::MatrixView<const double>(buffer.data(), kD, kB),
            oft::GeneratorView<double>(buffer.data() + kB, kR, kB));
      },
      {"dtheta overlaps block gradients"}));
  EXPECT_TRUE(untouched(buffer, saved));
}

// --- strides -------------------------------------------------------------------------------------

TEST(InputSafety, NegativeStrideOtherThanPackedIsRefused) {
  double data[24] = {};
  using View = oft::MatrixView<double>;
  EXPECT_EQ(View(data, 2, 3, View::kPackedRows).stride(), 3);
  EXPECT_EQ(View(data, 2, 3).stride(), 3);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { View(data, 2, 3, -2); }, {"stride -2"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { View(data, 2, 3, -3); }, {"stride -3"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::GeneratorView<double>(data, 2, 4, -6); }, {"stride -6"}));
  // An extent larger than an Index is refused before any address is formed.
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { View(data, Index(1) << 40, 3, Index(1) << 40); }, {"spans more elements"}));
}

// --- validate everything before writing anything ------------------------------------------------

TEST(InputSafety, LinearBackwardWritesNothingWhenDthetaIsBad) {
  Rng rng(7);
  const Index n_out = 6;
  const RowMat<double> w = oft_test::random_matrix<double>(n_out, kD, rng);
  oft::OftLinear<double, oft::ExactCayley> layer(oft::view(w), nullptr, kB);
  layer.set_generators(oft_test::random_generators<double>(kR, kB, 0.5, rng));
  const RowMat<double> x = oft_test::random_matrix<double>(kN, kD, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(kN, n_out, rng);
  RowMat<double> dx = RowMat<double>::Constant(kN, kD, kSentinel);
  oft::Generators<double> wrong(kR, kB + 1);
  wrong.values().setConstant(kSentinel);
  oft::Workspace<double> ws;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward_weight_centric(oft::view(x), oft::view(dz), oft::view(dx), wrong.view());
      },
      {"dtheta holds 3 generators of block size 5", "block size 4"}));
  EXPECT_TRUE(oft_test::all_sentinel(dx.data(), dx.size(), kSentinel));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.backward(oft::view(x), oft::view(dz), oft::view(dx), wrong.view(), ws); },
      {"dtheta holds 3 generators of block size 5"}));
  EXPECT_TRUE(oft_test::all_sentinel(dx.data(), dx.size(), kSentinel));
  EXPECT_TRUE(oft_test::all_sentinel(wrong.values().data(), wrong.values().size(), kSentinel));

  // dtheta inside X (the layer's own checks, before dY is formed).
  std::vector<double> x_buffer(x.data(), x.data() + x.size());
  const std::vector<double> x_saved = x_buffer;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(oft::MatrixView<const double>(x_buffer.data(), kN, kD), oft::view(dz),
                       oft::view(dx), oft::GeneratorView<double>(x_buffer.data() + 1, kR, kB), ws);
      },
      {"dtheta overlaps X"}));
  EXPECT_TRUE(untouched(x_buffer, x_saved));
  EXPECT_TRUE(oft_test::all_sentinel(dx.data(), dx.size(), kSentinel));
  // dX may be X itself in the input-centric backward, as documented.
  RowMat<double> x_in_place = x;
  oft::Generators<double> dtheta(kR, kB);
  layer.backward(oft::view(x_in_place), oft::view(dz), oft::view(x_in_place), dtheta.view(), ws);
  RowMat<double> dx_ref(kN, kD);
  oft::Generators<double> dtheta_ref(kR, kB);
  layer.backward(oft::view(x), oft::view(dz), oft::view(dx_ref), dtheta_ref.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(x_in_place, dx_ref));
  EXPECT_TRUE(oft_test::all_equal(dtheta.values(), dtheta_ref.values()));
}

// --- accessors -----------------------------------------------------------------------------------

TEST(InputSafety, AccessorsCheckTheirIndex) {
  Fixture f;
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.block_active(3); },
                                                 {"block index 3", "[0, 3)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.block_active(-1); },
                                                 {"block index -1"}));
  EXPECT_TRUE(f.op.block_active(2));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.plan(3); },
                                                 {"generator index 3", "[0, 3)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.op.plan(-2); },
                                                 {"generator index -2"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.theta.dense(3); },
                                                 {"generator index 3"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.theta.view().dense(-1); },
                                                 {"generator index -1"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.theta.view()(0, 2, 1); },
                                                 {"(2,1)", "4x4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.theta.view()(0, 1, 4); },
                                                 {"(1,4)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)f.theta.view()(5, 0, 1); },
                                                 {"generator index 5"}));
  EXPECT_EQ(f.theta.view()(1, 0, 3), f.theta.row(1)[oft::packed_index(0, 3, kB)]);
}

TEST(InputSafety, NullPackedRowInSkewExpression) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)oft::skew(static_cast<const double*>(nullptr), 4); }, {"null", "b=4"}));
  // b = 1 has no entries, so a null row is a valid empty generator.
  EXPECT_EQ(oft::skew(static_cast<const double*>(nullptr), 1).eval()(0, 0), 0.0);
}

// --- caps on b and k -----------------------------------------------------------------------------

TEST(InputSafety, BlockSizeAboveCapIsRefused) {
  const Index too_big = 3037000500;  // b*b overflows int64
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::BlockSpec::from_features(too_big * 2, too_big); },
      {"b=3037000500", "65536"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Op(oft::BlockSpec{1, too_big, false}); }, {"b=3037000500"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Op(oft::BlockSpec{Index(1) << 60, 4096, false}); }, {"more features than an Index"}));
  double dummy = 0.0;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::GeneratorView<double>(&dummy, 1, too_big); }, {"b=3037000500"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { oft::Generators<double>(1, oft::kMaxBlockSize + 1); }, {"b=65537"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::skew(&dummy, too_big); }, {"b=3037000500"}));
  // A packed length implying b above the cap (b = 70000: m = 2449965000).
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)oft::block_size_from_packed(oft::packed_size(70000)); },
      {"2449965000", "b=70000", "65536"}));
  EXPECT_EQ(oft::block_size_from_packed(oft::packed_size(oft::kMaxBlockSize)), oft::kMaxBlockSize);
  EXPECT_EQ(oft::BlockSpec::from_features(oft::kMaxBlockSize, oft::kMaxBlockSize).blocks, 1);
}

TEST(InputSafety, NeumannTermsAboveCapAreRefused) {
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { oft::CayleyNeumann{INT_MAX}; },
                                                 {"k=2147483647", "1024"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { oft::CayleyNeumann{oft::kMaxNeumannTerms + 1}; }, {"k=1025"}));
  EXPECT_EQ(oft::CayleyNeumann{oft::kMaxNeumannTerms}.terms, oft::kMaxNeumannTerms);
  const double row[1] = {0.1};
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::cayley_neumann(oft::skew(row, 2), INT_MAX); }, {"k=2147483647"}));
}

// --- legal aliasing: disjoint column slices of one buffer ----------------------------------------

TEST(InputSafety, DisjointColumnSlicesOfOneBufferAreAccepted) {
  Fixture f;
  // One N x 2d buffer: X in columns [0, d), Y in columns [d, 2d). Address ranges interleave, but
  // no element is shared.
  RowMat<double> both(kN, 2 * kD);
  both.leftCols(kD) = f.x;
  both.rightCols(kD).setConstant(kSentinel);
  const oft::MatrixView<const double> xv(both.data(), kN, kD, 2 * kD);
  const oft::MatrixView<double> yv(both.data() + kD, kN, kD, 2 * kD);
  f.op.apply(xv, yv);
  RowMat<double> expected(kN, kD);
  f.op.apply(oft::view(f.x), oft::view(expected));
  EXPECT_TRUE(oft_test::all_equal(RowMat<double>(both.rightCols(kD)), expected));
  EXPECT_TRUE(oft_test::all_equal(RowMat<double>(both.leftCols(kD)), f.x));

  // backward with X, dY and dX as three column slices of one N x 3d buffer, dtheta beside.
  RowMat<double> three(kN, 3 * kD);
  three.leftCols(kD) = f.x;
  three.middleCols(kD, kD) = f.dy;
  three.rightCols(kD).setConstant(kSentinel);
  oft::Generators<double> dtheta(kR, kB), dtheta_ref(kR, kB);
  oft::Workspace<double> ws;
  f.op.backward(oft::MatrixView<const double>(three.data(), kN, kD, 3 * kD),
                oft::MatrixView<const double>(three.data() + kD, kN, kD, 3 * kD),
                oft::MatrixView<double>(three.data() + 2 * kD, kN, kD, 3 * kD), dtheta.view(), ws);
  RowMat<double> dx_ref(kN, kD);
  f.op.backward(oft::view(f.x), oft::view(f.dy), oft::view(dx_ref), dtheta_ref.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(RowMat<double>(three.rightCols(kD)), dx_ref));
  EXPECT_TRUE(oft_test::all_equal(dtheta.values(), dtheta_ref.values()));

  // Overlapping column slices (one shared column) are still refused, nothing written.
  RowMat<double> tight = RowMat<double>::Constant(kN, 2 * kD, 0.5);
  const RowMat<double> tight_saved = tight;
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        f.op.apply(oft::MatrixView<const double>(tight.data(), kN, kD, 2 * kD),
                   oft::MatrixView<double>(tight.data() + kD - 1, kN, kD, 2 * kD));
      },
      {"Y partially overlaps X"}));
  EXPECT_TRUE(oft_test::all_equal(tight, tight_saved));
}

TEST(InputSafety, NumericalGradientArguments) {
  double v[2] = {1.0, 2.0};
  const auto loss = [&] { return v[0] * v[1]; };
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::numerical_gradient(v, -1, loss); }, {"count >= 0", "-1"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::numerical_gradient(static_cast<double*>(nullptr), 2, loss); },
      {"null", "2 values"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { (void)oft::numerical_gradient(v, 2, loss, 0.0); }, {"h=0"}));
  const std::vector<double> g = oft::numerical_gradient(v, 2, loss);
  EXPECT_NEAR(g[0], 2.0, 1e-8);
  EXPECT_NEAR(g[1], 1.0, 1e-8);
}

}  // namespace

// oft::Butterfly (BOFT) against PEFT 0.21.2's own numbers (fixtures/families_reference.safetensors,
// made by make_reference.py from PEFT's Linear layers in float64), against its dense reference,
// and its backward against central differences in double.
#include <gtest/gtest.h>

#include "family_test_support.hpp"

#include <oft/block_orthogonal.hpp>
#include <oft/butterfly.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/finite_difference.hpp>
#include <oft/peft_butterfly.hpp>

#include <cmath>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace oft_family_test;

}  // namespace

TEST(Butterfly, BlockFeaturesAreTheDocumentedTable) {
  // docs/families.md, section 1.3: d = 16, b = 4, m = 3.
  const auto spec = oft::ButterflySpec::from_features(16, 4, 3);
  const int want[3][4][4] = {{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}},
                             {{0, 1, 4, 5}, {2, 3, 6, 7}, {8, 9, 12, 13}, {10, 11, 14, 15}},
                             {{0, 1, 8, 9}, {2, 3, 10, 11}, {4, 5, 12, 13}, {6, 7, 14, 15}}};
  for (int i = 0; i < 3; ++i)
    for (int g = 0; g < 4; ++g)
      for (int p = 0; p < 4; ++p) EXPECT_EQ(spec.feature(i, g, p), want[i][g][p]) << i << g << p;
}

TEST(Butterfly, PositionsArePeftsPermutations) {
  int checked = 0;
  for (const auto& name : cases("boft", ".boft_R")) {
    const auto boft_r = fixtures().tensor(name + ".boft_R");
    const auto m = static_cast<oft::Index>(boft_r.shape[0]), n = static_cast<oft::Index>(boft_r.shape[1]),
               b = static_cast<oft::Index>(boft_r.shape[2]);
    const oft::ButterflySpec spec{n, b, m};
    const std::vector<std::int64_t> perm = fixtures().tensor(name + ".perm").copy_as<std::int64_t>();
    for (oft::Index i = 0; i < m; ++i) {
      const std::vector<oft::Index> position = spec.positions(i);
      for (oft::Index k = 0; k < spec.features(); ++k)
        ASSERT_EQ(position[static_cast<std::size_t>(k)], perm[static_cast<std::size_t>(i * spec.features() + k)])
            << name << " factor " << i << " feature " << k;
    }
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

// PEFT's Linear in eval mode: Y = ((X M) W0^T) .* s^T + bias, its merge diag(s) W0 M^T, and its
// autograd gradients, all from oft's operator and the conversions of peft_butterfly.hpp.
TEST(Butterfly, EqualsPeftsBoftLinear) {
  // PEFT forms M densely and adds and subtracts the bias: rounding, ~1e-15 here.
  constexpr double kTolerance = 1e-12;
  int checked = 0;
  for (const auto& name : cases("boft", ".boft_R")) {
    SCOPED_TRACE(name);
    const auto boft_r_view = fixtures().tensor(name + ".boft_R");
    const std::vector<double> boft_r = boft_r_view.copy_as<double>();
    const oft::ButterflySpec spec{static_cast<oft::Index>(boft_r_view.shape[1]),
                                  static_cast<oft::Index>(boft_r_view.shape[2]),
                                  static_cast<oft::Index>(boft_r_view.shape[0])};
    oft::Generators<double> theta(spec.generators(), spec.block_size);
    oft::peft::boft_generators(boft_r.data(), spec, theta.view());
    oft::Butterfly<double, oft::ExactCayley> boft(spec);
    boft.set_generators(theta);

    EXPECT_LT(relative(boft.dense(), load(name + ".rotation")), kTolerance);

    const Matrix x = load(name + ".X"), w0 = load(name + ".W0"), s = load(name + ".boft_s");
    const Eigen::VectorXd scale = s.col(0);
    Eigen::VectorXd bias = Eigen::VectorXd::Zero(w0.rows());
    if (fixtures().contains(name + ".bias")) bias = load(name + ".bias").col(0);
    Matrix xm(x.rows(), x.cols());
    boft.apply(oft::view(x), oft::view(xm));
    const Matrix z = xm * w0.transpose();
    const Matrix y = (z * scale.asDiagonal()).rowwise() + bias.transpose();
    EXPECT_LT(relative(y, load(name + ".Y")), kTolerance);

    Matrix merged(w0.rows(), w0.cols());
    boft.apply_transposed(oft::view(w0), oft::view(merged));
    merged = scale.asDiagonal() * merged;
    EXPECT_LT(relative(merged, load(name + ".W_merged")), kTolerance);

    // Backward of sum(Y .* G): through the scale, the base layer, then the butterfly.
    const Matrix g = load(name + ".G");
    const Matrix d_xm = (g * scale.asDiagonal()) * w0;
    Matrix dx(x.rows(), x.cols());
    oft::Generators<double> dtheta(spec.generators(), spec.block_size);
    oft::Workspace<double> ws;
    boft.backward(oft::view(x), oft::view(d_xm), oft::view(dx), dtheta.view(), ws);
    EXPECT_LT(relative(dx, load(name + ".dX")), kTolerance);
    std::vector<double> d_boft_r(boft_r.size());
    oft::peft::boft_gradient(oft::GeneratorView<const double>(dtheta.view()), spec, d_boft_r.data());
    const Matrix want_d_boft_r = load(name + ".d_boft_R");
    const Matrix got_d_boft_r =
        Eigen::Map<const Matrix>(d_boft_r.data(), want_d_boft_r.rows(), want_d_boft_r.cols());
    EXPECT_LT(relative(got_d_boft_r, want_d_boft_r), kTolerance);
    const Matrix ds = (g.array() * z.array()).colwise().sum().transpose();
    EXPECT_LT(relative(ds, load(name + ".d_boft_s")), kTolerance);
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

TEST(Butterfly, BackwardIsTheCentralDifferenceOfItsForward) {
  // A truncated Neumann series (not orthogonal: R^T is not R^-1) over m = 3 factors, so a
  // backward that recovered factor inputs through R^T, or mixed up the orders, would show.
  const auto spec = oft::ButterflySpec::from_features(16, 4, 3);
  oft::Butterfly<double, oft::CayleyNeumann> boft(spec, oft::CayleyNeumann{2});
  oft::Generators<double> theta(spec.generators(), spec.block_size);
  theta.values() = random_matrix(spec.generators(), spec.packed(), 1, 0.3);
  const Matrix x = random_matrix(5, 16, 2), g = random_matrix(5, 16, 3);
  const auto loss = [&] {
    boft.set_generators(theta);
    Matrix y(x.rows(), x.cols());
    boft.apply(oft::view(x), oft::view(y));
    return (y.array() * g.array()).sum();
  };
  const std::vector<double> numeric =
      oft::numerical_gradient(theta.values().data(), theta.values().size(), loss);
  boft.set_generators(theta);
  EXPECT_GT(boft.orthogonality_error(), 1e-3);  // the Neumann blocks are visibly not orthogonal
  Matrix dx(x.rows(), x.cols());
  oft::Generators<double> dtheta(spec.generators(), spec.block_size);
  oft::Workspace<double> ws;
  boft.backward(oft::view(x), oft::view(g), oft::view(dx), dtheta.view(), ws);
  const Eigen::Map<const Eigen::VectorXd> want(numeric.data(), static_cast<oft::Index>(numeric.size()));
  const Eigen::Map<const Eigen::VectorXd> got(dtheta.values().data(), dtheta.values().size());
  EXPECT_LT((got - want).norm(), 1e-7 * want.norm());
  EXPECT_LT(relative(dx, g * boft.dense().transpose()), 1e-13);

  // dX alone, and dtheta alone, give the same numbers; dX in place over dY too.
  Matrix dx_only(x.rows(), x.cols());
  boft.backward(oft::view(x), oft::view(g), oft::view(dx_only), {}, ws);
  EXPECT_EQ(relative(dx_only, dx), 0.0);
  oft::Generators<double> dtheta_only(spec.generators(), spec.block_size);
  boft.backward(oft::view(x), oft::view(g), {}, dtheta_only.view(), ws);
  EXPECT_EQ((dtheta_only.values() - dtheta.values()).norm(), 0.0);
  Matrix in_place = g;
  oft::Generators<double> dtheta_in_place(spec.generators(), spec.block_size);
  boft.backward(oft::view(x), oft::view(in_place), oft::view(in_place), dtheta_in_place.view(), ws);
  EXPECT_EQ(relative(in_place, dx), 0.0);
  EXPECT_EQ((dtheta_in_place.values() - dtheta.values()).norm(), 0.0);
}

TEST(Butterfly, ApplyVariantsAgreeWithTheDenseMatrix) {
  const auto spec = oft::ButterflySpec::from_features(32, 4, 4);
  oft::Butterfly<double, oft::CayleyNeumann> boft(spec, oft::CayleyNeumann{3});
  oft::Generators<double> theta(spec.generators(), spec.block_size);
  theta.values() = random_matrix(spec.generators(), spec.packed(), 4, 0.2);
  boft.set_generators(theta);
  const Matrix m = boft.dense();
  // The dense M is the product of the factors' own dense blocks, placed by feature().
  Matrix product = Matrix::Identity(32, 32);
  for (oft::Index i = spec.factors - 1; i >= 0; --i) {
    Matrix b_i = Matrix::Zero(32, 32);
    for (oft::Index g = 0; g < spec.blocks; ++g)
      for (oft::Index p = 0; p < spec.block_size; ++p)
        for (oft::Index q = 0; q < spec.block_size; ++q)
          b_i(spec.feature(i, g, p), spec.feature(i, g, q)) = boft.block(i, g)(p, q);
    product = product * b_i;  // X M = X B_{m-1} ... B_0: factor m-1 acts first
  }
  EXPECT_LT(relative(m, product), 1e-14);

  const Matrix x = random_matrix(7, 32, 5);
  Matrix y(7, 32), in_place = x;
  boft.apply(oft::view(x), oft::view(y));
  boft.apply(oft::view(in_place), oft::view(in_place));
  EXPECT_EQ(relative(in_place, y), 0.0);
  EXPECT_LT(relative(y, x * m), 1e-14);
  boft.apply_transposed(oft::view(x), oft::view(y));
  EXPECT_LT(relative(y, x * m.transpose()), 1e-14);
  boft.apply_inverse(oft::view(x), oft::view(y));
  EXPECT_LT(relative(y, x * m.inverse()), 1e-12);
  boft.apply_inverse(oft::view(x), oft::view(y), /*transposed=*/true);
  EXPECT_LT(relative(y, x * m.inverse().transpose()), 1e-12);
}

TEST(Butterfly, LargeBatchesTakeTheThreadedPermutationsAlike) {
  // 512 x 256 elements: above the size where the permutations run on OpenMP threads.
  const auto spec = oft::ButterflySpec::from_features(256, 16, 4);
  oft::Butterfly<float, oft::CayleyNeumann> boft(spec, oft::CayleyNeumann{4});
  oft::Generators<float> theta(spec.generators(), spec.block_size);
  theta.values() = random_matrix(spec.generators(), spec.packed(), 7, 0.05).cast<float>();
  boft.set_generators(theta);
  const oft::RowMatrix<float> x = random_matrix(512, 256, 8).cast<float>();
  const oft::RowMatrix<double> want = x.cast<double>() * boft.dense().cast<double>();
  oft::RowMatrix<float> y(512, 256), in_place = x;
  boft.apply(oft::view(x), oft::view(y));
  boft.apply(oft::view(in_place), oft::view(in_place));
  EXPECT_EQ((in_place - y).norm(), 0.0f);
  EXPECT_LT(relative(y.cast<double>(), want), 1e-5);  // float, 4 factors of b = 16
  oft::RowMatrix<float> back(512, 256);
  boft.apply_inverse(oft::view(y), oft::view(back));
  EXPECT_LT(relative(back.cast<double>(), x.cast<double>()), 1e-5);
}

// apply, apply_transposed and backward's forward pass go through tiles of 2^16 / d rows: with
// d = 128 that is 512 rows, so 1333 rows make two full tiles and a partial one, on two threads,
// with a row stride wider than d. Each equals the dense matrix, and backward equals the sum of
// one-row backwards (each tile's start at row 0), in place too.
TEST(Butterfly, TiledPassesEqualTheDenseMatrixAndOneRowPasses) {
#if defined(_OPENMP)
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(2);
#endif
  const auto spec = oft::ButterflySpec::from_features(128, 8, 3);
  oft::Butterfly<double, oft::ExactCayley> boft(spec);
  oft::Generators<double> theta(spec.generators(), spec.block_size);
  theta.values() = random_matrix(spec.generators(), spec.packed(), 17, 0.3);
  boft.set_generators(theta);
  const Matrix m = boft.dense();
  const oft::Index n = 1333, d = 128, stride = d + 5;
  Matrix wide_x = random_matrix(n, stride, 18), wide_g = random_matrix(n, stride, 19);
  const oft::ConstMatrixView<double> x(wide_x.data(), n, d, stride), g(wide_g.data(), n, d, stride);
  const Matrix x_dense = wide_x.leftCols(d), g_dense = wide_g.leftCols(d);

  Matrix y(n, d), yt(n, d);
  boft.apply(x, oft::view(y));
  boft.apply_transposed(x, oft::view(yt));
  EXPECT_LT(relative(y, x_dense * m), 1e-14);
  EXPECT_LT(relative(yt, x_dense * m.transpose()), 1e-14);
  Matrix in_place = wide_x;
  boft.apply(oft::MatrixView<double>(in_place.data(), n, d, stride), oft::MatrixView<double>(in_place.data(), n, d, stride));
  EXPECT_EQ((Matrix(in_place.leftCols(d)) - y).norm(), 0.0);
  EXPECT_EQ((in_place.rightCols(5) - wide_x.rightCols(5)).norm(), 0.0);  // padding untouched

  Matrix dx(n, d), dx_row(1, d);
  oft::Generators<double> dtheta(spec.generators(), spec.block_size), dtheta_row(spec.generators(), spec.block_size);
  Matrix dtheta_rows = Matrix::Zero(spec.generators(), spec.packed());
  oft::Workspace<double> ws;
  boft.backward(x, g, oft::view(dx), dtheta.view(), ws);
  EXPECT_LT(relative(dx, g_dense * m.transpose()), 1e-14);
  for (oft::Index i = 0; i < n; ++i) {
    boft.backward(oft::ConstMatrixView<double>(wide_x.data() + i * stride, 1, d, stride),
                  oft::ConstMatrixView<double>(wide_g.data() + i * stride, 1, d, stride), oft::view(dx_row),
                  dtheta_row.view(), ws);
    dtheta_rows += Matrix(dtheta_row.values());
  }
  EXPECT_LT(relative(Matrix(dtheta.values()), dtheta_rows), 1e-12);
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
}

// bfloat16 activations: the float operator on the widened inputs, each output rounded once (one
// factor: the block operator's own bfloat16 path, also rounded once); generator gradients in float
// equal to the float path's.
TEST(Butterfly, Bfloat16ActivationsAreTheFloatPathRoundedOnce) {
  for (const oft::Index m : {1, 3}) {
    SCOPED_TRACE(m);
    const auto spec = oft::ButterflySpec::from_features(256, 8, m);
    oft::Butterfly<float, oft::ExactCayley> boft(spec);
    oft::Generators<float> theta(spec.generators(), spec.block_size);
    theta.values() = random_matrix(spec.generators(), spec.packed(), 61, 0.3).cast<float>();
    boft.set_generators(theta);
    const oft::Index n = 600;  // several tiles of 256 rows, threaded
    const BfMatrix x = to_bf16(random_matrix(n, 256, 62)), g = to_bf16(random_matrix(n, 256, 63));
    const FloatMatrix xf = widen(x), gf = widen(g);
    FloatMatrix want(n, 256), dx_want(n, 256);
    BfMatrix y(n, 256), dx(n, 256), in_place = x;
    boft.apply(oft::view(xf), oft::view(want));
    boft.apply(oft::view(x), oft::view(y));
    EXPECT_TRUE(rounded_once(y, want));
    boft.apply(oft::view(in_place), oft::view(in_place));
    EXPECT_TRUE(in_place == y);
    boft.apply_transposed(oft::view(xf), oft::view(want));
    boft.apply_transposed(oft::view(x), oft::view(y));
    EXPECT_TRUE(rounded_once(y, want));

    oft::Generators<float> dtheta(spec.generators(), spec.block_size), dtheta_want(spec.generators(), spec.block_size);
    oft::Workspace<float> ws;
    boft.backward(oft::view(xf), oft::view(gf), oft::view(dx_want), dtheta_want.view(), ws);
    boft.backward(oft::view(x), oft::view(g), oft::view(dx), dtheta.view(), ws);
    EXPECT_TRUE(rounded_once(dx, dx_want));
    EXPECT_LT(relative(dtheta.values().cast<double>(), dtheta_want.values().cast<double>()), 1e-5);
  }
}

TEST(Butterfly, OneFactorIsBlockOrthogonal) {
  const auto spec = oft::ButterflySpec::from_features(15, 5, 1);  // odd b: fine for m = 1
  oft::Butterfly<float, oft::ExactCayley> boft(spec);
  oft::BlockOrthogonal<float, oft::ExactCayley> oft_rotation(oft::BlockSpec::from_features(15, 5));
  oft::Generators<float> theta(spec.generators(), spec.block_size);
  theta.values() = random_matrix(spec.generators(), spec.packed(), 6, 0.3).cast<float>();
  boft.set_generators(theta);
  oft_rotation.set_generators(theta);
  EXPECT_EQ((boft.dense() - oft_rotation.dense()).norm(), 0.0f);
}

TEST(Butterfly, RefusesBadLayoutsAndArgumentsByName) {
  const auto expect_invalid = [](auto&& call, const std::string& text) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected one saying: " << text;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_invalid([] { (void)oft::ButterflySpec::from_features(18, 4, 1); },
                 "butterfly features d=18 must be a positive multiple of block_size b=4");
  expect_invalid([] { (void)oft::ButterflySpec::from_features(16, 4, 4); },
                 "must be a multiple of 2^(m-1)=8 for factors m=4");
  expect_invalid([] { (void)oft::ButterflySpec::from_features(30, 5, 2); },
                 "butterfly block_size b=5 must be even when factors m=2 > 1");
  expect_invalid([] { (void)oft::ButterflySpec::from_features(16, 4, 0); },
                 "butterfly factors m=0 must be in [1, 62]");

  const auto spec = oft::ButterflySpec::from_features(16, 4, 2);
  oft::Butterfly<double, oft::ExactCayley> boft(spec);
  oft::Generators<double> too_few(spec.blocks, spec.block_size);
  expect_invalid([&] { boft.set_generators(too_few); },
                 "theta has 4 generators of block size 4, expected m N = 2 x 4 = 8 of b=4");
  Matrix x(2, 12), y(2, 16);
  expect_invalid([&] { boft.apply(oft::view(x), oft::view(y)); }, "X has 12 columns, expected d=16");
  Matrix x16 = Matrix::Zero(2, 16), dx(2, 16);
  oft::Generators<double> dtheta(spec.generators(), spec.block_size);
  double tiny[1];
  expect_invalid(
      [&] { boft.backward(oft::view(x16), oft::view(x16), oft::view(dx), dtheta.view(), tiny, 1); },
      "butterfly backward workspace has 1 scalars");

  oft::Generators<double> theta(spec.generators(), spec.block_size);
  theta.values()(3, 2) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(boft.set_generators(theta), std::domain_error);
  EXPECT_EQ(boft.dense(), Matrix::Identity(16, 16));  // unchanged by the refusal
}

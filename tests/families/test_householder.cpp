// oft::Householder (HRA) against PEFT 0.21.2's own numbers (fixtures/families_reference.safetensors,
// made by make_reference.py from PEFT's Linear layers in float64, with and without apply_GS),
// against the explicit product of reflections, and its backward against central differences.
#include <gtest/gtest.h>

#include "family_test_support.hpp"

#include <oft/finite_difference.hpp>
#include <oft/householder.hpp>

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

// PEFT's HRA Linear in eval mode: Y = (X R_H^T) W0^T + bias, merge W0 R_H, and its autograd
// gradients of sum(Y .* G) for X and hra_u.
TEST(Householder, EqualsPeftsHraLinear) {
  constexpr double kTolerance = 1e-12;  // float64 throughout; observed ~1e-15
  int checked = 0, with_gram_schmidt = 0;
  for (const auto& name : cases("hra", ".hra_u")) {
    SCOPED_TRACE(name);
    const bool gram_schmidt = name.find("_gs") != std::string::npos;
    const Matrix u = load(name + ".hra_u"), x = load(name + ".X"), w0 = load(name + ".W0");
    oft::Householder<double> hra(u.rows(), u.cols(), gram_schmidt);
    hra.set_vectors(oft::view(u));
    Eigen::VectorXd bias = Eigen::VectorXd::Zero(w0.rows());
    if (fixtures().contains(name + ".bias")) bias = load(name + ".bias").col(0);
    Matrix xr(x.rows(), x.cols());
    hra.apply(oft::view(x), oft::view(xr));
    const Matrix y = (xr * w0.transpose()).rowwise() + bias.transpose();
    EXPECT_LT(relative(y, load(name + ".Y")), kTolerance);

    Matrix merged(w0.rows(), w0.cols());
    hra.apply_transposed(oft::view(w0), oft::view(merged));
    EXPECT_LT(relative(merged, load(name + ".W_merged")), kTolerance);

    const Matrix dxr = load(name + ".G") * w0;
    Matrix dx(x.rows(), x.cols()), du(u.rows(), u.cols());
    oft::Workspace<double> ws;
    hra.backward(oft::view(x), oft::view(dxr), oft::view(dx), oft::view(du), ws);
    EXPECT_LT(relative(dx, load(name + ".dX")), kTolerance);
    EXPECT_LT(relative(du, load(name + ".d_hra_u")), kTolerance);
    ++checked;
    with_gram_schmidt += gram_schmidt ? 1 : 0;
  }
  EXPECT_GE(checked, 7);
  EXPECT_GE(with_gram_schmidt, 3);
}

TEST(Householder, IsTheProductOfItsReflectionsLastFirst) {
  for (const bool gram_schmidt : {false, true}) {
    SCOPED_TRACE(gram_schmidt);
    const Matrix u = random_matrix(10, 4, 11);
    oft::Householder<double> hra(10, 4, gram_schmidt);
    EXPECT_EQ(hra.dense(), Matrix::Identity(10, 10));  // R = I before set_vectors
    hra.set_vectors(oft::view(u));
    // X R = X H_{r-1} ... H_0 with the operator's own unit vectors.
    Matrix product = Matrix::Identity(10, 10);
    for (oft::Index i = 3; i >= 0; --i) {
      const Eigen::VectorXd q = hra.vectors().col(i);
      product = product * (Matrix::Identity(10, 10) - 2.0 * q * q.transpose());
    }
    const Matrix r = hra.dense();
    EXPECT_LT(relative(r, product), 1e-14);
    EXPECT_LT((r.transpose() * r - Matrix::Identity(10, 10)).norm(), 1e-13);
    if (gram_schmidt) {
      const Eigen::MatrixXd gram = hra.vectors().transpose() * hra.vectors();
      EXPECT_LT((gram - Eigen::MatrixXd::Identity(4, 4)).norm(), 1e-14);
    }

    const Matrix x = random_matrix(6, 10, 12);
    Matrix y(6, 10), in_place = x, back(6, 10);
    hra.apply(oft::view(x), oft::view(y));
    hra.apply(oft::view(in_place), oft::view(in_place));
    EXPECT_EQ((in_place - y).norm(), 0.0);
    EXPECT_LT(relative(y, x * r), 1e-14);
    hra.apply_transposed(oft::view(y), oft::view(back));
    EXPECT_LT(relative(back, x), 1e-14);
  }
}

TEST(Householder, BackwardIsTheCentralDifferenceOfItsForward) {
  for (const bool gram_schmidt : {false, true}) {
    SCOPED_TRACE(gram_schmidt);
    const oft::Index d = 12, r = 5;
    Matrix u = random_matrix(d, r, 21);
    const Matrix x = random_matrix(7, d, 22), g = random_matrix(7, d, 23);
    oft::Householder<double> hra(d, r, gram_schmidt);
    const auto loss = [&] {
      hra.set_vectors(oft::view(u));
      Matrix y(x.rows(), d);
      hra.apply(oft::view(x), oft::view(y));
      return (y.array() * g.array()).sum();
    };
    const std::vector<double> numeric = oft::numerical_gradient(u.data(), u.size(), loss);
    hra.set_vectors(oft::view(u));
    Matrix dx(x.rows(), d), du(d, r);
    oft::Workspace<double> ws;
    hra.backward(oft::view(x), oft::view(g), oft::view(dx), oft::view(du), ws);
    const Eigen::Map<const Eigen::VectorXd> want(numeric.data(), static_cast<oft::Index>(numeric.size()));
    const Eigen::Map<const Eigen::VectorXd> got(du.data(), du.size());
    EXPECT_LT((got - want).norm(), 1e-8 * want.norm());
    EXPECT_LT(relative(dx, g * hra.dense().transpose()), 1e-14);

    // dX alone, dU alone, and dX in place over dY give the same numbers.
    Matrix dx_only(x.rows(), d), du_only(d, r), in_place = g, du_in_place(d, r);
    hra.backward(oft::view(x), oft::view(g), oft::view(dx_only), {}, ws);
    hra.backward(oft::view(x), oft::view(g), {}, oft::view(du_only), ws);
    hra.backward(oft::view(x), oft::view(in_place), oft::view(in_place), oft::view(du_in_place), ws);
    EXPECT_EQ((dx_only - dx).norm(), 0.0);
    EXPECT_EQ((du_only - du).norm(), 0.0);
    EXPECT_EQ((in_place - dx).norm(), 0.0);
    EXPECT_EQ((du_in_place - du).norm(), 0.0);
  }
}

// Many row tiles (the last one partial), two threads and a row stride wider than d: apply equals
// X R with R formed densely, and backward's per-thread, per-tile sums equal the sum of one-row
// backwards (each a single tile, the path the central-difference test above checks).
TEST(Householder, TiledAndThreadedPassesEqualTheOneRowPasses) {
#if defined(_OPENMP)
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(2);
#endif
  for (const bool gram_schmidt : {false, true}) {
    SCOPED_TRACE(gram_schmidt);
    const oft::Index d = 256, r = 6, n = 333, stride = d + 3;
    const Matrix u = random_matrix(d, r, 41);
    oft::Householder<double> hra(d, r, gram_schmidt);
    hra.set_vectors(oft::view(u));
    const Matrix dense = hra.dense();
    Matrix wide_x = random_matrix(n, stride, 42), wide_g = random_matrix(n, stride, 43);
    const oft::ConstMatrixView<double> x(wide_x.data(), n, d, stride), g(wide_g.data(), n, d, stride);
    const Matrix x_dense = wide_x.leftCols(d), g_dense = wide_g.leftCols(d);

    Matrix y(n, d), yt(n, d);
    hra.apply(x, oft::view(y));
    hra.apply_transposed(x, oft::view(yt));
    EXPECT_LT(relative(y, x_dense * dense), 1e-14);
    EXPECT_LT(relative(yt, x_dense * dense.transpose()), 1e-14);

    Matrix dx(n, d), du(d, r), du_rows = Matrix::Zero(d, r), du_row(d, r), dx_row(1, d);
    oft::Workspace<double> ws;
    hra.backward(x, g, oft::view(dx), oft::view(du), ws);
    for (oft::Index i = 0; i < n; ++i) {
      hra.backward(oft::ConstMatrixView<double>(wide_x.data() + i * stride, 1, d, stride),
                   oft::ConstMatrixView<double>(wide_g.data() + i * stride, 1, d, stride), oft::view(dx_row),
                   oft::view(du_row), ws);
      du_rows += du_row;
      EXPECT_LT(relative(dx_row, dx.row(i)), 1e-14) << "row " << i;
    }
    EXPECT_LT(relative(du, du_rows), 1e-12);
    EXPECT_LT(relative(dx, g_dense * dense.transpose()), 1e-14);

    // In place over dY (wide rows): the same dX, and the same dU.
    Matrix in_place = wide_g, du_in_place(d, r);
    hra.backward(x, oft::MatrixView<double>(in_place.data(), n, d, stride),
                 oft::MatrixView<double>(in_place.data(), n, d, stride), oft::view(du_in_place), ws);
    EXPECT_EQ((Matrix(in_place.leftCols(d)) - dx).norm(), 0.0);
    EXPECT_EQ((du_in_place - du).norm(), 0.0);
    EXPECT_EQ((in_place.rightCols(3) - wide_g.rightCols(3)).norm(), 0.0);  // padding untouched
  }
#if defined(_OPENMP)
  omp_set_num_threads(saved_threads);
#endif
}

// bfloat16 activations: the float operator on the widened inputs, each output rounded once; the
// vector gradient in float equal to the float path's.
TEST(Householder, Bfloat16ActivationsAreTheFloatPathRoundedOnce) {
  for (const bool gram_schmidt : {false, true}) {
    SCOPED_TRACE(gram_schmidt);
    const oft::Index d = 128, r = 6, n = 700;  // 11 tiles, threaded
    oft::Householder<float> hra(d, r, gram_schmidt);
    const FloatMatrix u = random_matrix(d, r, 51).cast<float>();
    hra.set_vectors(oft::view(u));
    const BfMatrix x = to_bf16(random_matrix(n, d, 52)), g = to_bf16(random_matrix(n, d, 53));
    const FloatMatrix xf = widen(x), gf = widen(g);
    FloatMatrix want(n, d), dx_want(n, d), du_want(d, r), du(d, r);
    BfMatrix y(n, d), dx(n, d), in_place = x;
    hra.apply(oft::view(xf), oft::view(want));
    hra.apply(oft::view(x), oft::view(y));
    EXPECT_TRUE(rounded_once(y, want));
    hra.apply(oft::view(in_place), oft::view(in_place));
    EXPECT_TRUE(in_place == y);
    hra.apply_transposed(oft::view(xf), oft::view(want));
    hra.apply_transposed(oft::view(x), oft::view(y));
    EXPECT_TRUE(rounded_once(y, want));

    oft::Workspace<float> ws;
    hra.backward(oft::view(xf), oft::view(gf), oft::view(dx_want), oft::view(du_want), ws);
    hra.backward(oft::view(x), oft::view(g), oft::view(dx), oft::view(du), ws);
    EXPECT_TRUE(rounded_once(dx, dx_want));
    EXPECT_LT(relative(du.cast<double>(), du_want.cast<double>()), 1e-5);
  }
}

TEST(Householder, FloatMatchesDouble) {
  const Matrix u = random_matrix(64, 8, 31), x = random_matrix(33, 64, 32);
  oft::Householder<double> wide(64, 8);
  oft::Householder<float> narrow(64, 8);
  wide.set_vectors(oft::view(u));
  const oft::RowMatrix<float> uf = u.cast<float>(), xf = x.cast<float>();
  narrow.set_vectors(oft::view(uf));
  Matrix y(33, 64);
  oft::RowMatrix<float> yf(33, 64);
  wide.apply(oft::view(x), oft::view(y));
  narrow.apply(oft::view(xf), oft::view(yf));
  EXPECT_LT(relative(yf.cast<double>(), y), 1e-6);
}

TEST(Householder, RefusesBadArgumentsByName) {
  const auto expect_throw = [](auto&& call, const std::string& text, bool domain) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected one saying: " << text;
    } catch (const std::domain_error& e) {
      EXPECT_TRUE(domain) << e.what();
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    } catch (const std::invalid_argument& e) {
      EXPECT_FALSE(domain) << e.what();
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_throw([] { oft::Householder<double>(8, 0); }, "householder reflections r=0 must be >= 1", false);
  expect_throw([] { oft::Householder<double>(4, 5, true); },
               "householder reflections r=5 exceed features d=4", false);
  oft::Householder<double> hra(8, 2), hra_gs(8, 2, true);
  Matrix wrong(8, 3);
  expect_throw([&] { hra.set_vectors(oft::view(wrong)); }, "hra_u has shape 8x3, expected 8x2", false);
  Matrix u = random_matrix(8, 2, 41);
  u.col(1).setZero();
  expect_throw([&] { hra.set_vectors(oft::view(u)); }, "hra_u column 1 is zero", true);
  Matrix dependent = Matrix::Zero(8, 2);  // u_1 = 3 u_0 = 3 e_0: the residual is exactly 0
  dependent(0, 0) = 1.0;
  dependent(0, 1) = 3.0;
  expect_throw([&] { hra_gs.set_vectors(oft::view(dependent)); }, "hra_u column 1 lies in the span",
               true);
  u(2, 0) = std::numeric_limits<double>::infinity();
  expect_throw([&] { hra.set_vectors(oft::view(u)); }, "hra_u has a non-finite entry inf at (2, 0)", true);
  EXPECT_EQ(hra.dense(), Matrix::Identity(8, 8));  // unchanged by the refusals
  Matrix x(3, 7), y(3, 8);
  expect_throw([&] { hra.apply(oft::view(x), oft::view(y)); }, "X has 7 columns, expected d=8", false);
}

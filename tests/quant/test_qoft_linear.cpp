// QOFT layer over quantized frozen bases (quant/qoft_linear.hpp, fused_gemm.hpp, frozen_base.hpp):
//  - every base dequantizes any rectangle exactly as the whole-tensor dequantizers (bit for bit:
//    the AVX-512/AVX2 lookup against bnb4.hpp's scalar reference, at odd offsets and widths);
//  - the fused products equal dense products over the dequantized W within a rigorous bound
//    (Higham eq. 3.5: both sides are the same length-k dot products, so they differ by at most
//    2 gamma_k |A| |B|, k = d forward and n_out backward);
//  - QoftLinear equals OftLinear over the dequantized weight (forward, dX, dtheta), in double,
//    within the same kind of bound, for panel tails (n_out, d not multiples of 128), N = 0;
//  - dX and dtheta of QoftLinear against central finite differences (double), NF4 and int8;
//  - in-place dX = X, and the refusals of inconsistent bases and shapes.
#include <gtest/gtest.h>

#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/finite_difference.hpp>
#include <oft/linear.hpp>
#include <oft/quant/qoft_linear.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft::quant::Bnb4Base;
using oft::quant::Bnb4Type;
using oft::quant::DenseFloatBase;
using oft::quant::Int8Base;
using oft_test::Rng;
using oft_test::RowMat;

std::vector<float> random_weight(Index rows, Index cols, Rng& rng, float scale = 0.05f) {
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = scale * static_cast<float>(rng.uniform());
  return w;
}

Bnb4Base make_bnb4(const std::vector<float>& w, Index rows, Index cols, Bnb4Type type, Index blocksize) {
  return Bnb4Base(oft::quant::quantize_bnb4(w.data(), rows * cols, blocksize, type), rows, cols);
}

Int8Base make_int8(const std::vector<float>& w, Index rows, Index cols) {
  return Int8Base(oft::quant::quantize_int8(w.data(), rows, cols));
}

std::vector<std::uint32_t> bits(const float* v, std::size_t n) {
  std::vector<std::uint32_t> out(n);
  std::memcpy(out.data(), v, n * sizeof(float));
  return out;
}

TEST(FrozenBase, RectanglesEqualTheWholeTensorDequantizersBitForBit) {
  Rng rng(1);
  // 37 x 91: rows cross 64-value blocks at every offset parity; 3367 values (odd count).
  const Index rows = 37, cols = 91;
  const std::vector<float> w = random_weight(rows, cols, rng, 1.0f);
  for (Bnb4Type type : {Bnb4Type::NF4, Bnb4Type::FP4})
    for (Index blocksize : {32, 64, 128, 4096}) {
      const Bnb4Base base = make_bnb4(w, rows, cols, type, blocksize);
      std::vector<float> whole(w.size());
      oft::quant::dequantize_bnb4(base.tensor(), whole.data());
      for (const auto& rect : std::vector<std::array<Index, 4>>{
               {0, rows, 0, cols}, {3, 5, 1, 90}, {36, 1, 17, 33}, {0, 37, 63, 1}, {10, 7, 0, 16}}) {
        const Index r0 = rect[0], nr = rect[1], c0 = rect[2], nc = rect[3];
        std::vector<float> out(static_cast<std::size_t>(nr * (nc + 3)), -7.0f);
        base.dequantize(r0, nr, c0, nc, out.data(), nc + 3);  // ld > ncols: padding untouched
        for (Index i = 0; i < nr; ++i) {
          SCOPED_TRACE(std::string(oft::quant::name(type)) + " bs" + std::to_string(blocksize) +
                       " row " + std::to_string(r0 + i) + " cols " + std::to_string(c0) + "+" +
                       std::to_string(nc));
          EXPECT_EQ(bits(out.data() + i * (nc + 3), static_cast<std::size_t>(nc)),
                    bits(whole.data() + (r0 + i) * cols + c0, static_cast<std::size_t>(nc)));
          for (Index j = nc; j < nc + 3; ++j) EXPECT_EQ(out[static_cast<std::size_t>(i * (nc + 3) + j)], -7.0f);
        }
      }
    }
  const Int8Base int8 = make_int8(w, rows, cols);
  const std::vector<float> whole = oft::quant::dequantize_int8(int8.tensor());
  std::vector<float> out(5 * 40);
  int8.dequantize(30, 5, 51, 40, out.data(), 40);
  for (Index i = 0; i < 5; ++i)
    EXPECT_EQ(bits(out.data() + i * 40, 40), bits(whole.data() + (30 + i) * cols + 51, 40));
}

TEST(FrozenBase, BytesAreTheQuantizedStorage) {
  Rng rng(2);
  const Index rows = 64, cols = 256;
  const std::vector<float> w = random_weight(rows, cols, rng);
  EXPECT_EQ(make_bnb4(w, rows, cols, Bnb4Type::NF4, 64).bytes(), std::size_t(rows * cols / 2 + 4 * rows * cols / 64));
  EXPECT_EQ(make_int8(w, rows, cols).bytes(), std::size_t(rows * cols + 4 * rows));
  EXPECT_EQ(DenseFloatBase(w.data(), rows, cols).bytes(), std::size_t(4 * rows * cols));
}

/// |A| |B| (elementwise absolute values), for the dot-product bounds.
RowMat<double> abs_product(const RowMat<double>& a, const RowMat<double>& b) {
  return a.cwiseAbs() * b.cwiseAbs();
}

template <class Base>
void check_fused_products(const Base& base, Index n, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where + " N=" + std::to_string(n));
  const Index n_out = base.rows(), d = base.cols();
  const RowMat<double> w = oft_test::RowMat<double>::Map(
      oft::quant::dequantize_all<double>(base).data(), n_out, d);
  const RowMat<double> y = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
  std::vector<double> panel(static_cast<std::size_t>(oft::quant::fused_panel_size(base)));

  RowMat<double> z(n, n_out), dy(n, d);
  oft::quant::dequant_gemm_nt(base, oft::view(y), oft::view(z), panel.data());
  oft::quant::dequant_gemm_nn(base, oft::view(dz), oft::view(dy), panel.data());
  if (n == 0) return;
  const RowMat<double> z_bound = 2.0 * oft_test::gamma<double>(d) * abs_product(y, w.transpose());
  const RowMat<double> dy_bound = 2.0 * oft_test::gamma<double>(n_out) * abs_product(dz, w);
  EXPECT_TRUE(((z - y * w.transpose()).cwiseAbs().array() <= z_bound.array()).all());
  EXPECT_TRUE(((dy - dz * w).cwiseAbs().array() <= dy_bound.array()).all());
  // And not trivially: the products are nonzero.
  EXPECT_GT(z.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(dy.cwiseAbs().maxCoeff(), 0.0);
}

TEST(FusedGemm, EqualsTheDenseProductsOverTheDequantizedWeight) {
  Rng rng(3);
  // Panels are kFusedPanelWidth = 512 wide: n_out = 520 and d = 1100 leave tails in both
  // products (512 + 8 rows; 2 x 512 + 76 columns).
  static_assert(oft::quant::kFusedPanelWidth == 512, "update the tail shapes below");
  for (const auto& shape : std::vector<std::pair<Index, Index>>{{520, 1100}, {7, 5}, {512, 128}}) {
    const Index n_out = shape.first, d = shape.second;
    const std::vector<float> w = random_weight(n_out, d, rng);
    const std::string s = std::to_string(n_out) + "x" + std::to_string(d);
    for (Index n : {Index(0), Index(1), Index(9)}) {
      check_fused_products(DenseFloatBase(w.data(), n_out, d), n, rng, "f32 " + s);
      check_fused_products(make_bnb4(w, n_out, d, Bnb4Type::NF4, 64), n, rng, "nf4 " + s);
      check_fused_products(make_bnb4(w, n_out, d, Bnb4Type::FP4, 32), n, rng, "fp4 " + s);
      check_fused_products(make_int8(w, n_out, d), n, rng, "int8 " + s);
    }
  }
}

TEST(FusedGemm, FloatEqualsDoubleWithinTheFloatBound) {
  Rng rng(4);
  const Index n_out = 200, d = 160, n = 33;
  const std::vector<float> w = random_weight(n_out, d, rng);
  const Bnb4Base base = make_bnb4(w, n_out, d, Bnb4Type::NF4, 64);
  const RowMat<double> wd = RowMat<double>::Map(oft::quant::dequantize_all<double>(base).data(), n_out, d);
  const RowMat<float> y = oft_test::random_matrix<float>(n, d, rng);
  RowMat<float> z(n, n_out);
  std::vector<float> panel(static_cast<std::size_t>(oft::quant::fused_panel_size(base)));
  oft::quant::dequant_gemm_nt(base, oft::view(y), oft::view(z), panel.data());
  const RowMat<double> yd = y.cast<double>();
  const RowMat<double> bound = oft_test::gamma<float>(d) * abs_product(yd, wd.transpose());
  EXPECT_TRUE(((z.cast<double>() - yd * wd.transpose()).cwiseAbs().array() <= bound.array()).all());
}

template <class Policy, class Base>
void check_layer_equals_oft_linear(const Base& base, const Policy& policy, Index b, bool shared, Index n,
                                   Rng& rng, const std::string& where) {
  SCOPED_TRACE(where + " b=" + std::to_string(b) + (shared ? " shared" : "") + " N=" + std::to_string(n));
  const Index n_out = base.rows(), d = base.cols();
  const std::vector<double> bias = [&] {
    std::vector<double> v(static_cast<std::size_t>(n_out));
    for (double& x : v) x = rng.uniform();
    return v;
  }();
  oft::quant::QoftLinear<double, Policy, Base> qoft(base, bias.data(), b, shared, policy);
  const RowMat<double> w = qoft.dequantized();
  oft::OftLinear<double, Policy> dense(oft::view(w), bias.data(), b, shared, policy);
  const auto theta = oft_test::random_generators_with_rho<double>(shared ? 1 : d / b, b, 0.4, rng);
  qoft.set_generators(theta.view());
  dense.set_generators(theta.view());

  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
  RowMat<double> z_q(n, n_out), z_d(n, n_out), dx_q(n, d), dx_d(n, d);
  oft::Generators<double> dth_q(theta.count(), b), dth_d(theta.count(), b);
  oft::Workspace<double> ws;
  qoft.forward(oft::view(x), oft::view(z_q), ws);
  dense.forward(oft::view(x), oft::view(z_d), ws);
  qoft.backward(oft::view(x), oft::view(dz), oft::view(dx_q), dth_q.view(), ws);
  dense.backward(oft::view(x), oft::view(dz), oft::view(dx_d), dth_d.view(), ws);
  if (n == 0) return;
  // Both layers compute Y = X R identically and then the same length-d (forward) or
  // length-n_out (backward) dot products in other orders; |R| entries <= 1 + (a Neumann R's
  // defect), so 4 gamma bounds the difference with room for the rotation's own rounding.
  const double scale_z = (x.cwiseAbs() * w.transpose().cwiseAbs()).maxCoeff() * 2.0 + 1.0;
  EXPECT_LE((z_q - z_d).cwiseAbs().maxCoeff(), 4.0 * oft_test::gamma<double>(d + b) * scale_z);
  const double scale_dx = (dz.cwiseAbs() * w.cwiseAbs()).maxCoeff() * 2.0;
  EXPECT_LE((dx_q - dx_d).cwiseAbs().maxCoeff(), 4.0 * oft_test::gamma<double>(n_out + b) * scale_dx);
  // dtheta is linear in the block gradients X_i^T dY_i, whose entries both layers get within
  // gamma_{N + n_out} of |X_i|^T |dZ| |W_i|; the generator VJP then sums b-long rows with factors
  // of size K <= 2 at rho = 0.4 (test_support.hpp), so c = 4 b covers it.
  EXPECT_GT(dth_d.values().cwiseAbs().maxCoeff(), 0.0);
  const double scale_g = (x.cwiseAbs().transpose() * (dz.cwiseAbs() * w.cwiseAbs())).maxCoeff();
  EXPECT_LE((dth_q.values() - dth_d.values()).cwiseAbs().maxCoeff(),
            4.0 * b * oft_test::gamma<double>(n + n_out + b) * scale_g);
}

TEST(QoftLinear, EqualsOftLinearOverTheDequantizedWeight) {
  Rng rng(5);
  const Index n_out = 515, d = 528;  // panel tails (512 + 3 rows, 512 + 16 columns); 528 = 66 x 8 = 33 x 16
  const std::vector<float> w = random_weight(n_out, d, rng);
  for (Index n : {Index(0), Index(1), Index(40)})
    for (bool shared : {false, true}) {
      check_layer_equals_oft_linear(DenseFloatBase(w.data(), n_out, d), oft::CayleyNeumann{3}, 8, shared, n, rng, "f32");
      check_layer_equals_oft_linear(make_bnb4(w, n_out, d, Bnb4Type::NF4, 64), oft::CayleyNeumann{3}, 16,
                                    shared, n, rng, "nf4");
      check_layer_equals_oft_linear(make_bnb4(w, n_out, d, Bnb4Type::FP4, 128), oft::ExactCayley{}, 8, shared,
                                    n, rng, "fp4");
      check_layer_equals_oft_linear(make_int8(w, n_out, d), oft::ExactCayley{}, 16, shared, n, rng, "int8");
    }
}

template <class Base>
void gradcheck(const Base& base, Index b, Index n, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where);
  const Index n_out = base.rows(), d = base.cols();
  oft::quant::QoftLinear<double, oft::CayleyNeumann, Base> layer(base, nullptr, b, false, oft::CayleyNeumann{3});
  oft::Generators<double> theta = oft_test::random_generators_with_rho<double>(d / b, b, 0.4, rng);
  RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> g = oft_test::random_matrix<double>(n, n_out, rng);  // L = <Z, G>
  oft::Workspace<double> ws;
  RowMat<double> z(n, n_out);
  const auto loss = [&] {
    layer.set_generators(theta.view());
    layer.forward(oft::view(x), oft::view(z), ws);
    return (z.array() * g.array()).sum();
  };
  const double loss_abs = std::abs(loss()) + 1.0;
  RowMat<double> dx(n, d);
  oft::Generators<double> dtheta(d / b, b);
  layer.backward(oft::view(x), oft::view(g), oft::view(dx), dtheta.view(), ws);
  const double h = 1e-6;
  const auto fd_theta = oft::numerical_gradient(theta.values().data(), theta.values().size(), loss, h);
  const double scale = dtheta.values().cwiseAbs().maxCoeff();
  ASSERT_GT(scale, 0.0);
  for (Index j = 0; j < theta.values().size(); ++j)
    EXPECT_NEAR(dtheta.values().data()[j], fd_theta[static_cast<std::size_t>(j)],
                1e-6 * scale + 4.0 * oft_test::eps<double>() * loss_abs / h)
        << "dtheta " << j;
  const auto fd_x = oft::numerical_gradient(x.data(), n * d, loss, h);
  const double scale_x = dx.cwiseAbs().maxCoeff();
  for (Index j = 0; j < n * d; ++j)
    EXPECT_NEAR(dx.data()[j], fd_x[static_cast<std::size_t>(j)],
                1e-6 * scale_x + 4.0 * oft_test::eps<double>() * loss_abs / h)
        << "dX " << j;
}

TEST(QoftLinear, BackwardMatchesFiniteDifferences) {
  Rng rng(6);
  const Index n_out = 12, d = 16;
  const std::vector<float> w = random_weight(n_out, d, rng, 1.0f);
  gradcheck(make_bnb4(w, n_out, d, Bnb4Type::NF4, 64), 4, 3, rng, "nf4");
  gradcheck(make_int8(w, n_out, d), 8, 2, rng, "int8");
}

TEST(QoftLinear, InPlaceDxEqualsOutOfPlace) {
  Rng rng(7);
  const Index n_out = 40, d = 64, n = 9, b = 16;
  const std::vector<float> w = random_weight(n_out, d, rng);
  oft::quant::QoftLinear<float, oft::CayleyNeumann, Bnb4Base> layer(make_bnb4(w, n_out, d, Bnb4Type::NF4, 64),
                                                                    nullptr, b, false, oft::CayleyNeumann{3});
  layer.set_generators(oft_test::random_generators_with_rho<float>(d / b, b, 0.4, rng).view());
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  const RowMat<float> dz = oft_test::random_matrix<float>(n, n_out, rng);
  RowMat<float> dx(n, d), in_place = x;
  oft::Workspace<float> ws;
  layer.backward(oft::view(x), oft::view(dz), oft::view(dx), {}, ws);
  layer.backward(oft::view(in_place), oft::view(dz), oft::view(in_place), {}, ws);
  EXPECT_EQ(bits(dx.data(), static_cast<std::size_t>(n * d)), bits(in_place.data(), static_cast<std::size_t>(n * d)));
}

TEST(QoftLinear, BadInputIsRefusedWithTheShapes) {
  Rng rng(8);
  const std::vector<float> w = random_weight(8, 32, rng);
  auto t = oft::quant::quantize_bnb4(w.data(), 256, 64, Bnb4Type::NF4);
  try {
    (void)Bnb4Base(t, 8, 30);
    ADD_FAILURE() << "a 256-value tensor was accepted as 8x30";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("holds 256 values, a 8x30 weight needs 240"), std::string::npos) << e.what();
  }
  auto short_absmax = t;
  short_absmax.absmax.pop_back();
  EXPECT_THROW((void)Bnb4Base(short_absmax, 8, 32), std::invalid_argument);
  auto truncated = t;
  truncated.packed.resize(100);
  EXPECT_THROW((void)Bnb4Base(truncated, 8, 32), std::invalid_argument);
  auto odd_block = t;
  odd_block.blocksize = 48;
  EXPECT_THROW((void)Bnb4Base(odd_block, 8, 32), std::invalid_argument);

  oft::quant::QoftLinear<float, oft::CayleyNeumann, Bnb4Base> layer(Bnb4Base(t, 8, 32), nullptr, 8);
  EXPECT_THROW((oft::quant::QoftLinear<float, oft::CayleyNeumann, Bnb4Base>(Bnb4Base(t, 8, 32), nullptr, 5)),
               std::invalid_argument);
  oft::Workspace<float> ws;
  RowMat<float> x(3, 32), z(3, 7), x_bad(3, 31), dz(3, 8), dx(3, 32);
  x.setZero();
  try {
    layer.forward(oft::view(x), oft::view(z), ws);
    ADD_FAILURE() << "a 3x7 Z was accepted for 8 outputs";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("Z has shape 3x7, expected 3x8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(layer.forward(oft::view(x_bad), oft::view(dz), ws), std::invalid_argument);
  EXPECT_THROW(layer.backward(oft::view(x), oft::view(z), oft::view(dx), {}, ws), std::invalid_argument);
}

}  // namespace

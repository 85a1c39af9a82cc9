// The QLoRA baseline (quant/qlora_linear.hpp) over quantized bases: forward and backward against
// the dense formulas over the dequantized weight (double, within 4 gamma bounds of the longest
// dot product), dX / dA / dB against central finite differences (double), in-place dX = X, and
// the refusals.
#include <gtest/gtest.h>

#include <oft/finite_difference.hpp>
#include <oft/quant/qlora_linear.hpp>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft::quant::Bnb4Base;
using oft::quant::Bnb4Type;
using oft::quant::Int8Base;
using oft_test::Rng;
using oft_test::RowMat;

std::vector<float> random_weight(Index rows, Index cols, Rng& rng) {
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = static_cast<float>(rng.uniform());
  return w;
}

template <class Base>
void check_against_dense(const Base& base, Index rank, Index n, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where + " N=" + std::to_string(n));
  const Index n_out = base.rows(), d = base.cols();
  std::vector<double> bias(static_cast<std::size_t>(n_out));
  for (double& v : bias) v = rng.uniform();
  oft::quant::QloraLinear<double, Base> layer(base, bias.data(), rank, 32.0);
  layer.lora_a() = oft_test::random_matrix<double>(rank, d, rng);
  layer.lora_b() = oft_test::random_matrix<double>(n_out, rank, rng);
  const RowMat<double> w = RowMat<double>::Map(oft::quant::dequantize_all<double>(base).data(), n_out, d);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
  const double s = 32.0 / static_cast<double>(rank);
  EXPECT_EQ(layer.scaling(), s);

  RowMat<double> z(n, n_out), dx(n, d), da, db;
  oft::Workspace<double> ws;
  layer.forward(oft::view(x), oft::view(z), ws);
  layer.backward(oft::view(x), oft::view(dz), oft::view(dx), da, db, ws);
  const RowMat<double>& a = layer.lora_a();
  const RowMat<double>& b = layer.lora_b();
  RowMat<double> z_ref = x * w.transpose() + s * (x * a.transpose()) * b.transpose();
  z_ref.rowwise() += Eigen::Map<const Eigen::RowVectorXd>(bias.data(), n_out);
  const RowMat<double> dx_ref = dz * w + s * (dz * b) * a;
  const RowMat<double> da_ref = s * (dz * b).transpose() * x;
  const RowMat<double> db_ref = s * dz.transpose() * (x * a.transpose());
  // |terms| bounds of each product chain; 4 gamma of the longest chain of sums.
  const RowMat<double> z_scale = x.cwiseAbs() * w.cwiseAbs().transpose() +
                                 s * (x.cwiseAbs() * a.cwiseAbs().transpose()) * b.cwiseAbs().transpose();
  const RowMat<double> dx_scale = dz.cwiseAbs() * w.cwiseAbs() + s * (dz.cwiseAbs() * b.cwiseAbs()) * a.cwiseAbs();
  const double g = 4.0 * oft_test::gamma<double>(d + n_out + n + rank + 1);
  EXPECT_TRUE(((z - z_ref).cwiseAbs().array() <= g * (z_scale.array() + 1.0)).all());
  EXPECT_TRUE(((dx - dx_ref).cwiseAbs().array() <= g * dx_scale.array()).all());
  EXPECT_TRUE(((da - da_ref).cwiseAbs().array() <=
               g * (s * (dz.cwiseAbs() * b.cwiseAbs()).transpose() * x.cwiseAbs()).array()).all());
  EXPECT_TRUE(((db - db_ref).cwiseAbs().array() <=
               g * (s * dz.cwiseAbs().transpose() * (x.cwiseAbs() * a.cwiseAbs().transpose())).array()).all());
  EXPECT_GT(da.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(db.cwiseAbs().maxCoeff(), 0.0);
}

TEST(QloraLinear, EqualsTheDenseFormulasOverTheDequantizedWeight) {
  Rng rng(11);
  const Index n_out = 520, d = 600;  // panel tails (panels are 512 wide)
  const std::vector<float> w = random_weight(n_out, d, rng);
  for (Index n : {Index(1), Index(17)}) {
    check_against_dense(Bnb4Base(oft::quant::quantize_bnb4(w.data(), n_out * d, 64, Bnb4Type::NF4), n_out, d),
                        16, n, rng, "nf4");
    check_against_dense(Int8Base(oft::quant::quantize_int8(w.data(), n_out, d)), 4, n, rng, "int8");
  }
}

TEST(QloraLinear, BackwardMatchesFiniteDifferences) {
  Rng rng(12);
  const Index n_out = 10, d = 12, n = 3, rank = 2;
  const std::vector<float> w = random_weight(n_out, d, rng);
  using Layer = oft::quant::QloraLinear<double, Bnb4Base>;
  Layer layer(Bnb4Base(oft::quant::quantize_bnb4(w.data(), n_out * d, 32, Bnb4Type::NF4), n_out, d), nullptr,
              rank, 16.0);
  layer.lora_a() = oft_test::random_matrix<double>(rank, d, rng);
  layer.lora_b() = oft_test::random_matrix<double>(n_out, rank, rng);
  RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> g = oft_test::random_matrix<double>(n, n_out, rng);
  RowMat<double> z(n, n_out), dx(n, d), da, db;
  oft::Workspace<double> ws;
  const auto loss = [&] {
    layer.forward(oft::view(x), oft::view(z), ws);
    return (z.array() * g.array()).sum();
  };
  const double loss_abs = std::abs(loss()) + 1.0;
  layer.backward(oft::view(x), oft::view(g), oft::view(dx), da, db, ws);
  const double h = 1e-6, floor = 4.0 * oft_test::eps<double>() * loss_abs / h;
  const auto check = [&](double* values, Index count, const double* analytic, const char* name) {
    const auto fd = oft::numerical_gradient(values, count, loss, h);
    double scale = 0.0;
    for (Index j = 0; j < count; ++j) scale = std::max(scale, std::abs(analytic[j]));
    ASSERT_GT(scale, 0.0) << name;
    for (Index j = 0; j < count; ++j)
      EXPECT_NEAR(analytic[j], fd[static_cast<std::size_t>(j)], 1e-6 * scale + floor) << name << " " << j;
  };
  check(x.data(), n * d, dx.data(), "dX");
  check(layer.lora_a().data(), rank * d, da.data(), "dA");
  check(layer.lora_b().data(), n_out * rank, db.data(), "dB");
}

TEST(QloraLinear, InPlaceDxAndRefusals) {
  Rng rng(13);
  const Index n_out = 20, d = 64, n = 5;
  const std::vector<float> w = random_weight(n_out, d, rng);
  oft::quant::QloraLinear<float, Int8Base> layer(Int8Base(oft::quant::quantize_int8(w.data(), n_out, d)),
                                                 nullptr, 8, 16.0);
  layer.lora_a() = oft_test::random_matrix<float>(8, d, rng);
  layer.lora_b() = oft_test::random_matrix<float>(n_out, 8, rng);
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  const RowMat<float> dz = oft_test::random_matrix<float>(n, n_out, rng);
  RowMat<float> dx(n, d), in_place = x, da, db, da2, db2;
  oft::Workspace<float> ws;
  layer.backward(oft::view(x), oft::view(dz), oft::view(dx), da, db, ws);
  layer.backward(oft::view(in_place), oft::view(dz), oft::view(in_place), da2, db2, ws);
  EXPECT_EQ(dx, in_place);
  EXPECT_EQ(da, da2);
  EXPECT_EQ(db, db2);

  EXPECT_THROW((oft::quant::QloraLinear<float, Int8Base>(Int8Base(oft::quant::quantize_int8(w.data(), n_out, d)),
                                                         nullptr, 0, 16.0)),
               std::invalid_argument);
  RowMat<float> z_bad(n, n_out + 1), x_bad(n, d - 1);
  try {
    layer.forward(oft::view(x), oft::view(z_bad), ws);
    ADD_FAILURE() << "a Z with 21 columns was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("Z has shape 5x21, expected 5x20"), std::string::npos) << e.what();
  }
  EXPECT_THROW(layer.backward(oft::view(x_bad), oft::view(dz), oft::view(dx), da, db, ws), std::invalid_argument);
}

}  // namespace

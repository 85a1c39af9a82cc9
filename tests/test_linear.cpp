// OFT linear layer (linear.hpp): input-centric vs weight-centric forward and backward, merge /
// unmerge, zero-theta exactness, gradient checks, optional bias.
//
// Bounds (Higham eq. 3.5, u = eps/2; see test_support.hpp):
//  - Z = (X R) W0^T + bias and Z = X (W0 R^T)^T + bias are both within
//    gamma_{b + d + 1} (|X| |R| |W0|^T + |bias|) of the exact value (a length-b product, a
//    length-d product and one addition), so the paths differ by at most twice that.
//  - dX = (dZ W0) R^T vs dZ (W0 R^T): 2 gamma_{n_out + b} |dZ| |W0| |R|^T.
//  - G_i = X_i^T (dZ W0_i) vs (dZ^T X_i)^T W0_i: both within gamma_{N + n_out} of
//    |X_i|^T |dZ| |W0_i|, then the VJP (K, see test_support.hpp) and packing; per generator
//    ||d dtheta_g|| <= 4 eps (n_g + n_out + b) K ||A_g||_F with A_g = sum_i |X_i|^T |dZ| |W0_i|.

#include <gtest/gtest.h>

#include <cmath>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/finite_difference.hpp>
#include <oft/linear.hpp>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::Mat;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

constexpr Index kOutputs = 24;  // n_out
constexpr Index kBlocks = 4;    // r

double derivative_scale(const oft::ExactCayley&, double rho) {
  return oft_test::cayley_derivative_scale(rho);
}
double derivative_scale(const oft::CayleyNeumann& p, double rho) {
  return oft_test::neumann_derivative_scale(rho, p.terms);
}

template <class F>
void for_each_policy(F&& f) {
  f(oft::ExactCayley{});
  f(oft::CayleyNeumann{3});
}

template <class Scalar, class Policy>
struct Layer {
  RowMat<Scalar> weight;
  std::vector<Scalar> bias;
  oft::Generators<Scalar> theta;
  oft::OftLinear<Scalar, Policy> layer;

  Layer(Index b, bool shared, bool with_bias, double rho, const Policy& policy, Rng& rng)
      : weight(oft_test::random_matrix<Scalar>(kOutputs, kBlocks * b, rng)),
        bias(with_bias ? random_bias(rng) : std::vector<Scalar>()),
        theta(oft_test::random_generators_with_rho<Scalar>(shared ? 1 : kBlocks, b, rho, rng)),
        layer(oft::view(std::as_const(weight)), with_bias ? bias.data() : nullptr, b, shared,
              policy) {
    layer.set_generators(theta);
  }
  static std::vector<Scalar> random_bias(Rng& rng) {
    std::vector<Scalar> out(static_cast<size_t>(kOutputs));
    for (Scalar& v : out) v = static_cast<Scalar>(rng.uniform());
    return out;
  }
  MatD abs_bias_rows(Index n) const {
    MatD out = MatD::Zero(n, kOutputs);
    for (Index o = 0; o < static_cast<Index>(bias.size()); ++o)
      out.col(o).setConstant(std::abs(double(bias[static_cast<size_t>(o)])));
    return out;
  }
};

template <class Config>
class OftLinearTyped : public ::testing::Test {};
using Configs = ::testing::Types<oft_test::Config<float, 2>, oft_test::Config<float, 8>,
                                 oft_test::Config<float, 32>, oft_test::Config<double, 2>,
                                 oft_test::Config<double, 8>, oft_test::Config<double, 32>>;
TYPED_TEST_SUITE(OftLinearTyped, Configs, oft_test::ConfigNames);

const Index kTokens[] = {1, 7, 13, 128};

// forward == forward_weight_centric == X * merged()^T + bias.
template <class Scalar>
void check_forward_paths_agree(Index b) {
  const Index d = kBlocks * b;
  Rng rng(100 + b);
  for_each_policy([&](auto policy) {
    for (bool shared : {false, true})
      for (bool with_bias : {true, false}) {
        Layer<Scalar, decltype(policy)> l(b, shared, with_bias, 0.6, policy, rng);
        const RowMat<Scalar> dense = l.layer.rotation().dense();
        const RowMat<Scalar> merged = l.layer.merged();
        oft::Workspace<Scalar> ws;
        for (Index n : kTokens) {
          const std::string where = std::string(decltype(policy)::name) +
                                    (shared ? " shared" : "") + (with_bias ? " bias" : "") +
                                    " N=" + std::to_string(n);
          const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
          RowMat<Scalar> z(n, kOutputs), zw(n, kOutputs);
          l.layer.forward(oft::view(x), oft::view(z), ws);
          l.layer.forward_weight_centric(oft::view(x), oft::view(zw));
          RowMat<Scalar> plain = x * merged.transpose();
          if (with_bias)
            for (Index t = 0; t < n; ++t)
              for (Index o = 0; o < kOutputs; ++o) plain(t, o) += l.bias[static_cast<size_t>(o)];
          const MatD magnitude =
              oft_test::abs_d(x) * oft_test::abs_d(dense) * oft_test::abs_d(l.weight).transpose() +
              l.abs_bias_rows(n);
          const MatD bound = 2.0 * oft_test::gamma<Scalar>(b + d + 1) * magnitude;
          EXPECT_TRUE(oft_test::within_bound(z, zw, bound)) << where;
          EXPECT_TRUE(oft_test::within_bound(z, plain, bound)) << where;
          EXPECT_TRUE(oft_test::within_bound(zw, plain, bound)) << where;
        }
      }
  });
}

// merged() == W0 * dense()^T, and unmerge(merged()) == W0, also for a non-orthogonal Neumann R
// (rho = 0.9, k = 1: ||R^T R - I|| = 2 rho^2 + rho^4 ~ 2.3), where only the true inverse works.
// Unmerge bound per block: c b eps cond_2(R_i) ||W0_i||_F with c = 4 (merge + LU solve).
template <class Scalar>
void check_merge_unmerge(Index b) {
  const Index d = kBlocks * b;
  Rng rng(200 + b);
  auto check = [&](auto policy, double rho, bool shared, bool expect_non_orthogonal) {
    using Policy = decltype(policy);
    Layer<Scalar, Policy> l(b, shared, true, rho, policy, rng);
    const RowMat<Scalar> dense = l.layer.rotation().dense();
    const RowMat<Scalar> merged = l.layer.merged();
    EXPECT_TRUE(oft_test::within_bound(
        merged, RowMat<Scalar>(l.weight * dense.transpose()),
        2.0 * oft_test::gamma<Scalar>(b) *
            (oft_test::abs_d(l.weight) * oft_test::abs_d(dense).transpose())));
    const RowMat<Scalar> back = l.layer.unmerge(oft::view(std::as_const(merged)));
    for (Index i = 0; i < kBlocks; ++i) {
      const MatD block = l.layer.rotation().block(i).template cast<double>();
      Eigen::JacobiSVD<MatD> svd(block);
      const double cond = svd.singularValues()(0) / svd.singularValues()(b - 1);
      const double err = (back.middleCols(i * b, b) - l.weight.middleCols(i * b, b))
                             .template cast<double>()
                             .norm();
      EXPECT_LE(err, 4.0 * b * oft_test::eps<Scalar>() * cond *
                         l.weight.middleCols(i * b, b).template cast<double>().norm())
          << Policy::name << " rho=" << rho << " block " << i;
    }
    if (expect_non_orthogonal && b > 1) {
      // The orthogonal shortcut W' R would be wrong here: the test can tell the difference.
      const RowMat<Scalar> shortcut = merged * dense;
      EXPECT_GT((shortcut - l.weight).template cast<double>().norm(),
                0.1 * l.weight.template cast<double>().norm());
    }
    (void)d;
  };
  for (bool shared : {false, true}) {
    check(oft::ExactCayley{}, 0.6, shared, false);
    check(oft::ExactCayley{}, 3.0, shared, false);
    check(oft::CayleyNeumann{1}, 0.9, shared, true);
    check(oft::CayleyNeumann{4}, 0.5, shared, false);
  }
}

// Zero theta: R = I exactly, apply copies X, and forward is bit-exact the base layer output
// computed the same way (Eigen product of the same operand types, then the bias). Sizes keep
// rows + cols + depth >= 20, i.e. Eigen's blocked GEMM / GEMV kernels, whose arithmetic does
// not depend on the operands' addresses.
template <class Scalar>
void check_zero_theta_is_base_layer(Index b) {
  const Index d = kBlocks * b;
  Rng rng(300 + b);
  for (bool with_bias : {true, false}) {
    const RowMat<Scalar> weight = oft_test::random_matrix<Scalar>(kOutputs, d, rng);
    const std::vector<Scalar> bias = Layer<Scalar, oft::ExactCayley>::random_bias(rng);
    oft::OftLinear<Scalar, oft::CayleyNeumann> layer(
        oft::view(weight), with_bias ? bias.data() : nullptr, b, false, oft::CayleyNeumann{3});
    layer.set_generators(oft::Generators<Scalar>(kBlocks, b));  // zero theta
    oft::Workspace<Scalar> ws;
    for (Index n : kTokens) {
      RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
      RowMat<Scalar> z(n, kOutputs), zw(n, kOutputs), base(n, kOutputs);
      layer.forward(oft::view(std::as_const(x)), oft::view(z), ws);
      layer.forward_weight_centric(oft::view(std::as_const(x)), oft::view(zw));
      auto base_map = oft::view(base).map();
      base_map.noalias() = oft::view(x).map() * weight.transpose();
      if (with_bias)
        base_map.rowwise() +=
            Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(bias.data(), kOutputs);
      EXPECT_TRUE(oft_test::all_equal(z, base)) << "N=" << n << " bias=" << with_bias;
      EXPECT_TRUE(oft_test::all_equal(zw, base)) << "N=" << n << " bias=" << with_bias;
      EXPECT_TRUE(oft_test::all_equal(layer.merged(), weight));
    }
  }
}

// backward (input-centric) vs backward_weight_centric, in float and double.
template <class Scalar>
void check_backward_paths_agree(Index b) {
  const Index d = kBlocks * b;
  Rng rng(400 + b);
  for_each_policy([&](auto policy) {
    for (bool shared : {false, true}) {
      Layer<Scalar, decltype(policy)> l(b, shared, true, 0.6, policy, rng);
      const RowMat<Scalar> dense = l.layer.rotation().dense();
      const auto& spec = l.layer.rotation().spec();
      oft::Workspace<Scalar> ws;
      for (Index n : kTokens) {
        const std::string where = std::string(decltype(policy)::name) + (shared ? " shared" : "") +
                                  " N=" + std::to_string(n);
        const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
        const RowMat<Scalar> dz = oft_test::random_matrix<Scalar>(n, kOutputs, rng);
        RowMat<Scalar> dx(n, d), dxw(n, d);
        oft::Generators<Scalar> dtheta(spec.generators(), b), dthetaw(spec.generators(), b);
        l.layer.backward(oft::view(x), oft::view(dz), oft::view(dx), dtheta.view(), ws);
        l.layer.backward_weight_centric(oft::view(x), oft::view(dz), oft::view(dxw),
                                        dthetaw.view());
        const MatD dz_abs = oft_test::abs_d(dz);
        const MatD w_abs = oft_test::abs_d(l.weight);
        const MatD r_abs = oft_test::abs_d(dense);
        EXPECT_TRUE(oft_test::within_bound(
            dx, dxw,
            2.0 * oft_test::gamma<Scalar>(kOutputs + b) * (dz_abs * w_abs * r_abs.transpose())))
            << where;
        for (Index g = 0; g < spec.generators(); ++g) {
          MatD a = MatD::Zero(b, b);
          for (Index i = 0; i < spec.blocks; ++i)
            if (spec.generator_of(i) == g)
              a += oft_test::abs_d(x.middleCols(i * b, b)).transpose() * dz_abs *
                   w_abs.middleCols(i * b, b);
          const Index n_g = n * (shared ? spec.blocks : 1);
          const double rho = oft_test::row_rho_bound(l.theta.row(g), spec.packed());
          const double tol = 4.0 * oft_test::eps<Scalar>() * double(n_g + kOutputs + b) *
                             derivative_scale(policy, rho) * a.norm();
          const double err =
              (dtheta.values().row(g) - dthetaw.values().row(g)).template cast<double>().norm();
          EXPECT_LE(err, tol) << where << " generator " << g;
        }
        // In place: dX may be X itself.
        RowMat<Scalar> xx = x;
        oft::Generators<Scalar> dtheta_in(spec.generators(), b);
        l.layer.backward(oft::view(std::as_const(xx)), oft::view(dz), oft::view(xx),
                         dtheta_in.view(), ws);
        EXPECT_TRUE(oft_test::within_bound(
            xx, dx,
            2.0 * oft_test::gamma<Scalar>(kOutputs + b) * (dz_abs * w_abs * r_abs.transpose())))
            << where << " dX==X";
        EXPECT_TRUE(oft_test::all_equal(dtheta_in.values(), dtheta.values())) << where;
      }
    }
  });
}

TYPED_TEST(OftLinearTyped, ForwardPathsAgree) {
  check_forward_paths_agree<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(OftLinearTyped, MergeUnmerge) {
  check_merge_unmerge<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(OftLinearTyped, ZeroThetaIsBaseLayerBitExact) {
  check_zero_theta_is_base_layer<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(OftLinearTyped, BackwardPathsAgree) {
  check_backward_paths_agree<typename TypeParam::Scalar>(TypeParam::b);
}

// backward against central differences of L = sum(dZ .* forward(X)) in double (tolerance as in
// test_backward_gradcheck.cpp: 1e-6 of the gradient's max entry plus 4 eps |L|_abs / h).
template <class Policy>
void gradcheck_layer(const Policy& policy, Index b, bool shared, bool with_bias, Index n,
                     Rng& rng) {
  const Index d = kBlocks * b;
  Layer<double, Policy> l(b, shared, with_bias, 0.3, policy, rng);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, kOutputs, rng);
  const auto& spec = l.layer.rotation().spec();
  oft::Workspace<double> ws;
  RowMat<double> dx(n, d);
  oft::Generators<double> dtheta(spec.generators(), b);
  l.layer.backward(oft::view(x), oft::view(dz), oft::view(dx), dtheta.view(), ws);

  const double h = 1e-6;
  const double loss_abs = (oft_test::abs_d(dz).array() *
                           (oft_test::abs_d(x) * oft_test::abs_d(l.layer.rotation().dense()) *
                            oft_test::abs_d(l.weight).transpose())
                               .array())
                              .sum();
  oft::Generators<double> work = l.theta;
  RowMat<double> xw = x, z(n, kOutputs);
  auto loss = [&] {
    l.layer.set_generators(work);
    l.layer.forward(oft::view(std::as_const(xw)), oft::view(z), ws);
    return (dz.array() * z.array()).sum();
  };
  const std::string where = std::string(Policy::name) + " b=" + std::to_string(b) +
                            (shared ? " shared" : "") + " N=" + std::to_string(n);

  const Index count = spec.generators() * spec.packed();
  const auto fd = oft::numerical_gradient(work.values().data(), count, loss, h);
  const double scale = dtheta.values().cwiseAbs().maxCoeff();
  ASSERT_GT(scale, 0.0);
  for (Index j = 0; j < count; ++j)
    EXPECT_NEAR(dtheta.values().data()[j], fd[static_cast<size_t>(j)],
                1e-6 * scale + 4.0 * oft_test::eps<double>() * loss_abs / h)
        << where << " dtheta " << j;

  const auto fdx = oft::numerical_gradient(xw.data(), n * d, loss, h);
  const double scale_x = dx.cwiseAbs().maxCoeff();
  for (Index j = 0; j < n * d; ++j)
    EXPECT_NEAR(dx.data()[j], fdx[static_cast<size_t>(j)],
                1e-6 * scale_x + 4.0 * oft_test::eps<double>() * loss_abs / h)
        << where << " dX " << j;
}

TEST(OftLinear, BackwardMatchesFiniteDifferences) {
  Rng rng(500);
  for (Index b : {2, 3, 8})
    for (bool shared : {false, true})
      for (Index n : {Index(1), Index(7)}) {
        gradcheck_layer(oft::ExactCayley{}, b, shared, true, n, rng);
        gradcheck_layer(oft::CayleyNeumann{3}, b, shared, false, n, rng);
      }
}

TEST(OftLinear, BiasIsOptional) {
  Rng rng(600);
  const Index b = 4, d = kBlocks * b, n = 5;
  const RowMat<double> weight = oft_test::random_matrix<double>(kOutputs, d, rng);
  const std::vector<double> bias = Layer<double, oft::ExactCayley>::random_bias(rng);
  oft::OftLinear<double, oft::ExactCayley> with(oft::view(weight), bias.data(), b);
  oft::OftLinear<double, oft::ExactCayley> without(oft::view(weight), nullptr, b);
  EXPECT_EQ(with.bias().size(), kOutputs);
  EXPECT_EQ(without.bias().size(), 0);
  EXPECT_EQ(with.features(), d);
  EXPECT_EQ(with.outputs(), kOutputs);
  const auto theta = oft_test::random_generators<double>(kBlocks, b, 0.5, rng);
  with.set_generators(theta);
  without.set_generators(theta);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  RowMat<double> z1(n, kOutputs), z0(n, kOutputs);
  oft::Workspace<double> ws;
  with.forward(oft::view(x), oft::view(z1), ws);
  without.forward(oft::view(x), oft::view(z0), ws);
  // z1 = fl(z0 + bias): one rounding of |z0 + bias|.
  for (Index t = 0; t < n; ++t)
    for (Index o = 0; o < kOutputs; ++o) {
      const double expected = z0(t, o) + bias[static_cast<size_t>(o)];
      EXPECT_NEAR(z1(t, o), expected, oft_test::eps<double>() * std::abs(expected));
    }
  // The weight and bias are copies: frozen against later changes of the caller's buffers.
  RowMat<double> caller_weight = weight;
  std::vector<double> caller_bias = bias;
  const oft::OftLinear<double, oft::ExactCayley> frozen(oft::view(std::as_const(caller_weight)),
                                                        caller_bias.data(), b);
  caller_weight.setZero();
  caller_bias.assign(caller_bias.size(), 0.0);
  EXPECT_TRUE(oft_test::all_equal(frozen.weight(), weight));
  for (Index o = 0; o < kOutputs; ++o) EXPECT_EQ(frozen.bias()(o), bias[static_cast<size_t>(o)]);
  EXPECT_GE(with.workspace_size(n), n * d + with.rotation().workspace_size());
}

}  // namespace

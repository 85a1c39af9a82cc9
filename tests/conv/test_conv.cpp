// oft's merge-exact Conv2d OFT (include/oft/conv.hpp): the unmerged forward (patches rotated,
// then the GEMM) equals the plain convolution with the merged weight W_flat R^T for inputs larger
// than the kernel, non-square kernels, stride, dilation, padding and groups (a grouped
// convolution also equals its groups as separate convolutions); gradients against central
// differences in double; a transposed R and a wrong flattening order are caught; the weight-side
// dtheta equals the unmerged one; OneTrainer's Conv2d merge is oft's with negated generators.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <oft/conv.hpp>
#include <oft/finite_difference.hpp>
#include <oft/onetrainer.hpp>
#include <oft/policies.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using oft::Index;
using oft::conv::Conv2dShape;

struct Case {
  const char* name;
  oft::conv::ConvShape shape;
  Index h, w, b;
  Index d = 1;  // depth (Conv3d); 1 for Conv2d and Conv1d
};

oft::conv::ConvShape with_groups(oft::conv::ConvShape s, Index groups) {
  s.groups = groups;
  return s;
}

// Every case has inputs larger than the kernel (several output positions whose patches overlap:
// where PEFT's variant breaks), and b dividing (C/groups)*kd*kh*kw. Conv1d cases have height 1.
std::vector<Case> cases() {
  return {
      {"3x3", {4, 6, 3, 3}, 9, 11, 4},                                              // K = 36
      {"3x1_pad1", {4, 5, 3, 1, 1, 1, 1, 1}, 8, 7, 6},                              // K = 12
      {"1x5", {3, 4, 1, 5}, 6, 10, 5},                                              // K = 15
      {"3x5_stride2_pad1", {2, 3, 3, 5, 2, 2, 1, 1}, 11, 13, 6},                    // K = 30
      {"3x3_dil2_pad2", {4, 4, 3, 3, 1, 1, 2, 2, 2, 2}, 9, 9, 4},                   // K = 36
      {"3x3_stride2_dil2", {2, 3, 3, 3, 2, 2, 0, 0, 2, 2}, 12, 10, 3},              // K = 18
      {"1x1", {8, 5, 1, 1, 2, 1}, 5, 6, 4},                                         // K = 8
      {"conv1d_k5_stride2_pad2", Conv2dShape::conv1d(3, 4, 5, 2, 2), 1, 17, 5},     // K = 15
      {"conv1d_k3_dil2", Conv2dShape::conv1d(4, 3, 3, 1, 0, 2), 1, 12, 4},          // K = 12
      {"conv3d_2x3x3_pad1", Conv2dShape::conv3d(2, 3, 2, 3, 3, 1, 1), 5, 6, 4, 4},  // K = 36
      // kd x kh x kw = 3x1x2, stride 2 (d, h, w), padding 1, 0, 1, dilation 2, 1, 2: K = 12
      {"conv3d_3x1x2_stride2_dil2", {2, 3, 1, 2, 2, 2, 0, 1, 1, 2, 3, 2, 1, 2}, 5, 6, 6, 7},
      {"3x3_groups2_pad1", with_groups({4, 6, 3, 3, 1, 1, 1, 1}, 2), 7, 8, 6},      // K = 18
      {"2x3_depthwise_pad1", with_groups({3, 6, 2, 3, 1, 1, 1, 1}, 3), 6, 7, 3},    // K = 6
      {"conv1d_k3_groups2", with_groups(Conv2dShape::conv1d(4, 2, 3, 2, 1), 2), 1, 11, 3},  // 6
      {"conv3d_2x2x2_groups2", with_groups(Conv2dShape::conv3d(4, 2, 2, 2, 2, 1, 1), 2), 4, 5,
       4, 4},  // K = 16
  };
}

template <class Scalar>
std::vector<Scalar> random_vector(Index n, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<Scalar> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<Scalar>(dist(rng));
  return v;
}

template <class Scalar>
oft::Generators<Scalar> random_theta(Index count, Index b, std::mt19937& rng, double scale) {
  oft::Generators<Scalar> theta(count, b);
  std::normal_distribution<double> dist(0.0, scale);
  for (Index g = 0; g < count; ++g)
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = static_cast<Scalar>(dist(rng));
  return theta;
}

template <class Scalar>
using Rot = oft::BlockOrthogonal<Scalar, oft::ExactCayley>;

template <class Scalar>
Rot<Scalar> make_rotation(Index k, Index b, bool shared, std::mt19937& rng) {
  Rot<Scalar> rot(oft::BlockSpec::from_features(k, b, shared));
  const oft::Generators<Scalar> theta = random_theta<Scalar>(rot.spec().generators(), b, rng, 0.4);
  rot.set_generators(theta.view());
  return rot;
}

// Both paths are a rotation of length b followed by a dot product of length K (the merged one
// the other way round), so each output differs from the exact value by at most gamma_(K+b)
// times sum_k |W|_ok (|R| |p|)_k (entrywise absolute values; gamma_n <= n eps / (1 - n eps),
// taken as 1.01 n eps here): the two paths differ by at most twice that, plus the bias's one
// rounding on either side.
template <class Scalar>
std::vector<double> rounding_bound(const std::vector<Scalar>& x, Index n, const Case& c,
                                   const oft::RowMatrix<Scalar>& w_flat, const Rot<Scalar>& rot,
                                   const std::vector<Scalar>& bias) {
  const Conv2dShape& s = c.shape;
  using Dense = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Dense p =
      oft::conv::im2col(x.data(), n, c.d, c.h, c.w, s).template cast<double>().cwiseAbs();
  const Dense r = rot.dense().template cast<double>().cwiseAbs();
  const Dense wa = w_flat.template cast<double>().cwiseAbs();
  // rows x O, group by group: output channel o reads its group's patch (columns [g K, (g+1) K)).
  const Index k = s.patch(), group_out = s.out_channels / s.groups;
  Dense m(p.rows(), s.out_channels);
  for (Index g = 0; g < s.groups; ++g)
    m.middleCols(g * group_out, group_out) =
        (p.middleCols(g * k, k) * r) * wa.middleRows(g * group_out, group_out).transpose();
  const double eps = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
  const double gamma = 1.01 * static_cast<double>(s.patch() + c.b) * eps;
  const Index hw = s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w);
  std::vector<double> bound(static_cast<size_t>(n * s.out_channels * hw));
  for (Index img = 0; img < n; ++img)
    for (Index o = 0; o < s.out_channels; ++o)
      for (Index q = 0; q < hw; ++q) {
        const double mag = m(img * hw + q, o) + std::abs(static_cast<double>(bias[size_t(o)]));
        bound[static_cast<size_t>((img * s.out_channels + o) * hw + q)] =
            2.0 * gamma * mag + 2.0 * eps * mag;
      }
  return bound;
}

template <class Scalar>
void check_merge_exact(const Case& c, bool shared) {
  SCOPED_TRACE(c.name);
  std::mt19937 rng(7);
  const Conv2dShape& s = c.shape;
  const Index n = 2, k = s.patch();
  const std::vector<Scalar> x = random_vector<Scalar>(n * s.in_channels * c.d * c.h * c.w, rng);
  const std::vector<Scalar> bias = random_vector<Scalar>(s.out_channels, rng);
  const std::vector<Scalar> wv = random_vector<Scalar>(s.out_channels * k, rng, 0.3);
  const oft::RowMatrix<Scalar> w_flat =
      Eigen::Map<const oft::RowMatrix<Scalar>>(wv.data(), s.out_channels, k);
  const Rot<Scalar> rot = make_rotation<Scalar>(k, c.b, shared, rng);
  const oft::RowMatrix<Scalar> merged = oft::conv::merge(oft::view(w_flat), rot);

  const Index out = n * s.out_channels * s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w);
  ASSERT_GT(s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w), 1);
  std::vector<Scalar> unmerged(static_cast<size_t>(out)), direct(unmerged.size());
  oft::conv::forward_unmerged(x.data(), n, c.d, c.h, c.w, s, oft::view(w_flat), bias.data(), rot,
                              unmerged.data());
  oft::conv::conv_direct(x.data(), n, c.d, c.h, c.w, s, oft::view(merged), bias.data(),
                         direct.data());
  const std::vector<double> bound = rounding_bound(x, n, c, w_flat, rot, bias);
  double worst = 0.0;
  for (size_t i = 0; i < unmerged.size(); ++i) {
    const double diff = std::abs(static_cast<double>(unmerged[i]) - static_cast<double>(direct[i]));
    EXPECT_LE(diff, bound[i]) << "output " << i;
    worst = std::max(worst, diff / bound[i]);
  }
  ::testing::Test::RecordProperty(std::string("worst_over_bound_") + c.name, std::to_string(worst));
}

TEST(ConvOft, UnmergedEqualsMergedDouble) {
  for (const Case& c : cases()) check_merge_exact<double>(c, false);
}
TEST(ConvOft, UnmergedEqualsMergedFloat) {
  for (const Case& c : cases()) check_merge_exact<float>(c, false);
}
TEST(ConvOft, UnmergedEqualsMergedSharedBlock) {
  for (const Case& c : cases()) check_merge_exact<double>(c, true);
}

// The same comparison with the two plausible mistakes, each of which must be far outside the
// rounding bound: merging with R instead of R^T, and flattening the kernel as (c, j, i) instead
// of PyTorch's (c, i, j) (visible only for a non-square kernel).
TEST(ConvOft, CatchesTransposedRotationAndWrongFlatteningOrder) {
  std::mt19937 rng(11);
  const Case c{"3x5", {2, 3, 3, 5, 1, 1, 1, 1}, 7, 9, 6};
  const Conv2dShape& s = c.shape;
  const Index n = 1, k = s.patch(),
              out = n * s.out_channels * s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w);
  const std::vector<double> x = random_vector<double>(n * s.in_channels * c.d * c.h * c.w, rng);
  const std::vector<double> bias(static_cast<size_t>(s.out_channels), 0.0);
  const std::vector<double> wv = random_vector<double>(s.out_channels * k, rng);
  const oft::RowMatrix<double> w_flat =
      Eigen::Map<const oft::RowMatrix<double>>(wv.data(), s.out_channels, k);
  const Rot<double> rot = make_rotation<double>(k, c.b, false, rng);
  std::vector<double> unmerged(static_cast<size_t>(out));
  oft::conv::forward_unmerged(x.data(), n, c.d, c.h, c.w, s, oft::view(w_flat), bias.data(), rot,
                              unmerged.data());
  auto max_diff = [&](const oft::RowMatrix<double>& merged) {
    std::vector<double> z(unmerged.size());
    oft::conv::conv_direct(x.data(), n, c.d, c.h, c.w, s, oft::view(merged), bias.data(), z.data());
    double worst = 0.0;
    for (size_t i = 0; i < z.size(); ++i) worst = std::max(worst, std::abs(z[i] - unmerged[i]));
    return worst;
  };
  const oft::RowMatrix<double> right = oft::conv::merge(oft::view(w_flat), rot);
  const oft::RowMatrix<double> transposed = w_flat * rot.dense();  // W R, not W R^T
  // (c, j, i) order: permute the columns to that order, rotate there, permute back.
  std::vector<Index> to_cji(static_cast<size_t>(k));
  for (Index ch = 0; ch < s.in_channels; ++ch)
    for (Index i = 0; i < s.kernel_h; ++i)
      for (Index j = 0; j < s.kernel_w; ++j)
        to_cji[static_cast<size_t>((ch * s.kernel_h + i) * s.kernel_w + j)] =
            (ch * s.kernel_w + j) * s.kernel_h + i;
  oft::RowMatrix<double> w_cji(s.out_channels, k), wrong_order(s.out_channels, k);
  for (Index col = 0; col < k; ++col) w_cji.col(to_cji[size_t(col)]) = w_flat.col(col);
  const oft::RowMatrix<double> rotated_cji = oft::conv::merge(oft::view(w_cji), rot);
  for (Index col = 0; col < k; ++col) wrong_order.col(col) = rotated_cji.col(to_cji[size_t(col)]);

  const double scale = w_flat.cwiseAbs().maxCoeff();
  EXPECT_LT(max_diff(right), 1e-12 * scale * static_cast<double>(k));
  EXPECT_GT(max_diff(transposed), 1e-2 * scale);
  EXPECT_GT(max_diff(wrong_order), 1e-2 * scale);
}

// dX and dtheta of L = <C, z> against central differences in double. L is linear in x, so the
// difference quotient is exact but for rounding, about eps sum|C z| / h; in theta the
// truncation is h^2 |L'''| / 6, and L''' is of the size of L' times O(1) per unit of theta
// (theta ~ 0.4, R(theta) smooth). With h = 1e-5: eps / h ~ 2e-11 and h^2 ~ 1e-10, each times a
// magnitude of the size of the gradient times a few tens (the sums over ~1000 outputs): the
// tolerance is 1e-8 (1 + |g|), relative to the finite-difference value g.
TEST(ConvOft, GradientsMatchFiniteDifferences) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(5);
    const Conv2dShape& s = c.shape;
    const Index n = 2, k = s.patch();
    const Index hw = s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w), out = n * s.out_channels * hw;
    std::vector<double> x = random_vector<double>(n * s.in_channels * c.d * c.h * c.w, rng);
    const std::vector<double> wv = random_vector<double>(s.out_channels * k, rng, 0.3);
    const oft::RowMatrix<double> w_flat =
        Eigen::Map<const oft::RowMatrix<double>>(wv.data(), s.out_channels, k);
    const std::vector<double> cot = random_vector<double>(out, rng);
    Rot<double> rot(oft::BlockSpec::from_features(k, c.b));
    oft::Generators<double> theta = random_theta<double>(rot.spec().generators(), c.b, rng, 0.4);
    rot.set_generators(theta.view());

    auto loss = [&]() {
      rot.set_generators(theta.view());
      std::vector<double> z(static_cast<size_t>(out));
      oft::conv::forward_unmerged(x.data(), n, c.d, c.h, c.w, s, oft::view(w_flat), nullptr, rot,
                                  z.data());
      double l = 0.0;
      for (size_t i = 0; i < z.size(); ++i) l += cot[i] * z[i];
      return l;
    };
    std::vector<double> dx(x.size());
    oft::Generators<double> dtheta(theta.count(), c.b);
    oft::Workspace<double> ws;
    rot.set_generators(theta.view());
    oft::conv::backward_unmerged(x.data(), cot.data(), n, c.d, c.h, c.w, s, oft::view(w_flat), rot,
                                 dx.data(), dtheta.view(), ws);
    const std::vector<double> fd_x =
        oft::numerical_gradient(x.data(), static_cast<Index>(x.size()), loss, 1e-5);
    for (size_t i = 0; i < dx.size(); ++i)
      EXPECT_NEAR(dx[i], fd_x[i], 1e-8 * (1.0 + std::abs(fd_x[i]))) << "dx " << i;
    const Index count = theta.count() * theta.packed();
    const std::vector<double> fd_t = oft::numerical_gradient(theta.row(0), count, loss, 1e-5);
    for (Index i = 0; i < count; ++i)
      EXPECT_NEAR(dtheta.row(0)[i], fd_t[size_t(i)], 1e-8 * (1.0 + std::abs(fd_t[size_t(i)])))
          << "dtheta " << i;

    // The weight side gives the same dtheta from dW' = dZ_rows^T P (what a conv weight's
    // gradient is): two sums of the same products in another order.
    rot.set_generators(theta.view());
    const oft::RowMatrix<double> p = oft::conv::im2col(x.data(), n, c.d, c.h, c.w, s);
    oft::RowMatrix<double> dz_rows(n * hw, s.out_channels);
    for (Index img = 0; img < n; ++img)
      for (Index o = 0; o < s.out_channels; ++o)
        for (Index q = 0; q < hw; ++q)
          dz_rows(img * hw + q, o) = cot[size_t((img * s.out_channels + o) * hw + q)];
    const Index group_out = s.out_channels / s.groups;
    oft::RowMatrix<double> d_merged(s.out_channels, k);
    for (Index g = 0; g < s.groups; ++g)
      d_merged.middleRows(g * group_out, group_out) =
          dz_rows.middleCols(g * group_out, group_out).transpose() * p.middleCols(g * k, k);
    oft::Generators<double> dtheta_w(theta.count(), c.b);
    oft::conv::weight_side_backward(oft::view(w_flat), oft::view(d_merged), rot, dtheta_w.view());
    for (Index i = 0; i < count; ++i)
      EXPECT_NEAR(dtheta_w.row(0)[i], dtheta.row(0)[i], 1e-11) << "weight side " << i;
  }
}

// A grouped convolution is its groups as separate convolutions (groups = 1) over their channel
// slices, output channels side by side: the grouped code paths against the ungrouped ones.
TEST(ConvOft, GroupsAreSeparateConvolutionsOverTheirChannelSlices) {
  for (const Case& c : cases()) {
    const Conv2dShape& s = c.shape;
    if (s.groups == 1) continue;
    SCOPED_TRACE(c.name);
    std::mt19937 rng(17);
    const Index n = 2, k = s.patch(), groups = s.groups;
    const Index group_in = s.in_channels / groups, group_out = s.out_channels / groups;
    const Index pixels = c.d * c.h * c.w, hw = s.out_d(c.d) * s.out_h(c.h) * s.out_w(c.w);
    const std::vector<double> x = random_vector<double>(n * s.in_channels * pixels, rng);
    const std::vector<double> bias = random_vector<double>(s.out_channels, rng);
    const std::vector<double> wv = random_vector<double>(s.out_channels * k, rng, 0.3);
    const oft::RowMatrix<double> w_flat =
        Eigen::Map<const oft::RowMatrix<double>>(wv.data(), s.out_channels, k);
    const Rot<double> rot = make_rotation<double>(k, c.b, false, rng);
    std::vector<double> grouped(static_cast<size_t>(n * s.out_channels * hw));
    oft::conv::forward_unmerged(x.data(), n, c.d, c.h, c.w, s, oft::view(w_flat), bias.data(),
                                rot, grouped.data());
    Conv2dShape one = s;
    one.groups = 1;
    one.in_channels = group_in;
    one.out_channels = group_out;
    for (Index g = 0; g < groups; ++g) {
      std::vector<double> xg(static_cast<size_t>(n * group_in * pixels));
      for (Index img = 0; img < n; ++img)
        std::copy_n(x.begin() + (img * s.in_channels + g * group_in) * pixels, group_in * pixels,
                    xg.begin() + img * group_in * pixels);
      const oft::RowMatrix<double> wg = w_flat.middleRows(g * group_out, group_out);
      std::vector<double> zg(static_cast<size_t>(n * group_out * hw)), zd(zg.size());
      oft::conv::forward_unmerged(xg.data(), n, c.d, c.h, c.w, one, oft::view(wg),
                                  bias.data() + g * group_out, rot, zg.data());
      oft::conv::conv_direct(xg.data(), n, c.d, c.h, c.w, one,
                             oft::view(oft::conv::merge(oft::view(wg), rot)),
                             bias.data() + g * group_out, zd.data());
      for (Index img = 0; img < n; ++img)
        for (Index o = 0; o < group_out; ++o)
          for (Index q = 0; q < hw; ++q) {
            const double want = zg[size_t((img * group_out + o) * hw + q)];
            const double got = grouped[size_t((img * s.out_channels + g * group_out + o) * hw + q)];
            EXPECT_NEAR(got, want, 1e-13 * (1.0 + std::abs(want))) << "group " << g;
            EXPECT_NEAR(zd[size_t((img * group_out + o) * hw + q)], want,
                        1e-12 * (1.0 + std::abs(want)));
          }
    }
  }
}

TEST(ConvOft, RefusesGroupsThatDoNotDivideTheChannels) {
  std::vector<double> x(4 * 5 * 5), z(6 * 3 * 3);
  const oft::RowMatrix<double> w = oft::RowMatrix<double>::Zero(6, 9);
  Rot<double> rot(oft::BlockSpec::from_features(9, 3));
  for (const Index groups : {Index(4), Index(0)}) {  // 4 does not divide 6; 0 is no group count
    const Conv2dShape s = with_groups({4, 6, 3, 3}, groups);
    const std::string want = "groups " + std::to_string(groups) +
                             " must be >= 1 and divide the channels 4 -> 6";
    for (int call = 0; call < 2; ++call) {
      try {
        if (call == 0) {
          (void)oft::conv::im2col(x.data(), 1, 5, 5, s);
        } else {
          oft::conv::forward_unmerged(x.data(), 1, 5, 5, s, oft::view(w), nullptr, rot, z.data());
        }
        ADD_FAILURE() << "no exception for groups " << groups;
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      }
    }
  }
}

// col2im is im2col's adjoint: <im2col(x), Y> = <x, col2im(Y)>.
TEST(ConvOft, Col2imIsTheAdjointOfIm2col) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(3);
    const Conv2dShape& s = c.shape;
    const Index n = 2;
    const std::vector<double> x = random_vector<double>(n * s.in_channels * c.d * c.h * c.w, rng);
    const oft::RowMatrix<double> p = oft::conv::im2col(x.data(), n, c.d, c.h, c.w, s);
    const std::vector<double> yv = random_vector<double>(p.rows() * p.cols(), rng);
    const oft::RowMatrix<double> y =
        Eigen::Map<const oft::RowMatrix<double>>(yv.data(), p.rows(), p.cols());
    std::vector<double> back(x.size());
    oft::conv::col2im(oft::view(y), n, c.d, c.h, c.w, s, back.data());
    double lhs = (p.array() * y.array()).sum(), rhs = 0.0, mag = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      rhs += x[i] * back[i];
      mag += std::abs(x[i] * back[i]);
    }
    EXPECT_NEAR(lhs, rhs, 4.0 * static_cast<double>(p.size()) * 1.2e-16 * mag);
  }
}

// OneTrainer's Conv2d merge at s = 1, W_flat + W_flat (R - I) = W_flat R with its Neumann R
// (5 terms), equals oft's merge W_flat R^T with the generators negated, the same flattened
// (c, i, j) input; and the mapping is its own inverse.
TEST(ConvOft, OneTrainerConvMapsByNegatedGenerators) {
  std::mt19937 rng(13);
  const Index out = 6, k = 4 * 3 * 3, b = 6;
  const std::vector<double> wv = random_vector<double>(out * k, rng);
  const oft::RowMatrix<double> w = Eigen::Map<const oft::RowMatrix<double>>(wv.data(), out, k);
  oft::Generators<double> theta = random_theta<double>(k / b, b, rng, 0.1);
  const oft::onetrainer::Flags flags{};
  const auto rot_ot = oft::onetrainer::rotations(theta.row(0), k / b, b, flags);
  const oft::RowMatrix<double> ot =
      oft::onetrainer::merge(oft::view(w), rot_ot, oft::onetrainer::Layer::Conv2d, 1.0);
  oft::conv::negate_generators(theta.view());
  oft::BlockOrthogonal<double, oft::CayleyNeumann> rot(oft::BlockSpec::from_features(k, b),
                                                       oft::CayleyNeumann{3});
  rot.set_generators(theta.view());
  const oft::RowMatrix<double> ours = oft::conv::merge(oft::view(w), rot);
  // Two evaluations of the same degree-4 polynomial and a length-b product: a few ulps.
  EXPECT_LT((ours - ot).cwiseAbs().maxCoeff(), 1e-13);
  // Without the negation the two differ at first order in theta.
  oft::conv::negate_generators(theta.view());
  rot.set_generators(theta.view());
  EXPECT_GT((oft::conv::merge(oft::view(w), rot) - ot).cwiseAbs().maxCoeff(), 1e-2);
}

TEST(ConvOft, RefusesABlockSizeThatDoesNotDivideThePatch) {
  const Conv2dShape s{3, 2, 3, 1};  // K = 9
  Rot<double> rot(oft::BlockSpec::from_features(8, 4));
  const oft::RowMatrix<double> w = oft::RowMatrix<double>::Zero(2, 9);
  std::vector<double> x(3 * 5 * 5), z(2 * 3 * 5);
  EXPECT_THROW(oft::conv::merge(oft::view(w), rot), std::invalid_argument);
  EXPECT_THROW(
      oft::conv::forward_unmerged(x.data(), 1, 5, 5, s, oft::view(w), nullptr, rot, z.data()),
      std::invalid_argument);
  const Conv2dShape too_big{3, 2, 7, 7};
  EXPECT_THROW(oft::conv::im2col(x.data(), 1, 5, 5, too_big), std::invalid_argument);
}

}  // namespace

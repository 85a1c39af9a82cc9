// oft::conv's index arithmetic against PyTorch's own convolutions (fixtures/torch_conv.safetensors,
// written by make_torch_fixtures.py with F.conv1d/2d/3d in float64): conv_direct, and the
// unmerged forward with the identity rotation (im2col's patch order, the output layout), equal
// PyTorch's outputs for a 3x5 Conv2d, a Conv1d and a 2x3x1 Conv3d with per-axis stride, padding
// and dilation.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <oft/conv.hpp>
#include <oft/io/safetensors.hpp>
#include <string>
#include <vector>

namespace {

using oft::Index;

TEST(TorchConv, DirectAndUnmergedMatchPyTorch) {
  const auto file = oft::io::SafetensorsFile::open(std::string(OFT_CONV_FIXTURES_DIR) +
                                                   "/torch_conv.safetensors");
  for (const std::string name : {"conv2d_3x5", "conv1d_k5", "conv3d_2x3x1"}) {
    SCOPED_TRACE(name);
    const std::vector<std::int64_t> g = file.tensor(name + ".geometry").copy_as<std::int64_t>();
    ASSERT_EQ(g.size(), 17u);
    const auto at = [&](size_t i) { return static_cast<Index>(g[i]); };
    const oft::conv::ConvShape s{at(0),  at(1),  at(3),  at(4), at(6), at(7), at(9),
                                 at(10), at(12), at(13), at(2), at(5), at(8), at(11)};
    const Index d = at(14), h = at(15), w = at(16), n = 2;
    const std::vector<double> x = file.tensor(name + ".x").copy_as<double>();
    const std::vector<double> wv = file.tensor(name + ".weight").copy_as<double>();
    const std::vector<double> bias = file.tensor(name + ".bias").copy_as<double>();
    const std::vector<double> expected = file.tensor(name + ".out").copy_as<double>();
    const oft::RowMatrix<double> w_flat =
        Eigen::Map<const oft::RowMatrix<double>>(wv.data(), s.out_channels, s.patch());
    ASSERT_EQ(static_cast<Index>(expected.size()),
              n * s.out_channels * s.out_d(d) * s.out_h(h) * s.out_w(w));
    std::vector<double> direct(expected.size()), unmerged(expected.size());
    oft::conv::conv_direct(x.data(), n, d, h, w, s, oft::view(w_flat), bias.data(), direct.data());
    const oft::BlockOrthogonal<double, oft::ExactCayley> identity(
        oft::BlockSpec::from_features(s.patch(), 1));
    oft::conv::forward_unmerged(x.data(), n, d, h, w, s, oft::view(w_flat), bias.data(), identity,
                                unmerged.data());
    // Each output is a bias plus K products, which PyTorch sums in another order: the two
    // differ by at most 2 K eps times the sum of |products| + |bias|, that sum being the same
    // convolution of |x| and |W| with |bias|.
    std::vector<double> ax(x.size()), ab(bias.size()), mag(expected.size());
    for (size_t i = 0; i < x.size(); ++i) ax[i] = std::abs(x[i]);
    for (size_t i = 0; i < bias.size(); ++i) ab[i] = std::abs(bias[i]);
    const oft::RowMatrix<double> aw = w_flat.cwiseAbs();
    oft::conv::conv_direct(ax.data(), n, d, h, w, s, oft::view(aw), ab.data(), mag.data());
    const double eps = std::numeric_limits<double>::epsilon();
    const double k = 2.0 * static_cast<double>(s.patch() + 1) * eps;
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_NEAR(direct[i], expected[i], k * mag[i]) << "direct " << i;
      EXPECT_NEAR(unmerged[i], expected[i], k * mag[i]) << "unmerged " << i;
    }
  }
}

}  // namespace

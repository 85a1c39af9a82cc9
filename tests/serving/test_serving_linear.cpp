// ServingLinear: each token's output equals its own adapter's rotation followed by the base
// layer, for one projection and for fused q/k/v slices that adapters target partly; two
// row-parallel shards sum to the whole; bad input is refused with the layer unchanged.
#include <oft/any_operator.hpp>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/serving_linear.hpp>

#include "../test_support.hpp"

namespace {

using oft::BlockSpec;
using oft::Index;
using oft_test::RowMat;
using oft_test::Rng;
using Op = oft::AnyBlockOrthogonal<double>;

Op make_operator(Index d, Index b, bool shared, Rng& rng) {
  const BlockSpec spec = BlockSpec::from_features(d, b, shared);
  Op op(spec, shared ? oft::AnyPolicy{oft::CayleyNeumann{4}} : oft::AnyPolicy{oft::ExactCayley{}});
  op.set_generators(oft_test::random_generators<double>(spec.generators(), b, 0.5, rng));
  return op;
}

/// Z row t = (x_t R) W_k^T + bias over slices, from the dense R of each slice's operator.
RowMat<double> reference(const RowMat<double>& x, const RowMat<double>& w, const RowMat<double>& bias,
                         const std::vector<Index>& slices,
                         const std::vector<std::vector<const Op*>>& adapters,
                         const std::vector<std::int32_t>& ids) {
  RowMat<double> z(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    Index first = 0;
    for (std::size_t k = 0; k < slices.size(); ++k) {
      RowMat<double> y = x.row(t);
      const std::int32_t id = ids[static_cast<std::size_t>(t)];
      if (id >= 0 && adapters[static_cast<std::size_t>(id)][k])
        y = y * adapters[static_cast<std::size_t>(id)][k]->dense();
      z.block(t, first, 1, slices[k]) = y * w.middleRows(first, slices[k]).transpose();
      first += slices[k];
    }
  }
  if (bias.size() > 0) z.rowwise() += bias.row(0);
  return z;
}

double max_difference(const RowMat<double>& a, const RowMat<double>& b) {
  return a.size() == 0 ? 0.0 : (a - b).cwiseAbs().maxCoeff();
}

TEST(ServingLinear, FusedSlicesEachThroughTheirOwnAdapter) {
  Rng rng(41);
  const Index d = 64;
  const std::vector<Index> slices = {48, 16, 16};  // q, k, v rows
  const RowMat<double> w = oft_test::random_matrix<double>(80, d, rng);
  const RowMat<double> bias = oft_test::random_matrix<double>(1, 80, rng);
  oft::ServingLinear<double> layer(oft::ConstMatrixView<double>(w.data(), 80, d), bias.data(),
                                   slices, 4);
  // Adapter 0 targets q and v, adapter 1 only k, adapter 2 all three with different b.
  const Op q0 = make_operator(d, 16, false, rng), v0 = make_operator(d, 8, true, rng);
  const Op k1 = make_operator(d, 32, false, rng);
  const Op q2 = make_operator(d, 4, false, rng), k2 = make_operator(d, 64, false, rng),
           v2 = make_operator(d, 16, false, rng);
  const std::vector<std::vector<const Op*>> adapters = {
      {&q0, nullptr, &v0}, {nullptr, &k1, nullptr}, {&q2, &k2, &v2}};
  for (const auto& per_slice : adapters) layer.add(per_slice);
  EXPECT_EQ(layer.adapter_bytes(1), sizeof(double) * 64 * 32);
  EXPECT_EQ(layer.adapter_bytes(0), sizeof(double) * (64 * 16 + 8 * 8));

  oft::Workspace<double> workspace;
  for (const Index n : {Index{1}, Index{9}, Index{300}}) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    for (auto& id : ids) id = static_cast<std::int32_t>(rng.index(4)) - 1;
    const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
    RowMat<double> z(n, 80);
    layer.forward(oft::ConstMatrixView<double>(x.data(), n, d), ids,
                  oft::MatrixView<double>(z.data(), n, 80), workspace);
    // Each output is a length-d dot product of a rotated row (|y_j| <= sqrt(d) |x|_inf, R
    // orthogonal) with a row of W (|w| <= 1), after a length-b one per rotated entry: Higham's
    // eq. 3.5 bounds both by gamma_{d + b} times sums of at most 8 d here, on either side.
    const double bound = oft_test::gamma<double>(d + 64) * d * 8.0;
    EXPECT_LE(max_difference(z, reference(x, w, bias, slices, adapters, ids)), bound) << "n=" << n;
  }
}

TEST(ServingLinear, TwoRowParallelShardsSumToTheWhole) {
  Rng rng(43);
  const Index d = 128, n_out = 32, n = 70;
  const RowMat<double> w = oft_test::random_matrix<double>(n_out, d, rng);
  const Op a = make_operator(d, 32, false, rng), b = make_operator(d, 16, true, rng);
  oft::ServingLinear<double> whole(oft::ConstMatrixView<double>(w.data(), n_out, d), nullptr, {}, 2);
  const RowMat<double> w_left = w.leftCols(64), w_right = w.rightCols(64);
  oft::ServingLinear<double> left(oft::ConstMatrixView<double>(w_left.data(), n_out, 64), nullptr,
                                  {}, 2, d, oft::FeatureRange{0, 64});
  oft::ServingLinear<double> right(oft::ConstMatrixView<double>(w_right.data(), n_out, 64), nullptr,
                                   {}, 2, d, oft::FeatureRange{64, 64});
  for (auto* layer : {&whole, &left, &right}) {
    layer->add(std::vector<const Op*>{&a});
    layer->add(std::vector<const Op*>{&b});
  }
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.index(3)) - 1;
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> x_left = x.leftCols(64), x_right = x.rightCols(64);
  RowMat<double> z(n, n_out), z_left(n, n_out), z_right(n, n_out);
  oft::Workspace<double> workspace;
  whole.forward(oft::ConstMatrixView<double>(x.data(), n, d), ids, oft::MatrixView<double>(z.data(), n, n_out), workspace);
  left.forward(oft::ConstMatrixView<double>(x_left.data(), n, 64), ids, oft::MatrixView<double>(z_left.data(), n, n_out), workspace);
  right.forward(oft::ConstMatrixView<double>(x_right.data(), n, 64), ids, oft::MatrixView<double>(z_right.data(), n, n_out), workspace);
  EXPECT_LE(max_difference(z_left + z_right, z), oft_test::gamma<double>(d + 32) * d * 8.0);
}

TEST(ServingLinear, BadInputLeavesTheLayerUnchanged) {
  Rng rng(47);
  const Index d = 64;
  const RowMat<double> w = oft_test::random_matrix<double>(32, d, rng);
  const oft::ConstMatrixView<double> wv(w.data(), 32, d);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { oft::ServingLinear<double>(wv, nullptr, {16, 8}, 2); },
      {"serving layer slices sum to 24 outputs, W0 has n_out=32"}));
  oft::ServingLinear<double> layer(wv, nullptr, {16, 16}, 2);
  const Op good = make_operator(d, 16, false, rng), wide = make_operator(96, 32, false, rng);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { layer.add(std::vector<const Op*>{&good}); },
      {"1 operators given, one per slice expected (2)"}));
  // The second slice's operator is refused: the first slice's bank must not have changed.
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { layer.add(std::vector<const Op*>{&good, &wide}); }, {"adapter has d=96"}));
  EXPECT_EQ(layer.bank(0).size(), 0);
  EXPECT_EQ(layer.add(std::vector<const Op*>{&good, nullptr}), 0);
  EXPECT_EQ(layer.add(std::vector<const Op*>{nullptr, &good}), 1);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { layer.add(std::vector<const Op*>{&good, &good}); }, {"serving layer is full (capacity 2)"}));
  EXPECT_EQ(layer.bank(0).size(), 2);
  EXPECT_EQ(layer.bank(1).size(), 2);
  layer.remove(0);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { layer.remove(0); },
                                                           {"adapter 0 is not loaded"}));
  const RowMat<double> x = oft_test::random_matrix<double>(3, d, rng);
  RowMat<double> z = RowMat<double>::Constant(3, 32, 5.0);
  const RowMat<double> untouched = z;
  oft::Workspace<double> workspace;
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] {
        layer.forward(oft::ConstMatrixView<double>(x.data(), 3, d), {1, 0, -1},
                      oft::MatrixView<double>(z.data(), 3, 32), workspace);
      },
      {"ids[1]=0 names no adapter"}));
  EXPECT_EQ(z, untouched);
}

}  // namespace

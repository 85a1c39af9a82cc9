// Serving PEFT OFT adapters read straight from their folders (oft::io): six adapters of one toy
// model (exact branch, Neumann T = 2 and 5, PEFT's legacy polynomial, block_share, COFT; fixtures
// of tests/peft, written by PEFT 0.21.2) in one ServingLinear over the shared base weight. Each
// token's output must be what PEFT's merged layer for that token's adapter gives (PEFT's own
// merged weight, fixtures' reference.safetensors), and the base layer's for id -1.
#include <oft/io/peft_adapter.hpp>
#include <oft/io/safetensors.hpp>
#include <oft/serving_linear.hpp>

#include <string>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft_test::RowMat;

const char* const kAdapters[] = {"exact", "neumann_t2", "neumann_t5", "legacy_t5", "block_share", "coft"};

std::string fixture(const std::string& adapter) {
  return std::string(OFT_PEFT_FIXTURES_DIR) + "/adapters/" + adapter;
}

RowMat<float> tensor(const std::string& adapter, const std::string& name) {
  const auto file = oft::io::SafetensorsFile::open(fixture(adapter) + "/reference.safetensors");
  const oft::io::TensorView view = file.tensor(name);
  const std::vector<float> values = view.copy_as<float>();
  RowMat<float> out(static_cast<Index>(view.shape.at(0)), static_cast<Index>(view.shape.at(1)));
  std::copy(values.begin(), values.end(), out.data());
  return out;
}

class PeftServing : public ::testing::TestWithParam<const char*> {};

TEST_P(PeftServing, EachTokenGetsPeftsMergedLayerOfItsAdapter) {
  const std::string module = GetParam();
  const RowMat<float> base = tensor("exact", module + ".base");  // the same base in every fixture
  const Index n_out = base.rows(), d = base.cols();
  oft::ServingLinear<float> layer(oft::ConstMatrixView<float>(base.data(), n_out, d), nullptr, {}, 8);
  std::vector<RowMat<float>> merged;
  std::vector<oft::AnyBlockOrthogonal<float>> rotations;
  for (const char* name : kAdapters) {
    const auto adapter = oft::io::PeftOftAdapter::load(fixture(name));
    rotations.push_back(adapter.rotation_for(adapter.module(module), n_out, d));
    const Index id = layer.add(std::vector<const oft::AnyBlockOrthogonal<float>*>{&rotations.back()});
    EXPECT_EQ(id, static_cast<Index>(merged.size()));
    merged.push_back(tensor(name, module + ".merged"));
  }

  oft_test::Rng rng(53);
  const Index n = 200;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.index(7)) - 1;
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  RowMat<float> z(n, n_out);
  oft::Workspace<float> workspace;
  layer.forward(oft::ConstMatrixView<float>(x.data(), n, d), ids, oft::MatrixView<float>(z.data(), n, n_out),
                workspace);

  for (Index t = 0; t < n; ++t) {
    const std::int32_t id = ids[static_cast<std::size_t>(t)];
    const RowMat<float>& weight = id < 0 ? base : merged[static_cast<std::size_t>(id)];
    const Eigen::RowVectorXd expected = x.row(t).cast<double>() * weight.cast<double>().transpose();
    // Both sides are float32 sums over at most b + d terms of |x| |R| |W0| (PEFT's merge, then
    // its product; oft's rotation, then its product): Higham's eq. 3.5 bounds each by
    // gamma_{b+d} times that sum of magnitudes, so they differ by at most twice it.
    Eigen::MatrixXd magnitude = base.cast<double>().cwiseAbs();
    if (id >= 0)
      magnitude = magnitude * rotations[static_cast<std::size_t>(id)].dense().cast<double>().cwiseAbs().transpose();
    const Eigen::RowVectorXd scale = x.row(t).cast<double>().cwiseAbs() * magnitude.transpose();
    const double gamma = oft_test::gamma<float>(2 * d);
    for (Index k = 0; k < n_out; ++k)
      ASSERT_LE(std::abs(static_cast<double>(z(t, k)) - expected(k)), 2.0 * gamma * scale(k))
          << "token " << t << " adapter " << (id < 0 ? "none" : kAdapters[id]) << " output " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Modules, PeftServing, ::testing::Values("fc1", "fc2"));

}  // namespace

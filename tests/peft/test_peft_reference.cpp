// oft against what Hugging Face PEFT's own code computed (fixtures/peft_reference.safetensors,
// written by make_reference.py with PEFT 0.18 and 0.17.1; versions in the file's metadata):
//   - peft::NeumannBranch{T} (current and legacy form) equals OFTRotationModule._cayley_batch
//     for T = 0..8, to float64 rounding;
//   - PEFT's exact branch equals ExactCayley of the negated generators;
//   - peft::coft_radius equals PEFT's float32 radius bit for bit, and peft::coft_project its
//     float32 projection (bit for bit here; the documented bound allows a few ulps in general).

#include <oft/oft.hpp>
#include <oft/io/safetensors.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using oft::Index;
using Matrix = oft::RowMatrix<double>;

const oft::io::SafetensorsFile& reference() {
  static const oft::io::SafetensorsFile file =
      oft::io::SafetensorsFile::open(std::string(OFT_PEFT_FIXTURES_DIR) + "/peft_reference.safetensors");
  return file;
}

std::vector<double> doubles(const std::string& name) {
  return reference().tensor(name).copy_as<double>();
}

/// Block g of a [g, b, b] tensor of rotations.
Matrix block(const std::vector<double>& blocks, Index g, Index b) {
  Matrix out(b, b);
  for (Index i = 0; i < b * b; ++i) out.data()[i] = blocks[static_cast<size_t>(g * b * b + i)];
  return out;
}

struct Generators {
  oft::Generators<double> theta;
  Index b = 0;
};

Generators reference_generators() {
  const oft::io::TensorView view = reference().tensor("theta");
  const Index rows = static_cast<Index>(view.shape.at(0)), m = static_cast<Index>(view.shape.at(1));
  Generators out{oft::Generators<double>(rows, oft::block_size_from_packed(m)),
                 oft::block_size_from_packed(m)};
  const std::vector<double> values = view.copy_as<double>();
  for (Index i = 0; i < rows * m; ++i) out.theta.values().data()[i] = values[static_cast<size_t>(i)];
  return out;
}

/// max |A - B| over the blocks of an operator and a [g, b, b] reference.
template <class Policy>
double worst_difference(const Policy& policy, const oft::Generators<double>& theta, Index b,
                        const std::vector<double>& expected) {
  oft::BlockOrthogonal<double, Policy> op(oft::BlockSpec::from_features(theta.count() * b, b), policy);
  op.set_generators(theta);
  double worst = 0.0;
  for (Index g = 0; g < theta.count(); ++g)
    worst = std::max(worst, (op.block(g) - block(expected, g, b)).cwiseAbs().maxCoeff());
  return worst;
}

TEST(PeftReference, FixtureMadeByPeft) {
  const auto& metadata = reference().metadata();
  ASSERT_TRUE(metadata.count("peft"));
  EXPECT_EQ(metadata.at("peft_legacy"), "0.17.1");
  EXPECT_EQ(metadata.at("peft").substr(0, 4), "0.18");
}

TEST(PeftReference, NeumannBranchEqualsPeftForEveryT) {
  const Generators g = reference_generators();
  for (int t = 0; t <= 8; ++t) {
    const double current = worst_difference(oft::peft::NeumannBranch{t}, g.theta, g.b,
                                            doubles("current_T" + std::to_string(t)));
    const double legacy =
        worst_difference(oft::peft::NeumannBranch{t, oft::peft::NeumannForm::Legacy}, g.theta,
                         g.b, doubles("legacy_T" + std::to_string(t)));
    // Entries are O(1); PEFT and oft sum the same powers in different orders.
    std::printf("T=%d: max |oft - PEFT| current form %.2e, legacy form %.2e\n", t, current, legacy);
    EXPECT_LT(current, 1e-14) << "T=" << t;
    EXPECT_LT(legacy, 1e-14) << "T=" << t;
  }
  // The two forms differ from T = 3 on (PEFT 0.18 changed the last coefficient to 1), so the
  // comparison above can tell them apart.
  const double swapped = worst_difference(oft::peft::NeumannBranch{5, oft::peft::NeumannForm::Legacy},
                                          g.theta, g.b, doubles("current_T5"));
  EXPECT_GT(swapped, 1e-4);
}

TEST(PeftReference, ExactBranchIsCayleyOfNegatedTheta) {
  Generators g = reference_generators();
  const std::vector<double> exact = doubles("exact");
  EXPECT_GT(worst_difference(oft::ExactCayley{}, g.theta, g.b, exact), 1e-3);  // R(Q) is not it
  oft::peft::flip_exact_branch(g.theta.view());
  EXPECT_LT(worst_difference(oft::ExactCayley{}, g.theta, g.b, exact), 1e-14);
}

TEST(PeftReference, CoftRadiusIsPeftsFloat32) {
  const std::vector<double> eps = doubles("coft_eps");
  const std::vector<std::int32_t> rows = reference().tensor("coft_rows").copy_as<std::int32_t>();
  const std::vector<float> radius = reference().tensor("coft_radius").copy_as<float>();
  ASSERT_EQ(eps.size(), radius.size());
  for (size_t i = 0; i < eps.size(); ++i)
    EXPECT_EQ(oft::peft::coft_radius(eps[i], rows[i]), radius[i])
        << "eps=" << eps[i] << " P=" << rows[i];
}

TEST(PeftReference, CoftProjectionIsPeftsFloat32) {
  const oft::io::TensorView view = reference().tensor("coft_theta");
  const Index rows = static_cast<Index>(view.shape.at(0)), m = static_cast<Index>(view.shape.at(1));
  std::vector<float> theta = view.copy_as<float>();
  const std::vector<float> expected = reference().tensor("coft_projected").copy_as<float>();
  const double eps = doubles("coft_projection_eps").at(0);
  const oft::GeneratorView<float> generators(theta.data(), rows, oft::block_size_from_packed(m));
  EXPECT_EQ(oft::peft::coft_project(generators, oft::peft::coft_radius(eps, rows)), 2);
  for (size_t i = 0; i < theta.size(); ++i) EXPECT_EQ(theta[i], expected[i]) << "entry " << i;
}

}  // namespace

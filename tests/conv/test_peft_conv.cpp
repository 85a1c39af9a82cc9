// PEFT's Conv2d OFT read where it is self-consistent (include/oft/io/peft_conv.hpp), against an
// adapter saved by peft 0.21.2 and what PEFT computed with it (fixtures/, written by
// measure_peft_conv.py): a 1x1 Conv2d (stride 2, padding 1) is merged as PEFT merges it and
// that weight gives PEFT's unmerged outputs; a 3x3 one is refused with the reason, although its
// merge (what PEFT's merge() writes) is oft's W_flat R^T; non-square kernels, dilation and a
// wrong layer are refused. merge_model (`oft merge`) takes the 1x1 module into a model directory
// and refuses the 3x3 one before writing anything.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <oft/conv.hpp>
#include <filesystem>
#include <oft/io/model_merge.hpp>
#include <oft/io/peft_conv.hpp>
#include <oft/io/safetensors.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using oft::Index;

const std::string kDir = OFT_CONV_FIXTURES_DIR;
constexpr double kEps = std::numeric_limits<float>::epsilon();

oft::RowMatrix<float> flat(const oft::io::SafetensorsFile& f, const std::string& key) {
  const oft::io::TensorView t = f.tensor(key);
  const std::vector<float> v = t.copy_as<float>();
  const auto rows = static_cast<Index>(t.shape.at(0));
  return Eigen::Map<const oft::RowMatrix<float>>(v.data(), rows,
                                                 static_cast<Index>(v.size()) / rows);
}

// PEFT and oft each form R (a degree-4 polynomial in Q, |Q| entries below 0.5: a few ulps per
// entry, |R| entries below 2) and then a length-b product per entry of W R^T: each entry of the
// two merges differs by at most (b + 8) eps * 2 * sum over its block of |W|.
void expect_merge_close(const oft::RowMatrix<float>& w, const oft::RowMatrix<float>& ours,
                        const oft::RowMatrix<float>& peft, Index b) {
  ASSERT_EQ(ours.rows(), peft.rows());
  ASSERT_EQ(ours.cols(), peft.cols());
  for (Index o = 0; o < w.rows(); ++o)
    for (Index c = 0; c < w.cols(); ++c) {
      const double block = w.row(o).segment(c / b * b, b).cwiseAbs().cast<double>().sum();
      const double bound = static_cast<double>(b + 8) * kEps * 2.0 * block;
      EXPECT_LE(std::abs(static_cast<double>(ours(o, c)) - peft(o, c)), bound) << o << "," << c;
    }
}

TEST(PeftConv, OneByOneMergesAsPeftAndReproducesItsUnmergedForward) {
  const auto adapter = oft::io::PeftOftAdapter::load(kDir + "/peft_conv");
  const auto expected = oft::io::SafetensorsFile::open(kDir + "/peft_conv_expected.safetensors");
  const oft::io::PeftOftModule& m = adapter.module("conv1");
  const oft::io::PeftConv2dBase base{6, 8, 1, 1};
  const oft::io::PeftConv2dVerdict v = oft::io::peft_conv2d_verdict(m, base);
  ASSERT_TRUE(v.self_consistent) << v.reason;
  const oft::RowMatrix<float> w = flat(expected, "conv1.weight");
  const oft::RowMatrix<float> merged = oft::io::merge_peft_conv2d(adapter, m, base, oft::view(w));
  expect_merge_close(w, merged, flat(expected, "conv1.merged"), m.spec.block_size);

  // PEFT's unmerged outputs (stride 2, padding 1) from the plain convolution with that weight.
  const oft::conv::Conv2dShape shape{8, 6, 1, 1, 2, 2, 1, 1};
  const std::vector<float> x = expected.tensor("conv1.x").copy_as<float>();
  const std::vector<float> bias = expected.tensor("conv1.bias").copy_as<float>();
  const std::vector<float> peft_z = expected.tensor("conv1.unmerged").copy_as<float>();
  std::vector<float> z(peft_z.size());
  oft::conv::conv_direct(x.data(), 1, 5, 7, shape, oft::view(merged), bias.data(), z.data());
  // Each output: a bias plus a length-C sum after a length-b rotation (PEFT) or of merged
  // weights (oft): within (C + b + 8) eps (2 sum |W| |x| + |bias|), |x| <= max |x|.
  double max_x = 0.0, max_w = 0.0, max_b = 0.0;
  for (float e : x) max_x = std::max(max_x, std::abs(static_cast<double>(e)));
  for (float e : bias) max_b = std::max(max_b, std::abs(static_cast<double>(e)));
  max_w = w.cwiseAbs().cast<double>().rowwise().sum().maxCoeff();
  const double bound = (8 + 4 + 8) * kEps * (2.0 * max_w * max_x + max_b);
  for (size_t i = 0; i < z.size(); ++i) EXPECT_NEAR(z[i], peft_z[i], bound) << "output " << i;
}

TEST(PeftConv, ThreeByThreeIsRefusedThoughItsMergeIsOftsDefinition) {
  const auto adapter = oft::io::PeftOftAdapter::load(kDir + "/peft_conv");
  const auto expected = oft::io::SafetensorsFile::open(kDir + "/peft_conv_expected.safetensors");
  const oft::io::PeftOftModule& m = adapter.module("conv3");
  const oft::io::PeftConv2dBase base{8, 4, 3, 3};
  const oft::io::PeftConv2dVerdict v = oft::io::peft_conv2d_verdict(m, base);
  EXPECT_FALSE(v.self_consistent);
  EXPECT_NE(v.reason.find("sums the overlapping patches"), std::string::npos) << v.reason;
  EXPECT_NE(v.reason.find("'conv3'"), std::string::npos) << v.reason;
  const oft::RowMatrix<float> w = flat(expected, "conv3.weight");
  EXPECT_THROW(oft::io::merge_peft_conv2d(adapter, m, base, oft::view(w)), std::invalid_argument);
  // What PEFT's merge() wrote is W_flat R^T on the (c, i, j) flattening: oft's convolution
  // definition (and the Linear merge over C*kh*kw features).
  expect_merge_close(w, adapter.merge(m, oft::view(w)), flat(expected, "conv3.merged"),
                     m.spec.block_size);
}

TEST(PeftConv, RefusesNonSquareKernelsDilationAndAnotherLayer) {
  const auto adapter = oft::io::PeftOftAdapter::load(kDir + "/peft_conv");
  const oft::io::PeftOftModule& m = adapter.module("conv3");  // 36 features = 4 * 3 * 3
  const auto reason = [&](const oft::io::PeftConv2dBase& base) {
    const oft::io::PeftConv2dVerdict v = oft::io::peft_conv2d_verdict(m, base);
    EXPECT_FALSE(v.self_consistent);
    return v.reason;
  };
  EXPECT_NE(reason({8, 4, 3, 1}).find("non-square"), std::string::npos);
  EXPECT_NE(reason({8, 4, 3, 5}).find("non-square"), std::string::npos);
  EXPECT_NE(reason({8, 4, 3, 3, 2, 2}).find("dilation"), std::string::npos);
  EXPECT_NE(reason({8, 5, 3, 3}).find("another layer"), std::string::npos);
  const oft::io::PeftOftModule& one = adapter.module("conv1");  // 8 features
  EXPECT_NE(oft::io::peft_conv2d_verdict(one, {6, 8, 3, 3}).reason.find("another layer"),
            std::string::npos);
  const oft::RowMatrix<float> w = oft::RowMatrix<float>::Zero(6, 9);
  EXPECT_THROW(oft::io::merge_peft_conv2d(adapter, one, {6, 8, 1, 1}, oft::view(w)),
               std::invalid_argument);
}

namespace fs = std::filesystem;

// A model directory holding the fixture's two Conv2d weights (and conv1's bias), and an adapter
// directory with the fixture's config and only `modules` of its tensors.
struct ConvModel {
  fs::path root;
  explicit ConvModel(const std::string& name)
      : root(fs::temp_directory_path() / ("oft_peft_conv_" + name)) {
    fs::remove_all(root);
    fs::create_directories(root / "base");
    const auto expected = oft::io::SafetensorsFile::open(kDir + "/peft_conv_expected.safetensors");
    oft::io::SafetensorsWriter base;
    for (const char* key : {"conv1.weight", "conv1.bias", "conv3.weight"})
      base.add(expected.tensor(key));
    base.write(root / "base" / "model.safetensors");
  }
  ~ConvModel() { fs::remove_all(root); }
  fs::path adapter(const std::string& name, const std::vector<std::string>& modules) const {
    const fs::path dir = root / name;
    fs::create_directories(dir);
    fs::copy_file(kDir + "/peft_conv/adapter_config.json", dir / "adapter_config.json");
    const auto file = oft::io::SafetensorsFile::open(kDir + "/peft_conv/adapter_model.safetensors");
    oft::io::SafetensorsWriter writer;
    for (const std::string& key : file.tensor_names())
      for (const std::string& m : modules)
        if (key.find("." + m + ".") != std::string::npos) writer.add(file.tensor(key));
    writer.write(dir / "adapter_model.safetensors");
    return dir;
  }
};

TEST(PeftConv, MergeModelTakesTheOneByOneModuleAndRefusesTheThreeByThree) {
  ConvModel model("merge");
  oft::io::MergeOptions options;
  options.base = (model.root / "base").string();

  // Both modules: the 3x3 one is refused naming it and the reason; nothing is written.
  options.adapter = kDir + "/peft_conv";
  options.out = (model.root / "both").string();
  try {
    oft::io::merge_model(options);
    FAIL() << "a 3x3 PEFT Conv2d module was merged";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'conv3'"), std::string::npos) << what;
    EXPECT_NE(what.find("conv3.weight"), std::string::npos) << what;
    EXPECT_NE(what.find("sums the overlapping patches"), std::string::npos) << what;
  }
  EXPECT_FALSE(fs::exists(options.out));

  // conv1 alone: its [6, 8, 1, 1] weight becomes the merge of merge_peft_conv2d (PEFT's merge,
  // checked against PEFT above), bit for bit; the other tensors are copied byte for byte.
  options.adapter = model.adapter("conv1_only", {"conv1"}).string();
  options.out = (model.root / "merged").string();
  const oft::io::MergeReport report = oft::io::merge_model(options);
  ASSERT_EQ(report.adapted, std::vector<std::string>{"conv1.weight"});
  const auto base = oft::io::SafetensorsFile::open(model.root / "base" / "model.safetensors");
  const auto merged = oft::io::SafetensorsFile::open(model.root / "merged" / "model.safetensors");
  const oft::io::TensorView out = merged.tensor("conv1.weight");
  EXPECT_EQ(out.shape, (std::vector<std::uint64_t>{6, 8, 1, 1}));
  const auto adapter = oft::io::PeftOftAdapter::load(options.adapter);
  const oft::RowMatrix<float> w = flat(base, "conv1.weight");
  const oft::RowMatrix<float> want =
      oft::io::merge_peft_conv2d(adapter, adapter.module("conv1"), {6, 8, 1, 1}, oft::view(w));
  EXPECT_EQ(flat(merged, "conv1.weight"), want);
  for (const char* key : {"conv1.bias", "conv3.weight"}) {
    const oft::io::TensorView a = base.tensor(key), b = merged.tensor(key);
    ASSERT_EQ(a.bytes, b.bytes) << key;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.bytes), 0) << key;
  }

  // And out again: unmerge (the true inverse of the Neumann R, whose condition number is within
  // a few percent of 1 at these |Q|) restores the base weight to twice the merge's rounding
  // bound of expect_merge_close, with a factor 2 of slack for the inverse's own rounding.
  options.base = options.out;
  options.out = (model.root / "restored").string();
  options.unmerge = true;
  oft::io::merge_model(options);
  const auto restored =
      oft::io::SafetensorsFile::open(model.root / "restored" / "model.safetensors");
  const oft::RowMatrix<float> back = flat(restored, "conv1.weight");
  const Index b = adapter.module("conv1").spec.block_size;
  for (Index o = 0; o < w.rows(); ++o)
    for (Index c = 0; c < w.cols(); ++c) {
      const double block = w.row(o).segment(c / b * b, b).cwiseAbs().cast<double>().sum();
      EXPECT_LE(std::abs(double(back(o, c)) - w(o, c)), 4.0 * (b + 8) * kEps * 2.0 * block)
          << o << "," << c;
    }
}

}  // namespace

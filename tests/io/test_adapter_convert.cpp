// oft::io::convert_adapter (io/adapter_convert.hpp: `oft convert`) on the PEFT-made fixtures: exact
// conversions keep every block of R bit for bit and need no permission; conversions that change R
// are measured, refused without --allow-change (nothing written), and written with it.
#include <gtest/gtest.h>

#include <fstream>
#include <oft/io/adapter_convert.hpp>

namespace {

namespace fs = std::filesystem;
using oft::io::Dtype;

fs::path fixture(const std::string& name) {
  return fs::path(OFT_PEFT_FIXTURES_DIR) / "adapters" / name;
}

class AdapterConvert : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("oft_adapter_convert_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(static_cast<long>(::getpid())));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  /// A model directory with the fixture's base weights (`<m>.weight`, float32).
  fs::path make_base(const std::string& name) {
    const fs::path dir = root_ / ("base_" + name);
    fs::create_directories(dir);
    const auto reference = oft::io::SafetensorsFile::open(fixture(name) / "reference.safetensors");
    oft::io::SafetensorsWriter writer;
    for (const auto& m : oft::io::PeftOftAdapter::load(fixture(name)).modules)
      writer.add(m.name + ".weight", reference.tensor(m.name + ".base"));
    writer.write(dir / "model.safetensors");
    return dir;
  }

  oft::io::ConvertOptions options(const std::string& adapter, const std::string& out) {
    oft::io::ConvertOptions o;
    o.adapter = fixture(adapter).string();
    o.out = (root_ / out).string();
    return o;
  }

  void expect_refused(const oft::io::ConvertOptions& o, const std::string& fragment) {
    try {
      oft::io::convert_adapter(o);
      ADD_FAILURE() << "accepted; expected a refusal mentioning '" << fragment << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(o.out));
    for (const auto& entry : fs::directory_iterator(root_))
      EXPECT_EQ(entry.path().filename().string().find(".oft-partial"), std::string::npos)
          << entry.path();
  }

  fs::path root_;
};

TEST_F(AdapterConvert, ExpandBlockShareKeepsTheMergeBitForBit) {
  const fs::path base = make_base("block_share");
  auto o = options("block_share", "expanded");
  o.base = base.string();
  o.expand_block_share = true;
  const auto report = oft::io::convert_adapter(o);
  EXPECT_EQ(report.max_change, 0.0);
  const auto original = oft::io::PeftOftAdapter::load(fixture("block_share"));
  const auto expanded = oft::io::PeftOftAdapter::load(o.out);
  EXPECT_FALSE(expanded.config.block_share);
  const auto reference =
      oft::io::SafetensorsFile::open(fixture("block_share") / "reference.safetensors");
  ASSERT_EQ(expanded.modules.size(), original.modules.size());
  for (std::size_t i = 0; i < original.modules.size(); ++i) {
    const auto w = reference.tensor(original.modules[i].name + ".base").to_floats();
    const auto& shape = reference.tensor(original.modules[i].name + ".base").shape;
    const oft::ConstMatrixView<float> weight(w.data(), static_cast<oft::Index>(shape[0]),
                                             static_cast<oft::Index>(shape[1]));
    EXPECT_EQ(expanded.modules[i].theta.count(),
              weight.cols() / original.modules[i].spec.block_size);
    const oft::RowMatrix<float> a = original.merge(original.modules[i], weight);
    const oft::RowMatrix<float> b = expanded.merge(expanded.modules[i], weight);
    EXPECT_TRUE((a.array() == b.array()).all()) << original.modules[i].name;
  }
}

TEST_F(AdapterConvert, ExpandBlockShareRefusals) {
  auto o = options("block_share", "out");
  o.expand_block_share = true;
  expect_refused(o, "needs --base");
  auto not_shared = options("neumann_t5", "out");
  not_shared.expand_block_share = true;
  not_shared.base = make_base("neumann_t5").string();
  expect_refused(not_shared, "does not use block_share");
  // COFT's radius depends on the number of rows: a block_share + COFT adapter is not expanded.
  const fs::path coft = root_ / "block_share_coft";
  fs::create_directories(coft);
  fs::copy_file(fixture("block_share") / "adapter_model.safetensors",
                coft / "adapter_model.safetensors");
  std::ifstream in(fixture("block_share") / "adapter_config.json");
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(in);
  config["coft"] = true;
  std::ofstream(coft / "adapter_config.json") << config.dump(2);
  auto with_coft = options("block_share", "out");
  with_coft.adapter = coft.string();
  with_coft.expand_block_share = true;
  with_coft.base = make_base("block_share").string();
  expect_refused(with_coft, "COFT");
  expect_refused(options("neumann_t5", "out"), "nothing to do");
}

TEST_F(AdapterConvert, SixteenBitGeneratorsAreMeasuredAndNeedPermission) {
  auto o = options("neumann_t5", "bf16");
  o.generators_dtype = oft::io::GeneratorsDtype::BF16;
  expect_refused(o, "--allow-change");
  o.allow_change = true;
  const auto report = oft::io::convert_adapter(o);
  EXPECT_GT(report.max_change, 0.0);
  EXPECT_LT(report.max_change, 1e-2);  // bf16 keeps 8 bits of theta: R moves by ~2^-9 |dR/dtheta|
  const auto file = oft::io::SafetensorsFile::open(fs::path(o.out) / "adapter_model.safetensors");
  for (const auto& info : file.tensors()) EXPECT_EQ(file.view(info).dtype, Dtype::BF16);
  const auto original = oft::io::PeftOftAdapter::load(fixture("neumann_t5"));
  const auto rounded = oft::io::PeftOftAdapter::load(o.out);
  for (std::size_t i = 0; i < original.modules.size(); ++i)
    for (oft::Index e = 0; e < original.modules[i].theta.values().size(); ++e)
      EXPECT_EQ(rounded.modules[i].theta.values().data()[e],
                oft::io::bf16_to_float(
                    oft::io::float_to_bf16(original.modules[i].theta.values().data()[e])));
  // Back to f32 is exact: no permission needed, nothing changes.
  auto back = options("neumann_t5", "f32");
  back.adapter = o.out;
  back.generators_dtype = oft::io::GeneratorsDtype::F32;
  EXPECT_EQ(oft::io::convert_adapter(back).max_change, 0.0);
}

TEST_F(AdapterConvert, LegacyPolynomialRelabelIsMeasured) {
  auto o = options("legacy_t5", "current");
  o.to_current_polynomial = true;
  expect_refused(o, "--allow-change");
  o.allow_change = true;
  const auto report = oft::io::convert_adapter(o);
  EXPECT_GT(report.max_change, 1e-3);  // the two polynomials differ by 15% on this adapter
  const auto relabelled = oft::io::PeftOftAdapter::load(o.out);
  EXPECT_EQ(relabelled.config.peft_version, "0.18.0");
  EXPECT_EQ(relabelled.config.neumann_form(), oft::peft::NeumannForm::Current);
  auto current = options("neumann_t5", "out");
  current.to_current_polynomial = true;
  expect_refused(current, "legacy");
}

}  // namespace

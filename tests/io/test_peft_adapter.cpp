// The PEFT adapter reader (io/peft_adapter.hpp) on adapters written by the real PEFT
// (tests/peft/fixtures/adapters/<config>/, made by tests/peft/make_adapters.py
// with PEFT 0.21.2, and 0.17.1 for the legacy polynomial): oft reads them, and
// its merge equals PEFT's merge_and_unload tensor by tensor; an adapter oft writes reads back
// to the same merge.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <oft/io/peft_adapter.hpp>
#include <string>
#include <vector>

namespace {

using oft::Index;
namespace fs = std::filesystem;

fs::path fixture(const std::string& name) {
  return fs::path(OFT_PEFT_FIXTURES_DIR) / "adapters" / name;
}

oft::RowMatrix<float> matrix(const oft::io::SafetensorsFile& file, const std::string& key) {
  const oft::io::TensorView t = file.tensor(key);
  const std::vector<float> values = t.copy_as<float>();
  oft::RowMatrix<float> out(static_cast<Index>(t.shape.at(0)), static_cast<Index>(t.shape.at(1)));
  std::copy(values.begin(), values.end(), out.data());
  return out;
}

/// max |oft merge - PEFT merge| / max |PEFT merge| over every module of one fixture.
double worst_relative_merge_error(const oft::io::PeftOftAdapter& adapter, const fs::path& dir) {
  const auto reference = oft::io::SafetensorsFile::open(dir / "reference.safetensors");
  double worst = 0.0;
  for (const auto& m : adapter.modules) {
    const oft::RowMatrix<float> base = matrix(reference, m.name + ".base");
    const oft::RowMatrix<float> expected = matrix(reference, m.name + ".merged");
    const oft::RowMatrix<float> merged = adapter.merge(m, oft::view(base));
    const double scale = expected.cwiseAbs().maxCoeff();
    worst = std::max(worst, double((merged - expected).cwiseAbs().maxCoeff()) / scale);
    // The adapter changed the weight: the comparison is not base against base.
    EXPECT_GT((expected - base).cwiseAbs().maxCoeff(), 1e-3f * float(scale)) << m.name;
  }
  return worst;
}

// float32 on both sides; PEFT forms the dense R and multiplies in float32 (different
// summation order from oft's), so agreement is to a few float epsilons relative.
constexpr double kFloatAgreement = 2e-6;

struct Case {
  const char* name;
  std::vector<std::string> modules;
};

TEST(PeftAdapters, MergeEqualsPeftMergeAndUnload) {
  const std::vector<Case> cases = {{"neumann_t5", {"fc1", "fc2", "odd"}},
                                   {"neumann_t2", {"fc1", "fc2"}},
                                   {"exact", {"fc1", "fc2"}},
                                   {"block_share", {"fc1", "fc2"}},
                                   {"coft", {"fc1", "fc2"}},
                                   {"embedding", {"emb", "fc1"}},
                                   {"legacy_t5", {"fc1", "fc2"}}};
  for (const Case& c : cases) {
    const auto adapter = oft::io::PeftOftAdapter::load(fixture(c.name));
    ASSERT_EQ(adapter.modules.size(), c.modules.size()) << c.name;
    for (const auto& name : c.modules) EXPECT_NO_THROW((void)adapter.module(name)) << c.name;
    const double worst = worst_relative_merge_error(adapter, fixture(c.name));
    std::printf("%-12s max |oft merge - PEFT merge| / max |PEFT merge| = %.2e\n", c.name, worst);
    EXPECT_LT(worst, kFloatAgreement) << c.name;
  }
}

TEST(PeftAdapters, ConfigMapsToThePolicyPeftUses) {
  const auto t5 = oft::io::PeftOftAdapter::load(fixture("neumann_t5"));
  EXPECT_EQ(t5.config.neumann_form(), oft::peft::NeumannForm::Current);
  EXPECT_EQ(oft::policy_name(t5.config.policy()), "peft_neumann_branch");
  // PEFT changed b for `odd` (20 features): 45 = 10 * 9 / 2, so b = 10, r = 2.
  EXPECT_EQ(t5.module("odd").spec.block_size, 10);
  EXPECT_EQ(t5.module("odd").spec.blocks, 2);
  EXPECT_EQ(t5.module("fc1").spec.block_size, 8);

  const auto legacy = oft::io::PeftOftAdapter::load(fixture("legacy_t5"));
  EXPECT_TRUE(legacy.config.peft_version.empty());
  EXPECT_EQ(legacy.config.neumann_form(), oft::peft::NeumannForm::Legacy);

  const auto exact = oft::io::PeftOftAdapter::load(fixture("exact"));
  EXPECT_EQ(oft::policy_name(exact.config.policy()), "cayley");
  const auto embedding = oft::io::PeftOftAdapter::load(fixture("embedding"));
  EXPECT_EQ(embedding.module("emb").kind, oft::io::PeftModuleKind::Embedding);
  EXPECT_EQ(embedding.module("fc1").kind, oft::io::PeftModuleKind::Linear);
  const auto shared = oft::io::PeftOftAdapter::load(fixture("block_share"));
  EXPECT_TRUE(shared.module("fc1").spec.shared);
  EXPECT_EQ(shared.module("fc1").theta.count(), 1);
}

// With the legacy polynomial, reading the adapter as current would be visibly wrong: the test
// above can tell the two forms apart.
TEST(PeftAdapters, LegacyAdapterReadAsCurrentDiffers) {
  auto adapter = oft::io::PeftOftAdapter::load(fixture("legacy_t5"));
  adapter.config.peft_version = "0.18.0";
  EXPECT_GT(worst_relative_merge_error(adapter, fixture("legacy_t5")), 1e-4);
}

TEST(PeftAdapters, SaveWritesWhatLoadReads) {
  const fs::path out = fs::temp_directory_path() / "oft_test_peft_adapter_save";
  fs::remove_all(out);
  for (const char* name : {"exact", "embedding", "block_share"}) {
    const auto adapter = oft::io::PeftOftAdapter::load(fixture(name));
    adapter.save(out / name);
    const auto again = oft::io::PeftOftAdapter::load(out / name);
    ASSERT_EQ(again.modules.size(), adapter.modules.size());
    for (size_t i = 0; i < adapter.modules.size(); ++i) {
      EXPECT_EQ(again.modules[i].name, adapter.modules[i].name);
      EXPECT_TRUE(again.modules[i].theta.values() == adapter.modules[i].theta.values()) << name;
    }
    // PEFT's own tensors come back bit for bit (the exact branch's sign included).
    const auto original =
        oft::io::SafetensorsFile::open(fixture(name) / "adapter_model.safetensors");
    const auto written = oft::io::SafetensorsFile::open(out / name / "adapter_model.safetensors");
    for (const std::string& key : original.tensor_names())
      EXPECT_EQ(original.tensor(key).copy_as<float>(), written.tensor(key).copy_as<float>()) << key;
    EXPECT_EQ(written.metadata().at("format"), "pt");
    EXPECT_LT(worst_relative_merge_error(again, fixture(name)), kFloatAgreement) << name;
  }
  fs::remove_all(out);
}

TEST(PeftAdapters, BadInputIsRefusedWithTheValues) {
  const auto adapter = oft::io::PeftOftAdapter::load(fixture("neumann_t5"));
  const oft::RowMatrix<float> wrong = oft::RowMatrix<float>::Zero(32, 25);
  try {
    (void)adapter.merge(adapter.module("fc1"), oft::view(wrong));
    ADD_FAILURE() << "a 32x25 base for a 24-feature adapter was accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("32x25"), std::string::npos) << what;
    EXPECT_NE(what.find("d=24"), std::string::npos) << what;
  }
  EXPECT_THROW((void)adapter.module("nope"), std::out_of_range);

  const fs::path dir = fs::temp_directory_path() / "oft_test_peft_adapter_bad";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fixture("neumann_t5") / "adapter_model.safetensors",
                dir / "adapter_model.safetensors");
  const auto write_config = [&](const std::string& text) {
    std::FILE* f = std::fopen((dir / "adapter_config.json").c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
  };
  const auto expect_refused = [&](const std::string& text, const std::string& part) {
    write_config(text);
    try {
      (void)oft::io::PeftOftAdapter::load(dir);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_refused(R"({"peft_type": "LORA"})", "peft_type is 'LORA'");
  expect_refused(R"({"peft_type": "OFT", "use_cayley_neumann": "yes"})", "use_cayley_neumann");
  expect_refused("{not json", "not JSON");
  expect_refused(
      R"({"peft_type": "OFT", "use_cayley_neumann": true, "num_cayley_neumann_terms": -1})",
      "got -1");
  // Integer fields take JSON integers only: a float out of int's range was undefined behaviour in
  // the conversion (found by fuzz_peft_adapter), a fraction was silently truncated.
  expect_refused(
      R"({"peft_type": "OFT", "use_cayley_neumann": true, "num_cayley_neumann_terms": 5.66667e+28})",
      "field 'num_cayley_neumann_terms' is 5.66667e+28, expected an integer in");
  expect_refused(
      R"({"peft_type": "OFT", "use_cayley_neumann": true, "num_cayley_neumann_terms": 2.5})",
      "field 'num_cayley_neumann_terms' is 2.5");
  expect_refused(R"({"peft_type": "OFT", "num_cayley_neumann_terms": 4294967301})",
                 "field 'num_cayley_neumann_terms' is 4294967301");
  expect_refused(R"({"peft_type": "OFT", "r": 18446744073709551615})",
                 "field 'r' is 18446744073709551615");
  expect_refused(R"({"peft_type": "OFT", "oft_block_size": 1e3})",
                 "field 'oft_block_size' is 1000.0");
  fs::remove_all(dir);
}

}  // namespace

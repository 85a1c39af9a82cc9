// PEFT BOFT and HRA adapters (io/peft_family_adapter.hpp) against what PEFT 0.21.2 computed
// (tests/families/fixtures, made by tests/families/make_reference.py): the adapter folders PEFT
// saved read back, their merge equals merge_and_unload, the float64 layer cases rewritten as
// adapter folders merge to PEFT's W_merged to 1e-12, round trips keep every tensor, every bad
// input is refused by name, and merge_model / inspect_adapter take both families.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/model_merge.hpp>
#include <oft/io/peft_family_adapter.hpp>
#include <string>
#include <vector>

#include "io_test_support.hpp"

namespace {

using oft::Index;
using oft::io::PeftFamily;
using oft::io::PeftFamilyAdapter;
using oft_io_test::ScratchDir;
namespace fs = std::filesystem;
using Matrix = oft::RowMatrix<double>;

const fs::path kFamilies = fs::path(OFT_FAMILIES_FIXTURES_DIR);

const oft::io::SafetensorsFile& reference() {
  static const auto file = oft::io::SafetensorsFile::open(kFamilies / "families_reference.safetensors");
  return file;
}

fs::path adapter_fixture(const std::string& family) { return kFamilies / "adapters" / family; }

/// A reference tensor as rows = its first dimension, columns = the rest, in double.
Matrix load(const std::string& name) {
  const auto t = reference().tensor(name);
  std::vector<double> values;
  if (t.dtype == oft::io::Dtype::F64) {
    values = t.copy_as<double>();
  } else {
    const std::vector<float> f = t.to_floats();
    values.assign(f.begin(), f.end());
  }
  const auto rows = static_cast<Index>(t.shape.at(0));
  return Eigen::Map<const Matrix>(values.data(), rows, static_cast<Index>(values.size()) / rows);
}

double relative(const Matrix& a, const Matrix& b) { return (a - b).norm() / b.norm(); }

/// The case names of one family in the reference file (tensors `<family>_*.W_merged`).
std::vector<std::string> cases(const std::string& family) {
  std::vector<std::string> found;
  const std::string tail = ".W_merged";
  for (const auto& name : reference().tensor_names())
    if (name.rfind(family + "_", 0) == 0 && name.size() > tail.size() &&
        name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
      found.push_back(name.substr(0, name.size() - tail.size()));
  return found;
}

/// One tensor of a hand-made adapter: shape and values, written as F64 or F32.
struct Tensor {
  std::vector<std::uint64_t> shape;
  std::vector<double> values;
  oft::io::Dtype dtype = oft::io::Dtype::F64;
};

/// Writes an adapter folder: `config` and the tensors.
void write_adapter(const fs::path& dir, const nlohmann::ordered_json& config,
                   const std::map<std::string, Tensor>& tensors) {
  fs::create_directories(dir);
  std::ofstream(dir / "adapter_config.json") << config.dump(2);
  oft::io::SafetensorsWriter writer;
  std::vector<std::vector<float>> floats;
  floats.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (t.dtype == oft::io::Dtype::F64) {
      writer.add(name, t.shape, t.values);
    } else {
      floats.emplace_back(t.values.begin(), t.values.end());
      writer.add(name, t.shape, floats.back());
    }
  }
  writer.add_metadata("format", "pt");
  writer.write(dir / "adapter_model.safetensors");
}

Tensor tensor_of(const std::string& name) {
  const auto t = reference().tensor(name);
  return {t.shape, t.copy_as<double>(), oft::io::Dtype::F64};
}

nlohmann::ordered_json boft_config(Index block_size, Index block_num, Index factors) {
  return {{"peft_type", "BOFT"},        {"peft_version", "0.21.2"},        {"bias", "none"},
          {"boft_block_size", block_size}, {"boft_block_num", block_num}, {"boft_n_butterfly_factor", factors},
          {"boft_dropout", 0.0},         {"fan_in_fan_out", false},         {"target_modules", {"proj"}}};
}

nlohmann::ordered_json hra_config(Index r, bool apply_gs) {
  return {{"peft_type", "HRA"},    {"peft_version", "0.21.2"}, {"bias", "none"},
          {"r", r},                {"apply_GS", apply_gs},     {"target_modules", {"proj"}}};
}

/// A float64 layer case of the reference file as a PEFT adapter folder for module "proj".
void write_case(const std::string& name, const fs::path& dir) {
  const Tensor u_or_r = tensor_of(name + (name.rfind("boft", 0) == 0 ? ".boft_R" : ".hra_u"));
  if (name.rfind("boft", 0) == 0) {
    const Index m = static_cast<Index>(u_or_r.shape[0]), b = static_cast<Index>(u_or_r.shape[2]);
    write_adapter(dir, boft_config(b, 0, m),
                  {{"base_model.model.proj.boft_R", u_or_r},
                   {"base_model.model.proj.boft_s", tensor_of(name + ".boft_s")}});
  } else {
    const Index r = static_cast<Index>(u_or_r.shape[1]);
    write_adapter(dir, hra_config(r, name.find("_gs") != std::string::npos),
                  {{"base_model.model.proj.hra_u", u_or_r}});
  }
}

// ---------------------------------------------------------------------------------------------
// The folders PEFT saved

TEST(PeftFamilyAdapters, ReadsPeftsBoftFolder) {
  const auto adapter = PeftFamilyAdapter::load(adapter_fixture("boft"));
  EXPECT_EQ(adapter.family(), PeftFamily::Boft);
  EXPECT_EQ(adapter.config.peft_version, "0.21.2");
  EXPECT_EQ(adapter.config.boft_block_size, 4);
  EXPECT_EQ(adapter.config.boft_n_butterfly_factor, 2);
  ASSERT_EQ(adapter.modules.size(), 2u);
  for (const auto& m : adapter.modules) {
    EXPECT_EQ(m.butterfly.factors, 2) << m.name;  // the config's value is m itself
    EXPECT_EQ(m.butterfly.blocks, 4) << m.name;
    EXPECT_EQ(m.butterfly.block_size, 4) << m.name;
    EXPECT_EQ(m.features, 16) << m.name;
    EXPECT_EQ(m.dtype, oft::io::Dtype::F32);
  }
  EXPECT_EQ(adapter.module("lin1").out_features(), 16);
  EXPECT_EQ(adapter.module("lin2").out_features(), 8);
  EXPECT_EQ(adapter.module("lin2").parameters(), 2 * 4 * 4 * 4 + 8);
}

TEST(PeftFamilyAdapters, ReadsPeftsHraFolder) {
  const auto adapter = PeftFamilyAdapter::load(adapter_fixture("hra"));
  EXPECT_EQ(adapter.family(), PeftFamily::Hra);
  EXPECT_EQ(adapter.config.r, 4);
  EXPECT_TRUE(adapter.config.apply_GS);
  ASSERT_EQ(adapter.modules.size(), 2u);
  for (const auto& m : adapter.modules) {
    EXPECT_EQ(m.features, 16);
    EXPECT_EQ(m.reflections, 4);
  }
}

// PEFT merged the float32 TinyModel in float32 (its dense rotation, its summation order); oft
// merges in double and rounds once, so the two agree to a few float32 epsilons.
TEST(PeftFamilyAdapters, MergeEqualsPeftMergeAndUnloadOnTinyModel) {
  for (const std::string family : {"boft", "hra"}) {
    const auto adapter = PeftFamilyAdapter::load(adapter_fixture(family));
    for (const auto& m : adapter.modules) {
      const std::string stem = "adapter_" + family + "." + m.name;
      const Matrix w0 = load(stem + ".weight"), expected = load(stem + ".merged_weight");
      const Matrix merged = adapter.merge<double>(m, oft::view(w0));
      EXPECT_LT(relative(merged, expected), 1e-6) << stem;
      EXPECT_GT(relative(w0, expected), 1e-2) << stem << ": the adapter must change the weight";
      EXPECT_LT(relative(adapter.unmerge<double>(m, oft::view(merged)), w0), 1e-13) << stem;
    }
  }
}

// The float64 layer cases (m = 1..5, b = 2..8, block_num, r = 2..16, apply_GS) written as
// adapter folders: the merge is PEFT's W_merged and the merged layer's output PEFT's Y.
TEST(PeftFamilyAdapters, MergeEqualsPeftInDouble) {
  ScratchDir scratch;
  int checked = 0;
  for (const std::string family : {"boft", "hra"})
    for (const std::string& name : cases(family)) {
      write_case(name, scratch / name);
      const auto adapter = PeftFamilyAdapter::load(scratch / name);
      const auto& m = adapter.module("proj");
      const Matrix w0 = load(name + ".W0");
      const Matrix merged = adapter.merge<double>(m, oft::view(w0));
      EXPECT_LT(relative(merged, load(name + ".W_merged")), 1e-12) << name;
      Matrix y = load(name + ".X") * merged.transpose();
      if (reference().contains(name + ".bias")) y.rowwise() += load(name + ".bias").transpose().row(0);
      EXPECT_LT(relative(y, load(name + ".Y")), 1e-12) << name;
      EXPECT_LT(relative(adapter.unmerge<double>(m, oft::view(merged)), w0), 1e-12) << name;
      ++checked;
    }
  EXPECT_EQ(checked, 15);
}

TEST(PeftFamilyAdapters, BoftBlockNumConfigReads) {
  ScratchDir scratch;
  const std::string name = "boft_i16_o12_bn2_m2";
  write_adapter(scratch / "a", boft_config(0, 2, 2),
                {{"base_model.model.proj.boft_R", tensor_of(name + ".boft_R")},
                 {"base_model.model.proj.boft_s", tensor_of(name + ".boft_s")}});
  const auto adapter = PeftFamilyAdapter::load(scratch / "a");
  EXPECT_EQ(adapter.modules.at(0).butterfly.blocks, 2);
  EXPECT_EQ(adapter.modules.at(0).butterfly.block_size, 8);
}

// PEFT without its CUDA extension stores one factor under a config that asks for more.
TEST(PeftFamilyAdapters, BoftOneFactorUnderALargerConfigIsPeftsCpuFallback) {
  ScratchDir scratch;
  const std::string name = "boft_i16_o12_bs4_m1";
  write_adapter(scratch / "a", boft_config(4, 0, 3),
                {{"base_model.model.proj.boft_R", tensor_of(name + ".boft_R")},
                 {"base_model.model.proj.boft_s", tensor_of(name + ".boft_s")}});
  const auto adapter = PeftFamilyAdapter::load(scratch / "a");
  EXPECT_EQ(adapter.modules.at(0).butterfly.factors, 1);
  EXPECT_LT(relative(adapter.merge<double>(adapter.modules.at(0), oft::view(load(name + ".W0"))),
                     load(name + ".W_merged")),
            1e-12);
}

// ---------------------------------------------------------------------------------------------
// Round trips

std::vector<char> bytes_of(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(PeftFamilyAdapters, RoundTripKeepsEveryTensor) {
  ScratchDir scratch;
  for (const std::string family : {"boft", "hra"}) {
    const auto first = PeftFamilyAdapter::load(adapter_fixture(family));
    first.save(scratch / family);
    const auto second = PeftFamilyAdapter::load(scratch / family);
    ASSERT_EQ(first.modules.size(), second.modules.size());
    for (std::size_t i = 0; i < first.modules.size(); ++i) {
      EXPECT_EQ(first.modules[i].name, second.modules[i].name);
      EXPECT_EQ(first.modules[i].boft_R, second.modules[i].boft_R);
      EXPECT_EQ(first.modules[i].boft_s, second.modules[i].boft_s);
      EXPECT_EQ(first.modules[i].hra_u, second.modules[i].hra_u);
    }
    EXPECT_EQ(first.config.raw, second.config.raw);
    // PEFT's file and oft's hold the same tensors byte for byte (same names, shapes, dtypes,
    // order and metadata): the files are equal but for the header's padding.
    const auto a = oft::io::SafetensorsFile::open(adapter_fixture(family) / "adapter_model.safetensors");
    const auto b = oft::io::SafetensorsFile::open(scratch / family / "adapter_model.safetensors");
    ASSERT_EQ(a.tensor_names(), b.tensor_names());
    for (const auto& key : a.tensor_names()) {
      const auto ta = a.tensor(key), tb = b.tensor(key);
      EXPECT_EQ(ta.shape, tb.shape) << key;
      EXPECT_EQ(ta.dtype, tb.dtype) << key;
      ASSERT_EQ(ta.bytes, tb.bytes) << key;
      EXPECT_EQ(std::memcmp(ta.data, tb.data, ta.bytes), 0) << key;
    }
    EXPECT_EQ(b.metadata(), a.metadata());
    // and a second save is byte for byte the first
    second.save(scratch / (family + "_again"));
    EXPECT_EQ(bytes_of(scratch / family / "adapter_model.safetensors"),
              bytes_of(scratch / (family + "_again") / "adapter_model.safetensors"));
  }
}

TEST(PeftFamilyAdapters, RoundTripInDouble) {
  ScratchDir scratch;
  write_case("boft_i32_o8_bs2_m5", scratch / "in");
  const auto first = PeftFamilyAdapter::load(scratch / "in");
  first.save(scratch / "out");
  const auto second = PeftFamilyAdapter::load(scratch / "out");
  EXPECT_EQ(second.modules.at(0).dtype, oft::io::Dtype::F64);
  EXPECT_EQ(first.modules.at(0).boft_R, second.modules.at(0).boft_R);
  EXPECT_EQ(first.modules.at(0).boft_s, second.modules.at(0).boft_s);
}

}  // namespace

// PEFT BOFT and HRA adapters (io/peft_family_adapter.hpp) against what PEFT 0.21.2 computed
// (tests/families/fixtures, made by tests/families/make_reference.py): the adapter folders PEFT
// saved read back, their merge equals merge_and_unload, the float64 layer cases rewritten as
// adapter folders merge to PEFT's W_merged to 1e-12, round trips keep every tensor, every bad
// input is refused by name, and merge_model / inspect_adapter take both families.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <oft/io/adapter_convert.hpp>
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
  std::map<std::string, double> worst;
  for (const std::string family : {"boft", "hra"})
    for (const std::string& name : cases(family)) {
      write_case(name, scratch / name);
      const auto adapter = PeftFamilyAdapter::load(scratch / name);
      const auto& m = adapter.module("proj");
      const Matrix w0 = load(name + ".W0");
      const Matrix merged = adapter.merge<double>(m, oft::view(w0));
      const double merge_error = relative(merged, load(name + ".W_merged"));
      EXPECT_LT(merge_error, 1e-12) << name;
      Matrix y = load(name + ".X") * merged.transpose();
      if (reference().contains(name + ".bias")) y.rowwise() += load(name + ".bias").transpose().row(0);
      EXPECT_LT(relative(y, load(name + ".Y")), 1e-12) << name;
      EXPECT_LT(relative(adapter.unmerge<double>(m, oft::view(merged)), w0), 1e-12) << name;
      worst[family] = std::max(worst[family], merge_error);
      ++checked;
    }
  EXPECT_EQ(checked, 15);
  for (const auto& [family, error] : worst)
    std::printf("  %s: worst ||merge - PEFT's W_merged||_F / ||W_merged||_F = %.2e\n", family.c_str(), error);
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

// ---------------------------------------------------------------------------------------------
// Refusals: each names the tensor or field and the values

Tensor filled(std::vector<std::uint64_t> shape, double scale = 0.1) {
  std::size_t n = 1;
  for (const auto d : shape) n *= static_cast<std::size_t>(d);
  Tensor t{std::move(shape), std::vector<double>(n), oft::io::Dtype::F32};
  for (std::size_t i = 0; i < n; ++i) t.values[i] = scale * std::sin(0.7 * double(i) + 0.3);
  return t;
}

Tensor ones(std::uint64_t n) { return {{n, 1}, std::vector<double>(n, 1.0), oft::io::Dtype::F32}; }

/// Loading the adapter throws E with a message holding every one of `parts`.
template <class E>
void expect_refused(const fs::path& dir, const std::vector<std::string>& parts) {
  try {
    (void)PeftFamilyAdapter::load(dir);
    ADD_FAILURE() << dir << ": loaded";
  } catch (const E& e) {
    for (const auto& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what() << "\n  lacks: " << part;
  } catch (const std::exception& e) {
    ADD_FAILURE() << dir << ": threw another type: " << e.what();
  }
}

const std::string kR = "base_model.model.proj.boft_R", kS = "base_model.model.proj.boft_s",
                  kU = "base_model.model.proj.hra_u";

TEST(PeftFamilyAdapters, RefusesBoftLayoutsThatDoNotFactor) {
  ScratchDir scratch;
  struct Bad {
    std::string dir;
    nlohmann::ordered_json config;
    std::vector<std::uint64_t> shape;
    std::vector<std::string> parts;
  };
  const std::vector<Bad> bad = {
      {"odd_n", boft_config(4, 0, 2), {2, 3, 4, 4}, {kR, "[2, 3, 4, 4]", "N=3", "even"}},
      {"n_not_2_pow", boft_config(4, 0, 3), {3, 2, 4, 4}, {kR, "[3, 2, 4, 4]", "2^(m-1)=4"}},
      {"odd_b", boft_config(3, 0, 2), {2, 4, 3, 3}, {kR, "b=3", "even"}},
      {"b_vs_config", boft_config(8, 0, 2), {2, 4, 4, 4}, {kR, "b = 4", "boft_block_size is 8"}},
      {"n_vs_config", boft_config(0, 2, 2), {2, 4, 4, 4}, {kR, "N = 4", "boft_block_num is 2"}},
      {"m_vs_config", boft_config(4, 0, 3), {2, 4, 4, 4}, {kR, "m = 2", "boft_n_butterfly_factor is 3"}},
      {"not_square", boft_config(4, 0, 1), {1, 4, 4, 3}, {kR, "[1, 4, 4, 3]", "[m, N, b, b]"}},
      {"rank_3", boft_config(4, 0, 1), {4, 4, 4}, {kR, "[4, 4, 4]"}},
  };
  for (const auto& b : bad) {
    write_adapter(scratch / b.dir, b.config, {{kR, filled(b.shape)}, {kS, ones(12)}});
    SCOPED_TRACE(b.dir);
    expect_refused<oft::io::format_error>(scratch / b.dir, b.parts);
  }
}

TEST(PeftFamilyAdapters, RefusesBadBoftScalesConfigsAndTensors) {
  ScratchDir scratch;
  const Tensor r = filled({2, 4, 4, 4});
  write_adapter(scratch / "s_rank", boft_config(4, 0, 2), {{kR, r}, {kS, {{12}, std::vector<double>(12, 1.0)}}});
  expect_refused<oft::io::format_error>(scratch / "s_rank", {kS, "[12]", "[n_out, 1]"});
  write_adapter(scratch / "s_missing", boft_config(4, 0, 2), {{kR, r}});
  expect_refused<oft::io::format_error>(scratch / "s_missing", {kS, "beside"});
  write_adapter(scratch / "r_missing", boft_config(4, 0, 2), {{kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "r_missing", {kS, "boft_R"});
  write_adapter(scratch / "stray", boft_config(4, 0, 2),
                {{kR, r}, {kS, ones(12)}, {"base_model.model.proj.bias", filled({12})}});
  expect_refused<oft::io::format_error>(scratch / "stray", {"proj.bias", "no BOFT tensor"});

  auto config = boft_config(4, 0, 2);
  config["bias"] = "boft_only";
  write_adapter(scratch / "bias", config, {{kR, r}, {kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "bias", {"adapter_config.json", "bias is 'boft_only'"});
  config = boft_config(4, 0, 2);
  config["fan_in_fan_out"] = true;
  write_adapter(scratch / "fifo", config, {{kR, r}, {kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "fifo", {"fan_in_fan_out"});
  write_adapter(scratch / "neither", boft_config(0, 0, 2), {{kR, r}, {kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "neither", {"boft_block_size 0 and boft_block_num 0"});
  config = boft_config(4, 0, 2);
  config["boft_n_butterfly_factor"] = 2.5;
  write_adapter(scratch / "fraction", config, {{kR, r}, {kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "fraction", {"boft_n_butterfly_factor", "2.5"});
  config = boft_config(4, 0, 2);
  config["peft_type"] = "LORA";
  write_adapter(scratch / "lora", config, {{kR, r}, {kS, ones(12)}});
  expect_refused<oft::io::format_error>(scratch / "lora", {"peft_type is 'LORA'"});

  Tensor nan_r = r;
  nan_r.values[37] = std::nan("");
  write_adapter(scratch / "nan_r", boft_config(4, 0, 2), {{kR, nan_r}, {kS, ones(12)}});
  expect_refused<std::domain_error>(scratch / "nan_r", {kR, "nan", "flat index 37"});
  Tensor inf_s = ones(12);
  inf_s.values[5] = INFINITY;
  write_adapter(scratch / "inf_s", boft_config(4, 0, 2), {{kR, r}, {kS, inf_s}});
  expect_refused<std::domain_error>(scratch / "inf_s", {kS, "inf", "flat index 5"});
}

TEST(PeftFamilyAdapters, RefusesBadHraAdapters) {
  ScratchDir scratch;
  write_adapter(scratch / "r_vs_config", hra_config(4, false), {{kU, filled({16, 3})}});
  expect_refused<oft::io::format_error>(scratch / "r_vs_config", {kU, "[16, 3]", "r is 4"});
  write_adapter(scratch / "r_gt_d", hra_config(6, true), {{kU, filled({4, 6})}});
  expect_refused<oft::io::format_error>(scratch / "r_gt_d", {kU, "r = 6 > d = 4", "apply_GS"});
  write_adapter(scratch / "rank_1", hra_config(4, false), {{kU, filled({16})}});
  expect_refused<oft::io::format_error>(scratch / "rank_1", {kU, "[16]", "[d, r]"});
  write_adapter(scratch / "r_zero", hra_config(0, false), {{kU, filled({16, 1})}});
  expect_refused<oft::io::format_error>(scratch / "r_zero", {"r is 0"});

  Tensor zero = filled({16, 3});
  for (int p = 0; p < 16; ++p) zero.values[static_cast<std::size_t>(p * 3 + 1)] = 0.0;
  write_adapter(scratch / "zero_column", hra_config(3, false), {{kU, zero}});
  expect_refused<std::domain_error>(scratch / "zero_column", {kU, "column 1 is zero"});
  Tensor dependent = filled({16, 2});
  for (int p = 0; p < 16; ++p)
    dependent.values[static_cast<std::size_t>(p * 2 + 1)] = 2.0 * dependent.values[static_cast<std::size_t>(p * 2)];
  write_adapter(scratch / "dependent_gs", hra_config(2, true), {{kU, dependent}});
  expect_refused<std::domain_error>(scratch / "dependent_gs", {kU, "column 1", "span of the columns before it"});
  write_adapter(scratch / "dependent_plain", hra_config(2, false), {{kU, dependent}});
  EXPECT_NO_THROW((void)PeftFamilyAdapter::load(scratch / "dependent_plain"));  // two equal reflections: fine
  Tensor nan_u = filled({16, 2});
  nan_u.values[9] = -std::nan("");
  write_adapter(scratch / "nan_u", hra_config(2, false), {{kU, nan_u}});
  expect_refused<std::domain_error>(scratch / "nan_u", {kU, "nan", "flat index 9"});
  // r > d without Gram-Schmidt is PEFT's own product of r reflections: read
  write_adapter(scratch / "r_gt_d_plain", hra_config(6, false), {{kU, filled({4, 6})}});
  EXPECT_NO_THROW((void)PeftFamilyAdapter::load(scratch / "r_gt_d_plain"));
}

TEST(PeftFamilyAdapters, MergeRefusesAWeightOfAnotherShape) {
  const auto boft = PeftFamilyAdapter::load(adapter_fixture("boft"));
  const Matrix narrow = Matrix::Ones(16, 12), tall = Matrix::Ones(9, 16);
  EXPECT_THROW((void)boft.merge<double>(boft.module("lin1"), oft::view(narrow)), std::invalid_argument);
  EXPECT_THROW((void)boft.merge<double>(boft.module("lin2"), oft::view(tall)), std::invalid_argument);
  const auto hra = PeftFamilyAdapter::load(adapter_fixture("hra"));
  EXPECT_THROW((void)hra.merge<double>(hra.module("lin1"), oft::view(narrow)), std::invalid_argument);
  EXPECT_NO_THROW((void)hra.merge<double>(hra.module("lin1"), oft::view(tall)));  // any n_out
}

// ---------------------------------------------------------------------------------------------
// merge_model, inspect_adapter, convert_adapter

/// The fixture's TinyModel base as a model directory (model.safetensors + config.json).
void write_tiny_model(const std::string& family, const fs::path& dir) {
  fs::create_directories(dir);
  oft::io::SafetensorsWriter writer;
  std::vector<std::vector<float>> values;
  values.reserve(4);
  for (const std::string name : {"lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"}) {
    const auto t = reference().tensor("adapter_" + family + "." + name);
    values.push_back(t.copy_as<float>());
    writer.add(name, t.shape, values.back());
  }
  writer.add_metadata("format", "pt");
  writer.write(dir / "model.safetensors");
  std::ofstream(dir / "config.json") << "{\"model_type\": \"tiny\"}\n";
}

TEST(PeftFamilyAdapters, MergeModelEqualsPeftMergeAndUnload) {
  ScratchDir scratch;
  for (const std::string family : {"boft", "hra"}) {
    write_tiny_model(family, scratch / ("base_" + family));
    oft::io::MergeOptions options;
    options.base = (scratch / ("base_" + family)).string();
    options.adapter = adapter_fixture(family).string();
    options.out = (scratch / ("merged_" + family)).string();
    const auto report = oft::io::merge_model(options);
    EXPECT_EQ(report.adapted.size(), 2u);
    EXPECT_EQ(report.other_files, 1u);
    const auto merged = oft::io::SafetensorsFile::open(scratch / ("merged_" + family) / "model.safetensors");
    for (const std::string m : {"lin1", "lin2"}) {
      const auto t = merged.tensor(m + ".weight");
      const std::vector<float> f = t.copy_as<float>();
      const Matrix got = Eigen::Map<const oft::RowMatrix<float>>(f.data(), static_cast<Index>(t.shape[0]),
                                                                 static_cast<Index>(t.shape[1]))
                             .cast<double>();
      EXPECT_LT(relative(got, load("adapter_" + family + "." + m + ".merged_weight")), 1e-6) << family << m;
      const auto bias = merged.tensor(m + ".bias");
      const auto original = reference().tensor("adapter_" + family + "." + m + ".bias");
      EXPECT_EQ(std::memcmp(bias.data, original.data, bias.bytes), 0) << "bias copied byte for byte";
    }
    // unmerge gives the base back
    options.base = options.out;
    options.out = (scratch / ("unmerged_" + family)).string();
    options.unmerge = true;
    (void)oft::io::merge_model(options);
    const auto unmerged = oft::io::SafetensorsFile::open(scratch / ("unmerged_" + family) / "model.safetensors");
    for (const std::string m : {"lin1", "lin2"}) {
      const std::vector<float> a = unmerged.tensor(m + ".weight").copy_as<float>();
      const std::vector<float> b = reference().tensor("adapter_" + family + "." + m + ".weight").copy_as<float>();
      double worst = 0.0;
      for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
      EXPECT_LT(worst, 1e-5) << family << m;
    }
  }
}

TEST(PeftFamilyAdapters, MergeModelRefusalsWriteNothing) {
  ScratchDir scratch;
  write_tiny_model("boft", scratch / "base");
  oft::io::MergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = adapter_fixture("boft").string();
  options.out = (scratch / "out").string();
  options.strength = 0.5;
  try {
    (void)oft::io::merge_model(options);
    ADD_FAILURE() << "merged at strength 0.5";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("BOFT adapter merges at strength 1 only"), std::string::npos) << e.what();
  }
  // an adapter for a wider model: lin1 rotates 32 features
  const std::string name = "boft_i32_o8_bs4_m4";
  write_adapter(scratch / "wide", boft_config(4, 0, 4),
                {{"base_model.model.lin1.boft_R", tensor_of(name + ".boft_R")},
                 {"base_model.model.lin1.boft_s", tensor_of(name + ".boft_s")}});
  options.strength = 1.0;
  options.adapter = (scratch / "wide").string();
  try {
    (void)oft::io::merge_model(options);
    ADD_FAILURE() << "merged a 32-feature adapter into a 16-feature layer";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("module 'lin1': base weight is 16x16, but the adapter needs 8x32"),
              std::string::npos)
        << e.what();
  }
  std::vector<std::string> left = scratch.entries();
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"base", "wide"}));  // no output, no staging directory
}

TEST(PeftFamilyAdapters, InspectReportsFamilies) {
  const auto boft = oft::io::inspect_adapter(adapter_fixture("boft").string(), 1e-6);
  EXPECT_EQ(boft.family, "BOFT");
  ASSERT_EQ(boft.modules.size(), 2u);
  const auto& lin2 = boft.modules[1];
  EXPECT_EQ(lin2.name, "lin2");
  EXPECT_EQ(lin2.factors, 2);
  EXPECT_EQ(lin2.blocks, 4);
  EXPECT_EQ(lin2.block_size, 4);
  EXPECT_EQ(lin2.out_features, 8);
  EXPECT_EQ(lin2.parameters, 2 * 4 * 16 + 8);
  EXPECT_EQ(lin2.stored_bytes, std::uint64_t(4 * (2 * 4 * 16 + 8)));
  EXPECT_EQ(lin2.dense_bytes, std::uint64_t(16 * 16 * 4));
  EXPECT_LT(lin2.orthogonality.worst, 1e-14);  // exact Cayley in double
  EXPECT_GT(lin2.rho.worst, 0.0);
  EXPECT_LE(lin2.scale_min, lin2.scale_max);
  const auto json = oft::io::to_json(boft);
  EXPECT_EQ(json["family"], "BOFT");
  EXPECT_EQ(json["modules"][1]["factors"], 2);
  EXPECT_EQ(json["modules"][1]["out_features"], 8);

  const auto hra = oft::io::inspect_adapter(adapter_fixture("hra").string(), 1e-6);
  EXPECT_EQ(hra.family, "HRA");
  EXPECT_EQ(hra.modules[0].reflections, 4);
  EXPECT_TRUE(hra.modules[0].gram_schmidt);
  EXPECT_LT(hra.modules[0].orthogonality.worst, 1e-14);
  EXPECT_EQ(oft::io::to_json(hra)["modules"][0]["apply_GS"], true);

  // the r x r orthogonality measure equals the dense one, also for a visibly non-orthogonal R
  const auto adapter = PeftFamilyAdapter::load(adapter_fixture("hra"));
  oft::Householder<double> h = adapter.householder<double>(adapter.modules[0]);
  const Matrix dense = h.dense();
  const double direct =
      Eigen::JacobiSVD<Eigen::MatrixXd>(dense.transpose() * dense - Matrix::Identity(16, 16)).singularValues()(0);
  EXPECT_NEAR(oft::io::detail::householder_orthogonality(h), direct, 1e-14);

  // the OFT report is unchanged: no family key in its JSON
  const auto oft_json = oft::io::to_json(
      oft::io::inspect_adapter((fs::path(OFT_PEFT_FIXTURES_DIR) / "adapters" / "neumann_t5").string(), 1e-6));
  EXPECT_FALSE(oft_json.contains("family"));
}

TEST(PeftFamilyAdapters, ConvertRefusesFamilies) {
  ScratchDir scratch;
  oft::io::ConvertOptions options;
  options.adapter = adapter_fixture("hra").string();
  options.out = (scratch / "out").string();
  options.generators_dtype = oft::io::GeneratorsDtype::BF16;
  try {
    (void)oft::io::convert_adapter(options);
    ADD_FAILURE() << "converted an HRA adapter";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("is a PEFT HRA adapter; convert rewrites OFT adapters only"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(scratch / "out"));
}

}  // namespace

// oft::io::merge_model (io/model_merge.hpp: `oft merge` / `oft unmerge`) on model directories built
// from the PEFT-made fixtures (tests/peft/fixtures/adapters/<config>/reference.safetensors holds
// each module's base weight and PEFT's merge_and_unload result): the merged tensors equal PEFT's,
// every other tensor and file is byte-identical, shards and index are preserved, unmerge inverts
// merge, and bad input leaves no output behind.
#include <gtest/gtest.h>

#include <fstream>
#include <oft/io/model_merge.hpp>
#include <random>

#include "toy_model.hpp"

namespace {

namespace fs = std::filesystem;
using oft::io::Dtype;
using oft::io::SafetensorsFile;
using oft::io::SafetensorsWriter;

fs::path fixture(const std::string& name) {
  return fs::path(OFT_PEFT_FIXTURES_DIR) / "adapters" / name;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string tensor_bytes(const SafetensorsFile& f, const std::string& name) {
  const auto v = f.tensor(name);
  return std::string(reinterpret_cast<const char*>(v.data), v.bytes);
}

/// A fresh directory under the test's temporary root.
class ModelMerge : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / ("oft_model_merge_" + std::string(info->name()) + "_" +
                                         std::to_string(static_cast<long>(::getpid())));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  /// A model directory for fixture `name`: each module's PEFT base weight as `<prefix><m>.weight`
  /// (dtype `dtype`), a bias per module, an integer buffer, config files; `shards` files with an
  /// index when > 1.
  fs::path make_base(const std::string& name, int shards = 1, Dtype dtype = Dtype::F32,
                     const std::string& prefix = "") {
    const fs::path dir = root_ / ("base_" + name + "_" + std::to_string(shards) + prefix);
    oft_test::write_toy_model(dir, fixture(name), shards, dtype, prefix);
    return dir;
  }

  oft::io::MergeOptions options(const fs::path& base, const std::string& adapter,
                                const std::string& out) {
    oft::io::MergeOptions o;
    o.base = base.string();
    o.adapter = fixture(adapter).string();
    o.out = (root_ / out).string();
    return o;
  }

  fs::path root_;
};

/// max |a - b| / max |b| over the merged module weights of `out` against PEFT's merge.
double worst_merge_error(const fs::path& out_file_dir, const std::string& name,
                         const std::string& prefix = "") {
  const auto reference = SafetensorsFile::open(fixture(name) / "reference.safetensors");
  const auto adapter = oft::io::PeftOftAdapter::load(fixture(name));
  double worst = 0.0;
  for (const auto& m : adapter.modules) {
    const std::string tensor = prefix + m.name + ".weight";
    std::vector<float> got;
    for (const auto& entry : fs::directory_iterator(out_file_dir))
      if (entry.path().extension() == ".safetensors") {
        const auto f = SafetensorsFile::open(entry.path());
        if (f.contains(tensor)) got = f.tensor(tensor).to_floats();
      }
    const std::vector<float> expected = reference.tensor(m.name + ".merged").to_floats();
    EXPECT_EQ(got.size(), expected.size()) << tensor;
    if (got.size() != expected.size()) return 1.0;
    double scale = 0.0, diff = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      scale = std::max(scale, double(std::abs(expected[i])));
      diff = std::max(diff, double(std::abs(got[i] - expected[i])));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

constexpr double kFloatAgreement = 2e-6;  // as tests/io/test_peft_adapter.cpp

TEST_F(ModelMerge, EveryFixtureMergesAsPeftAndCopiesEverythingElse) {
  for (const std::string name :
       {"neumann_t5", "neumann_t2", "exact", "block_share", "coft", "legacy_t5", "embedding"}) {
    SCOPED_TRACE(name);
    const fs::path base = make_base(name);
    const auto report = oft::io::merge_model(options(base, name, "out_" + name));
    const fs::path out = root_ / ("out_" + name);
    EXPECT_LT(worst_merge_error(out, name), kFloatAgreement);
    EXPECT_EQ(report.adapted.size(), oft::io::PeftOftAdapter::load(fixture(name)).modules.size());
    EXPECT_EQ(report.other_files, 2u);
    EXPECT_EQ(read_bytes(out / "config.json"), read_bytes(base / "config.json"));
    EXPECT_EQ(read_bytes(out / "1_Pooling" / "config.json"),
              read_bytes(base / "1_Pooling" / "config.json"));
    const auto in = SafetensorsFile::open(base / "model.safetensors");
    const auto written = SafetensorsFile::open(out / "model.safetensors");
    EXPECT_EQ(written.tensor_names(), in.tensor_names());
    EXPECT_EQ(written.metadata(), in.metadata());
    for (const std::string& t : in.tensor_names())
      if (t.size() < 7 || t.compare(t.size() - 7, 7, ".weight") != 0) {
        EXPECT_EQ(tensor_bytes(written, t), tensor_bytes(in, t)) << t;
      }
  }
}

TEST_F(ModelMerge, ShardsAndIndexArePreserved) {
  const fs::path base = make_base("neumann_t5", 2);
  const auto report = oft::io::merge_model(options(base, "neumann_t5", "out"));
  EXPECT_EQ(report.shards, 2u);
  const fs::path out = root_ / "out";
  EXPECT_EQ(read_bytes(out / "model.safetensors.index.json"),
            read_bytes(base / "model.safetensors.index.json"));
  for (const char* shard :
       {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const auto in = SafetensorsFile::open(base / shard);
    const auto written = SafetensorsFile::open(out / shard);
    EXPECT_EQ(written.tensor_names(), in.tensor_names()) << shard;
  }
  EXPECT_LT(worst_merge_error(out, "neumann_t5"), kFloatAgreement);
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST_F(ModelMerge, PrefixedBaseNamesAreFound) {
  const fs::path base = make_base("neumann_t5", 1, Dtype::F32, "bert.");
  oft::io::merge_model(options(base, "neumann_t5", "out"));
  EXPECT_LT(worst_merge_error(root_ / "out", "neumann_t5", "bert."), kFloatAgreement);
}

TEST_F(ModelMerge, UnmergeInvertsMergeAndStrengthZeroIsTheBase) {
  for (const std::string name : {"neumann_t5", "exact", "embedding", "block_share"}) {
    SCOPED_TRACE(name);
    const fs::path base = make_base(name);
    oft::io::merge_model(options(base, name, "merged_" + name));
    auto back = options(root_ / ("merged_" + name), name, "back_" + name);
    back.unmerge = true;
    oft::io::merge_model(back);
    const auto original = SafetensorsFile::open(base / "model.safetensors");
    const auto restored = SafetensorsFile::open(root_ / ("back_" + name) / "model.safetensors");
    for (const auto& m : oft::io::PeftOftAdapter::load(fixture(name)).modules) {
      const auto a = original.tensor(m.name + ".weight").to_floats();
      const auto b = restored.tensor(m.name + ".weight").to_floats();
      double diff = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, double(std::abs(a[i] - b[i])));
        scale = std::max(scale, double(std::abs(a[i])));
      }
      // Two float32 roundings of a product with a well-conditioned R (||R||, ||R^-1|| ~ 1).
      EXPECT_LT(diff / scale, 1e-5) << m.name;
      EXPECT_GT(diff, 0.0) << m.name << ": float rounding should leave some trace (not a copy)";
    }
    // R(0 * Q) = I: the weights come out bit for bit.
    auto zero = options(base, name, "zero_" + name);
    zero.strength = 0.0;
    oft::io::merge_model(zero);
    const auto same = SafetensorsFile::open(root_ / ("zero_" + name) / "model.safetensors");
    for (const std::string& t : original.tensor_names())
      EXPECT_EQ(tensor_bytes(same, t), tensor_bytes(original, t)) << t;
  }
}

TEST_F(ModelMerge, SixteenBitBasesStayInTheirDtypeAndDtypeConverts) {
  const fs::path base = make_base("neumann_t5", 2, Dtype::BF16);
  oft::io::merge_model(options(base, "neumann_t5", "out"));
  const fs::path out = root_ / "out";
  const auto reference = SafetensorsFile::open(fixture("neumann_t5") / "reference.safetensors");
  for (const auto& entry : fs::directory_iterator(out)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto f = SafetensorsFile::open(entry.path());
    for (const auto& info : f.tensors()) {
      const auto v = f.view(info);
      if (v.name.size() > 7 && v.name.compare(v.name.size() - 7, 7, ".weight") == 0) {
        EXPECT_EQ(v.dtype, Dtype::BF16) << v.name;
        // bf16 keeps 8 bits: within a half unit in the last place of the float merge of the
        // bf16-rounded base (2^-8 relative), plus the float32 merge's own error.
        const auto got = v.to_floats();
        const auto expected =
            reference.tensor(v.name.substr(0, v.name.size() - 7) + ".merged").to_floats();
        for (std::size_t i = 0; i < got.size(); ++i)
          EXPECT_NEAR(got[i], expected[i], 2e-2 * std::max(1.0f, std::abs(expected[i])))
              << v.name << " " << i;
      }
    }
  }
  auto to_f32 = options(base, "neumann_t5", "out32");
  to_f32.dtype = oft::io::MergeDtype::F32;
  oft::io::merge_model(to_f32);
  const auto index =
      nlohmann::json::parse(read_bytes(root_ / "out32" / "model.safetensors.index.json"));
  std::uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(root_ / "out32"))
    if (entry.path().extension() == ".safetensors") {
      const auto f = SafetensorsFile::open(entry.path());
      for (const auto& info : f.tensors()) {
        const auto v = f.view(info);
        if (v.name != "position_ids") {
          EXPECT_EQ(v.dtype, Dtype::F32) << v.name;
        }
        total += v.bytes;
      }
    }
  EXPECT_EQ(index["metadata"]["total_size"].get<std::uint64_t>(), total);
}

void expect_refused(const oft::io::MergeOptions& o, const std::string& fragment) {
  try {
    oft::io::merge_model(o);
    ADD_FAILURE() << "no exception; expected one mentioning '" << fragment << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.out)) << o.out;
  for (const auto& entry : fs::directory_iterator(fs::path(o.out).parent_path()))
    EXPECT_EQ(entry.path().filename().string().find(".oft-partial"), std::string::npos)
        << entry.path();
}

TEST_F(ModelMerge, BadInputIsRefusedBeforeAnythingIsWritten) {
  // An adapter for another model: the embedding fixture targets 'emb', absent here.
  expect_refused(options(make_base("neumann_t5"), "embedding", "out1"),
                 "no tensor for adapter module 'emb'");
  // Existing output without --force.
  {
    const fs::path base = make_base("neumann_t5");
    fs::create_directories(root_ / "taken");
    std::ofstream(root_ / "taken" / "keep.txt") << "mine";
    auto o = options(base, "neumann_t5", "taken");
    try {
      oft::io::merge_model(o);
      ADD_FAILURE() << "existing output accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos);
    }
    EXPECT_EQ(read_bytes(root_ / "taken" / "keep.txt"), "mine");
    o.force = true;
    oft::io::merge_model(o);
    EXPECT_FALSE(fs::exists(root_ / "taken" / "keep.txt"));
    EXPECT_TRUE(fs::exists(root_ / "taken" / "model.safetensors"));
  }
  // A 4-D (Conv2d) base tensor under the module's name.
  {
    const fs::path dir = root_ / "conv";
    fs::create_directories(dir);
    std::vector<float> w(16 * 2 * 3 * 4, 0.5f);
    SafetensorsWriter writer;
    for (const char* m : {"fc1", "fc2", "odd"})
      writer.add(std::string(m) + ".weight", {16, 2, 3, 4}, w.data());
    writer.write(dir / "model.safetensors");
    expect_refused(options(dir, "neumann_t5", "out3"), "Conv2d");
  }
  // Not a number for --strength, a missing base (an unknown dtype cannot be spelled: MergeDtype
  // is an enum; the command line's words are checked by tests/tools/check_cli.cmake).
  auto o = options(make_base("neumann_t5"), "neumann_t5", "out4");
  o.strength = std::numeric_limits<double>::quiet_NaN();
  expect_refused(o, "not finite");
  expect_refused(options(root_ / "nowhere", "neumann_t5", "out5"), "is not a directory");
}

TEST_F(ModelMerge, ShapeMismatchNamesTheTensorAndTheWidths) {
  const fs::path dir = root_ / "wide";
  fs::create_directories(dir);
  std::vector<float> w(32 * 25, 0.25f);
  SafetensorsWriter writer;
  writer.add("fc1.weight", {32, 25}, w.data());  // fc1's adapter rotates d = 24
  writer.add("fc2.weight", {16, 32}, w.data());
  writer.add("odd.weight", {12, 20}, w.data());
  writer.write(dir / "model.safetensors");
  expect_refused(options(dir, "neumann_t5", "out"), "base weight is 32x25");
}

}  // namespace

namespace quantized {

/// The quantized toy model (toy_model.hpp), with biases.
fs::path make_quantized_base(const fs::path& dir, const std::string& config_text) {
  oft_test::write_quantized_toy_model(dir, fixture("neumann_t5"), config_text, /*with_bias=*/true);
  return dir;
}

}  // namespace quantized

TEST_F(ModelMerge, QuantizedLayersAreMergedAndStoredInTheirOwnFormat) {
  const fs::path base =
      quantized::make_quantized_base(root_ / "qbase", "{\"model_type\": \"toy\"}\n");
  auto o = options(base, "neumann_t5", "qout");
  const auto report = oft::io::merge_model(o);
  ASSERT_EQ(report.quantized.size(), 3u);
  EXPECT_EQ(report.adapted.size(), 3u);

  const auto in = SafetensorsFile::open(base / "model.safetensors");
  const auto out = SafetensorsFile::open(fs::path(o.out) / "model.safetensors");
  EXPECT_EQ(in.tensor_names(), out.tensor_names());  // the same keys, nothing added or lost
  const auto adapter = oft::io::PeftOftAdapter::load(fixture("neumann_t5"));
  const auto reference = SafetensorsFile::open(fixture("neumann_t5") / "reference.safetensors");
  for (const auto& m : adapter.modules) {
    SCOPED_TRACE(m.name);
    // What the merge must store: the base's layer, dequantized, merged, requantized like it.
    const oft::io::StoredLinear layer = oft::io::read_linear(in, m.name);
    const std::vector<float> w = layer.dequantized();
    const oft::RowMatrix<float> merged =
        adapter.merge(m, oft::ConstMatrixView<float>(w.data(), layer.rows(), layer.cols()));
    const oft::io::StoredLinear expected = oft::io::requantized_like(
        layer, std::vector<float>(merged.data(), merged.data() + merged.size()));
    for (const auto& t : oft::io::write_linear_tensors(expected)) {
      SCOPED_TRACE(t.name);
      EXPECT_EQ(out.tensor(t.name).shape, t.shape);
      EXPECT_EQ(tensor_bytes(out, t.name),
                std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size()));
    }
    EXPECT_EQ(tensor_bytes(out, m.name + ".bias"), tensor_bytes(in, m.name + ".bias"));

    // The stored result is PEFT's merge up to quantization: much nearer to it than the unrotated
    // base is (a transposed, unrotated or R^T-rotated merge would not be).
    const oft::io::StoredLinear back = oft::io::read_linear(out, m.name);
    EXPECT_STREQ(back.format(), layer.format());
    const std::vector<float> got = back.dequantized();
    const std::vector<float> peft = reference.tensor(m.name + ".merged").to_floats();
    const std::vector<float> original = reference.tensor(m.name + ".base").to_floats();
    double to_peft = 0, change = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      to_peft += std::pow(double(got[i]) - double(peft[i]), 2);
      change += std::pow(double(peft[i]) - double(original[i]), 2);
    }
    // Measured: 0.19 (NF4), 0.17 (FP4), 0.008 (int8); with no rotation it would be 1 plus the
    // quantization noise.
    const double bound = std::string(layer.format()) == "int8" ? 0.02 : 0.3;
    EXPECT_LT(std::sqrt(to_peft), bound * std::sqrt(change))
        << "RMS distance to PEFT's float merge vs its change";
  }
  for (const auto& q : report.quantized) {
    SCOPED_TRACE(q.layer);
    EXPECT_GT(q.max_error, 0.0);
    EXPECT_GE(q.max_error, q.rms_error);
    EXPECT_GT(q.rms_change, q.rms_error);
    EXPECT_EQ(q.double_quant, q.layer == "fc1");
  }

  // Unmerging the merged, quantized model gives back the base up to two requantizations.
  auto u = options(o.out, "neumann_t5", "qback");
  u.unmerge = true;
  oft::io::merge_model(u);
  const auto restored = SafetensorsFile::open(fs::path(u.out) / "model.safetensors");
  for (const char* m : {"fc1", "fc2", "odd"}) {
    const std::vector<float> a = oft::io::read_linear(restored, m).dequantized();
    const std::vector<float> b = oft::io::read_linear(in, m).dequantized();
    double d = 0, s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      d += std::pow(double(a[i]) - double(b[i]), 2);
      s += std::pow(double(b[i]), 2);
    }
    EXPECT_LT(std::sqrt(d / s), std::string(m) == "fc2" ? 0.012 : 0.2)
        << m;  // measured 0.006, 0.13-0.16
  }
}

TEST_F(ModelMerge, QuantizedLayersAreCheckedBeforeAnythingIsWritten) {
  // quantization_config disagreeing with a layer (fc1 is NF4 with double quantization).
  const fs::path base = quantized::make_quantized_base(
      root_ / "qbad",
      R"({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "fp4"}})");
  expect_refused(options(base, "neumann_t5", "qout1"),
                 "fc1' is nf4, quantization_config says bnb_4bit_quant_type \"fp4\"");

  // A quant_state whose shape disagrees with the packed weight.
  const fs::path dir = root_ / "qbad2";
  fs::create_directories(dir);
  const auto good = SafetensorsFile::open(
      quantized::make_quantized_base(root_ / "qgood", "{}\n") / "model.safetensors");
  SafetensorsWriter writer;
  const std::string bad_state =
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [32, 26],
      "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1})";
  for (const std::string& name : good.tensor_names()) {
    if (name == "fc1.weight.quant_state.bitsandbytes__nf4")
      writer.add(name, Dtype::U8, {bad_state.size()}, bad_state.data(), bad_state.size());
    else
      writer.add(name, good.tensor(name));
  }
  writer.write(dir / "model.safetensors");
  expect_refused(options(dir, "neumann_t5", "qout2"), "a 32x26 nf4 weight needs 416");

  // A GPTQ/AWQ layer (qweight, no weight): refused with the reason, nothing written.
  const fs::path gptq = root_ / "qgptq";
  fs::create_directories(gptq);
  SafetensorsWriter w2;
  std::vector<std::int32_t> words(3 * 32, 0x12345678);
  w2.add("fc1.qweight", Dtype::I32, {3, 32}, words.data(), words.size() * 4);
  for (const std::string& name : good.tensor_names())
    if (name.rfind("fc1.", 0) != 0) w2.add(name, good.tensor(name));
  w2.write(gptq / "model.safetensors");
  expect_refused(options(gptq, "neumann_t5", "qout3"), "'fc1' is stored as GPTQ/AWQ int4");
}

// Reading a linear layer's frozen weight from a checkpoint by the real key names
// (include/oft/io/quantized_weights.hpp), against the state dicts of real bitsandbytes 0.50.2
// layers: fixtures/bnb4_layers.safetensors (make_bnb4_double_fixtures.py) holds Linear4bit layers
// (NF4 with and without double quantization, FP4 with it, a float16 NF4 layer) and a Linear8bitLt,
// each with the weight bitsandbytes dequantizes it to. Read, each must dequantize to those bits;
// written back, each must give the same tensors; every inconsistency a checkpoint can have must be
// refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <oft/io/quantized_weights.hpp>
#include <oft/io/safetensors.hpp>
#include <string>
#include <vector>

namespace {

using oft::io::Dtype;
using oft::io::StoredTensor;
using oft::io::TensorView;

const oft::io::SafetensorsFile& fixture() {
  static const oft::io::SafetensorsFile file = oft::io::SafetensorsFile::open(
      std::string(OFT_QUANT_FIXTURES_DIR) + "/bnb4_layers.safetensors");
  return file;
}

/// A checkpoint in memory (the fixture's tensors, to be edited into broken ones).
struct MemorySource {
  std::map<std::string, StoredTensor> tensors;

  static MemorySource from_fixture() {
    MemorySource m;
    for (const std::string& name : fixture().tensor_names()) {
      const TensorView v = fixture().tensor(name);
      StoredTensor t{name, v.dtype, v.shape, std::vector<std::byte>(v.data, v.data + v.bytes)};
      m.tensors[name] = std::move(t);
    }
    return m;
  }
  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  TensorView tensor(const std::string& name) const {
    const StoredTensor& t = tensors.at(name);
    TensorView v;
    v.file = "memory";
    v.name = name;
    v.dtype = t.dtype;
    v.shape = t.shape;
    v.data = t.bytes.data();
    v.bytes = t.bytes.size();
    return v;
  }
  void put(const StoredTensor& t) { tensors[t.name] = t; }
  void put_text(const std::string& name, const std::string& text) {
    put(StoredTensor{
        name,
        Dtype::U8,
        {text.size()},
        std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                               reinterpret_cast<const std::byte*>(text.data()) + text.size())});
  }
  std::string text(const std::string& name) const {
    const StoredTensor& t = tensors.at(name);
    return std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
};

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}

/// FP4's zero code comes back as +0.0 from oft and as +0.0 or -0.0 from bitsandbytes' kernels
/// (docs/quant.md); everything else is compared bit for bit.
std::vector<float> signless_zero(std::vector<float> v) {
  for (float& x : v) x = (x == 0.0f) ? 0.0f : x;
  return v;
}

const char* const kQ = "model.layers.0.q_proj";    // NF4, double quantization, float32
const char* const kK = "model.layers.0.k_proj";    // NF4, blocksize 128, plain absmax
const char* const kV = "model.layers.0.v_proj";    // FP4, blocksize 32, double quantization
const char* const kUp = "model.layers.0.up_proj";  // NF4, double quantization, float16 model
const char* const kO = "model.layers.0.o_proj";    // LLM.int8

TEST(QuantizedCheckpoint, LayersDequantizeToBitsandbytesBitForBit) {
  struct Case {
    const char* prefix;
    const char* format;
    oft::Index rows, cols;
    bool nested;
  };
  for (const Case& c : {Case{kQ, "nf4", 48, 64, true}, Case{kK, "nf4", 40, 96, false},
                        Case{kV, "fp4", 24, 33, true}, Case{kUp, "nf4", 40, 80, true},
                        Case{kO, "int8", 32, 48, false}}) {
    SCOPED_TRACE(c.prefix);
    const oft::io::StoredLinear layer = oft::io::read_linear(fixture(), c.prefix);
    EXPECT_STREQ(layer.format(), c.format);
    EXPECT_EQ(layer.rows(), c.rows);
    EXPECT_EQ(layer.cols(), c.cols);
    EXPECT_EQ(layer.nested.has_value(), c.nested);
    EXPECT_TRUE(layer.quantized());
    const std::vector<float> expected =
        fixture().tensor(std::string("ref.") + c.prefix + ".dequant").to_floats();
    EXPECT_EQ(bits(signless_zero(layer.dequantized())), bits(signless_zero(expected)));
    EXPECT_EQ(bits(layer.bias),
              bits(fixture().tensor(std::string(c.prefix) + ".bias").to_floats()));
  }
}

TEST(QuantizedCheckpoint, Float16LayerIsRoundedToFloat16) {
  // Without the quant_state's dtype the values would be code * absmax in float32: not what
  // bitsandbytes multiplies by in a float16 model.
  const oft::io::StoredLinear layer = oft::io::read_linear(fixture(), kUp);
  EXPECT_EQ(std::get<oft::quant::Bnb4Base>(layer.base).dtype(), oft::quant::DequantDtype::F16);
  oft::quant::Bnb4Base as_float32(std::get<oft::quant::Bnb4Base>(layer.base).tensor(), layer.rows(),
                                  layer.cols());
  const std::vector<float> unrounded = oft::quant::dequantize_all<float>(as_float32);
  const std::vector<float> expected =
      fixture().tensor(std::string("ref.") + kUp + ".dequant").to_floats();
  EXPECT_NE(bits(unrounded), bits(expected));
}

TEST(QuantizedCheckpoint, WrittenBackAsStored) {
  for (const char* prefix : {kQ, kK, kV, kUp, kO}) {
    SCOPED_TRACE(prefix);
    const oft::io::StoredLinear layer = oft::io::read_linear(fixture(), prefix);
    const std::vector<StoredTensor> written = oft::io::write_linear_tensors(layer);
    EXPECT_GE(written.size(), 2u);
    for (const StoredTensor& t : written) {
      SCOPED_TRACE(t.name);
      ASSERT_TRUE(fixture().contains(t.name));
      const TensorView v = fixture().tensor(t.name);
      EXPECT_EQ(t.dtype, v.dtype);
      if (t.name.find(".quant_state.") !=
          std::string::npos) {  // the same JSON, maybe spaced otherwise
        const std::string stored(reinterpret_cast<const char*>(v.data), v.bytes);
        EXPECT_EQ(nlohmann::json::parse(
                      std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size())),
                  nlohmann::json::parse(stored));
        continue;
      }
      EXPECT_EQ(t.shape, v.shape);
      ASSERT_EQ(t.bytes.size(), v.bytes);
      EXPECT_EQ(std::memcmp(t.bytes.data(), v.data, v.bytes), 0);
    }
  }
}

TEST(QuantizedCheckpoint, RequantizedLayerReadsBackInTheSameFormat) {
  for (const char* prefix : {kQ, kK, kV, kUp, kO}) {
    SCOPED_TRACE(prefix);
    const oft::io::StoredLinear layer = oft::io::read_linear(fixture(), prefix);
    std::vector<float> changed = layer.dequantized();
    for (std::size_t i = 0; i < changed.size(); ++i)
      changed[i] *= 1.0f + 0.01f * std::sin(float(i));
    const oft::io::StoredLinear requantized = oft::io::requantized_like(layer, changed);
    MemorySource m = MemorySource::from_fixture();
    for (const StoredTensor& t : oft::io::write_linear_tensors(requantized)) m.put(t);
    const oft::io::StoredLinear back = oft::io::read_linear(m, prefix);
    EXPECT_STREQ(back.format(), layer.format());
    EXPECT_EQ(back.nested.has_value(), layer.nested.has_value());
    EXPECT_EQ(bits(back.dequantized()), bits(requantized.dequantized()));
    if (layer.nested) {
      EXPECT_EQ(back.nested->offset, requantized.nested->offset);
      EXPECT_NE(back.nested->offset, layer.nested->offset);  // the offset of the new absmax
    }
    // Each value within the format's step of the float weight: half an NF4/FP4 step is at most
    // ~0.17 absmax (FP4's widest gap 4/12 .. 6/12, halved), an int8 step is absmax/127.
    const std::vector<float> got = back.dequantized();
    double worst = 0;
    double scale = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      worst = std::max(worst, std::fabs(double(got[i]) - double(changed[i])));
      scale = std::max(scale, std::fabs(double(changed[i])));
    }
    EXPECT_LE(worst, (std::string(layer.format()) == "int8" ? 0.5 / 127 : 0.17) * scale * 1.01);
    EXPECT_GT(worst, 0.0);
  }
}

template <class F>
void expect_refused(const MemorySource& m, const char* prefix, const std::string& needle,
                    const oft::io::QuantizationConfig& config, F&&) {
  try {
    (void)oft::io::read_linear(m, prefix, config);
    ADD_FAILURE() << "no exception; expected one saying: " << needle;
  } catch (const oft::io::format_error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

void expect_refused(const MemorySource& m, const char* prefix, const std::string& needle,
                    const oft::io::QuantizationConfig& config = {}) {
  expect_refused(m, prefix, needle, config, 0);
}

std::string state_key(const char* prefix, const char* type = "nf4") {
  return std::string(prefix) + ".weight.quant_state.bitsandbytes__" + type;
}

TEST(QuantizedCheckpoint, InconsistentQuantStateIsRefused) {
  const MemorySource good = MemorySource::from_fixture();
  const std::string q_state = good.text(state_key(kQ));
  const auto with_state = [&](const std::string& from, const std::string& to) {
    MemorySource m = good;
    std::string text = q_state;
    const std::size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    m.put_text(state_key(kQ), text);
    return m;
  };
  expect_refused(with_state("\"quant_type\": \"nf4\"", "\"quant_type\": \"fp4\""), kQ,
                 "says quant_type \"fp4\", its key says \"nf4\"");
  expect_refused(with_state("\"shape\": [48, 64]", "\"shape\": [48, 66]"), kQ,
                 "(1536 values); a 48x66 nf4 weight needs 1584");
  expect_refused(with_state("\"blocksize\": 64", "\"blocksize\": 48"), kQ,
                 "blocksize 48, which bitsandbytes does not allow");
  expect_refused(with_state("\"blocksize\": 64", "\"blocksize\": 32"), kQ,
                 "absmax' has shape [48] (48 values)");
  expect_refused(with_state("\"shape\": [48, 64]", "\"shape\": [48]"), kQ, "expected [out, in]");
  expect_refused(with_state("\"nested_offset\"", "\"nested_offsett\""), kQ,
                 "has no \"nested_offset\"");
  expect_refused(with_state("\"dtype\": \"float32\"", "\"dtype\": \"int8\""), kQ,
                 "has dtype \"int8\"");
  expect_refused(with_state("{", "["), kQ, "is not valid JSON");

  MemorySource m = good;  // nested_absmax of the wrong count
  m.put(StoredTensor{
      std::string(kQ) + ".weight.nested_absmax", Dtype::F32, {2}, std::vector<std::byte>(8)});
  expect_refused(m, kQ, "48 absmax in nested blocks of 256 needs 1");
  m = good;  // absmax stored as float although the state is doubly quantized
  m.put(StoredTensor{
      std::string(kQ) + ".weight.absmax", Dtype::F32, {48}, std::vector<std::byte>(48 * 4)});
  expect_refused(m, kQ, "is F32, expected U8");
  m = good;  // a code that is not NF4's
  StoredTensor code = m.tensors.at(std::string(kQ) + ".weight.quant_map");
  code.bytes[5] ^= std::byte{1};
  m.put(code);
  expect_refused(m, kQ, "is not bitsandbytes' nf4 code");
  m = good;  // plain absmax of the wrong length
  m.put(StoredTensor{
      std::string(kK) + ".weight.absmax", Dtype::F32, {29}, std::vector<std::byte>(29 * 4)});
  expect_refused(m, kK, "a 40x96 nf4 weight in blocks of 128 needs 30");
  m = good;  // truncated packed weight
  StoredTensor packed = m.tensors.at(std::string(kV) + ".weight");
  packed.bytes.pop_back();
  packed.shape = {packed.bytes.size(), 1};
  m.put(packed);
  expect_refused(m, kV, "a 24x33 fp4 weight needs 396");
  m = good;  // missing tensor
  m.tensors.erase(std::string(kQ) + ".weight.nested_quant_map");
  expect_refused(m, kQ, "has no tensor 'model.layers.0.q_proj.weight.nested_quant_map'");
  m = good;  // a bias of the wrong length
  m.put(StoredTensor{std::string(kQ) + ".bias", Dtype::F32, {47}, std::vector<std::byte>(47 * 4)});
  expect_refused(m, kQ, "one bias per output row needs 48");
}

TEST(QuantizedCheckpoint, Int8InconsistenciesAreRefused) {
  const MemorySource good = MemorySource::from_fixture();
  MemorySource m = good;
  m.put(StoredTensor{std::string(kO) + ".SCB", Dtype::F32, {31}, std::vector<std::byte>(31 * 4)});
  expect_refused(m, kO, "one scale per row of model.layers.0.o_proj.weight [32, 48] needs 32");
  m = good;
  m.put(StoredTensor{
      std::string(kO) + ".weight_format", Dtype::U8, {}, std::vector<std::byte>{std::byte{1}}});
  expect_refused(m, kO, "only 0 (row-major int8)");
  m = good;
  StoredTensor w = m.tensors.at(std::string(kO) + ".weight");
  w.dtype = Dtype::U8;
  m.put(w);
  expect_refused(m, kO, "is U8, expected I8");
}

TEST(QuantizedCheckpoint, QuantizationConfigIsCrossChecked) {
  const MemorySource m = MemorySource::from_fixture();
  const auto config = [](const char* json) {
    return oft::io::QuantizationConfig::from_json(nlohmann::json::parse(json));
  };
  const auto nf4_dq =
      config(R"({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true,
      "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true}})");
  EXPECT_NO_THROW((void)oft::io::read_linear(m, kQ, nf4_dq));
  expect_refused(m, kK,
                 "is not doubly quantized, quantization_config says bnb_4bit_use_double_quant true",
                 nf4_dq);
  expect_refused(m, kV, "is fp4, quantization_config says bnb_4bit_quant_type \"nf4\"", nf4_dq);
  expect_refused(m, kO, "is LLM.int8, quantization_config says load_in_4bit", nf4_dq);
  const auto int8 = config(R"({"quant_method": "bitsandbytes", "load_in_8bit": true})");
  EXPECT_NO_THROW((void)oft::io::read_linear(m, kO, int8));
  expect_refused(m, kQ, "is 4-bit, quantization_config says load_in_8bit", int8);
  EXPECT_EQ(config(R"({"hidden_size": 384})").method, "");
  EXPECT_THROW(config(R"({"quantization_config": {"quant_method": 4}})"), oft::io::format_error);
  EXPECT_THROW(
      config(R"({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": "yes"}})"),
      oft::io::format_error);
}

}  // namespace

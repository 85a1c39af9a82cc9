// GPTQ and AWQ int4 layers read from checkpoints by their real key names
// (include/oft/io/quantized_weights.hpp over quant/int4_group.hpp and int4_base.hpp), against the real
// quantization libraries: fixtures/gptq_reference.safetensors holds random GPTQ v1 layers (act-order
// and group size -1 included) and the float16 weights AutoGPTQ 0.7.1's torch path dequantizes them
// to (make_gptq_fixtures.py); fixtures/awq_reference.safetensors holds random AWQ GEMM layers and
// AutoAWQ 0.2.9's dequantize_gemm output (make_awq_fixtures.py). Every value must be equal, bit
// for bit, through the reader, the base and the whole-tensor reference.
#include <gtest/gtest.h>
#include <oft/io/half.hpp>
#include <oft/io/quantized_weights.hpp>
#include <oft/io/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

using oft::io::SafetensorsFile;

const SafetensorsFile& fixture(const std::string& name) {
  static const SafetensorsFile gptq =
      SafetensorsFile::open(std::string(OFT_QUANT_FIXTURES_DIR) + "/gptq_reference.safetensors");
  static const SafetensorsFile awq =
      SafetensorsFile::open(std::string(OFT_QUANT_FIXTURES_DIR) + "/awq_reference.safetensors");
  return name == "gptq" ? gptq : awq;
}

/// The layers of a fixture ("g<group>_<in>x<out>[_act]") and their group sizes.
std::vector<std::pair<std::string, long long>> layers(const SafetensorsFile& f) {
  std::vector<std::pair<std::string, long long>> out;
  for (const std::string& name : f.tensor_names()) {
    const std::string suffix = ".qweight";
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string layer = name.substr(0, name.size() - suffix.size());
    out.emplace_back(layer, std::stoll(layer.substr(1, layer.find('_') - 1)));
  }
  return out;
}

oft::io::QuantizationConfig config(const std::string& method, long long group_size) {
  nlohmann::json q = {{"quant_method", method}, {"bits", 4}, {"group_size", group_size}};
  if (method == "awq") q["version"] = "gemm";
  return oft::io::QuantizationConfig::from_json({{"quantization_config", q}});
}

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}

std::string bytes_of(const oft::io::TensorView& v) { return std::string(reinterpret_cast<const char*>(v.data), v.bytes); }

TEST(Int4Reference, LayersDequantizeAsAutoGptqAndAutoAwqBitForBit) {
  for (const std::string method : {"gptq", "awq"}) {
    const SafetensorsFile& f = fixture(method);
    const auto found = layers(f);
    ASSERT_EQ(found.size(), method == "gptq" ? 5u : 4u);
    for (const auto& [layer, group_size] : found) {
      SCOPED_TRACE(method + " " + layer);
      const oft::io::StoredLinear stored = oft::io::read_linear(f, layer, config(method, group_size));
      EXPECT_STREQ(stored.format(), method.c_str());
      const std::vector<float> expected = f.tensor("ref." + layer + ".weight").to_floats();
      EXPECT_EQ(static_cast<std::size_t>(stored.rows() * stored.cols()), expected.size());
      EXPECT_EQ(bits(stored.dequantized()), bits(expected));
      const auto& base = std::get<oft::quant::Int4GroupBase>(stored.base);
      EXPECT_EQ(bits(oft::quant::dequantize_int4_group(base.tensor())), bits(expected));
      EXPECT_EQ(base.act_order(), layer.find("_act") != std::string::npos);
      // Written back: the same tensors, byte for byte.
      for (const oft::io::StoredTensor& t : oft::io::write_linear_tensors(stored)) {
        SCOPED_TRACE(t.name);
        ASSERT_TRUE(f.contains(t.name));
        EXPECT_EQ(t.shape, f.tensor(t.name).shape);
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size()), bytes_of(f.tensor(t.name)));
      }
    }
  }
}

TEST(Int4Reference, TheConfigDecidesTheLayoutAndBadConfigsAreRefused) {
  const SafetensorsFile& gptq = fixture("gptq");
  const std::string layer = "g32_64x32";
  const auto refused = [&](const oft::io::QuantizationConfig& c, const std::string& needle) {
    try {
      (void)oft::io::read_linear(gptq, layer, c);
      ADD_FAILURE() << "no exception; expected: " << needle;
    } catch (const oft::io::format_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused({}, "has a qweight (GPTQ or AWQ int4), but no quantization_config says which");
  const auto json = [](const char* text) {
    return oft::io::QuantizationConfig::from_json(nlohmann::json::parse(text));
  };
  refused(json(R"({"quant_method": "gptq", "bits": 8, "group_size": 32})"), "bits 8; oft reads 4-bit");
  refused(json(R"({"quant_method": "gptq", "bits": 4})"), "has no group_size");
  refused(json(R"({"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "marlin"})"),
          "checkpoint_format \"marlin\"");
  refused(json(R"({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"})"), "AWQ version \"gemv\"");
  refused(json(R"({"quant_method": "gptq", "bits": 4, "group_size": 48})"), "group_size 48 does not divide in = 64");
  // The same words read as gptq_v2 (zeros not stored minus one) give other values: the config
  // decides, and v1 is what AutoGPTQ wrote.
  const auto v2 = oft::io::read_linear(
      gptq, layer, json(R"({"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "gptq_v2"})"));
  EXPECT_NE(bits(v2.dequantized()), bits(gptq.tensor("ref." + layer + ".weight").to_floats()));
  // AWQ's config keys as AutoAWQ writes them in quant_config.json (w_bit, q_group_size).
  const auto awq = oft::io::read_linear(fixture("awq"), "g32_64x32",
                                        json(R"({"quant_method": "awq", "w_bit": 4, "q_group_size": 32, "version": "gemm"})"));
  EXPECT_STREQ(awq.format(), "awq");
}

TEST(Int4Reference, MergingIntoGptqOrAwqIsRefusedWithTheReason) {
  const oft::io::StoredLinear stored = oft::io::read_linear(fixture("gptq"), "g32_64x32", config("gptq", 32));
  try {
    (void)oft::io::requantized_like(stored, stored.dequantized());
    ADD_FAILURE() << "requantized a GPTQ layer";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("calibration data"), std::string::npos) << e.what();
  }
}

}  // namespace

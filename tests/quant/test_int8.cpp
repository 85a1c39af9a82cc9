// bitsandbytes' LLM.int8 weight format (include/oft/quant/int8.hpp) against the real bitsandbytes
// 0.50.2: fixtures/int8_reference.safetensors holds its int8_vectorwise_quant (CB, SCB) and
// int8_vectorwise_dequant outputs, and the state dict of a Linear8bitLt, for random and real
// (all-MiniLM-L6-v2) weights, halfway cases, tiny values and a 1x1 weight (made by
// make_int8_fixtures.py). Quantization must give the same int8 values and scales, dequantization
// the same float32 bits.
#include <gtest/gtest.h>
#include <oft/io/half.hpp>
#include <oft/io/safetensors.hpp>
#include <oft/quant/int8.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using oft::io::SafetensorsFile;
using oft::quant::Int8Tensor;

const SafetensorsFile& reference() {
  static const SafetensorsFile file =
      SafetensorsFile::open(std::string(OFT_QUANT_FIXTURES_DIR) + "/int8_reference.safetensors");
  return file;
}

template <class T>
std::vector<T> values(const std::string& name) {
  return reference().tensor(name).copy_as<T>();
}

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}

std::vector<std::string> cases() {
  std::vector<std::string> out;
  for (const std::string& name : reference().tensor_names())
    if (name.size() > 2 && name.compare(name.size() - 2, 2, ".w") == 0) out.push_back(name.substr(0, name.size() - 2));
  return out;
}

TEST(Int8, QuantizeAndDequantizeEqualBitsandbytesBitForBit) {
  const std::vector<std::string> names = cases();
  ASSERT_EQ(names.size(), 5u);
  for (const std::string& c : names) {
    SCOPED_TRACE(c);
    const auto& shape = reference().tensor(c + ".w").shape;
    ASSERT_EQ(shape.size(), 2u);
    const std::vector<float> w = values<float>(c + ".w");
    const Int8Tensor q = oft::quant::quantize_int8(w.data(), static_cast<oft::Index>(shape[0]),
                                                   static_cast<oft::Index>(shape[1]));
    EXPECT_EQ(q.values, values<std::int8_t>(c + ".CB"));
    EXPECT_EQ(bits(q.scales), bits(values<float>(c + ".SCB")));
    EXPECT_EQ(bits(oft::quant::dequantize_int8(q)), bits(values<float>(c + ".dequant")));
  }
}

// A Linear8bitLt casts its weight to float16 before quantizing; quantizing the widened fp16
// values gives its state dict (`weight`, `SCB`) exactly.
TEST(Int8, Linear8bitLtStateDictIsTheQuantizedFloat16Weight) {
  for (const std::string& c : cases()) {
    SCOPED_TRACE(c);
    const auto& shape = reference().tensor(c + ".w").shape;
    std::vector<float> w = values<float>(c + ".w");
    for (float& v : w) v = oft::io::to_float(oft::io::to_float16(v));
    const Int8Tensor q = oft::quant::quantize_int8(w.data(), static_cast<oft::Index>(shape[0]),
                                                   static_cast<oft::Index>(shape[1]));
    EXPECT_EQ(q.values, values<std::int8_t>(c + ".module.weight"));
    EXPECT_EQ(bits(q.scales), bits(values<float>(c + ".module.SCB")));
  }
}

TEST(Int8, HalfwayProductsRoundToEvenAndZeroRowsStayZero) {
  // absmax 127: the scale is 1, so the products are the values themselves.
  const std::vector<float> w = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const Int8Tensor q = oft::quant::quantize_int8(w.data(), 2, 6);
  EXPECT_EQ(q.values, (std::vector<std::int8_t>{127, 0, 2, 2, 0, -2, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(q.scales, (std::vector<float>{127.0f, 0.0f}));
  const std::vector<float> back = oft::quant::dequantize_int8(q);
  for (oft::Index j = 6; j < 12; ++j) EXPECT_EQ(back[static_cast<std::size_t>(j)], 0.0f);
}

TEST(Int8, BadInputIsRefusedWithTheSizes) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> w = {1.0f, nan, 2.0f, 3.0f};
  try {
    (void)oft::quant::quantize_int8(w.data(), 2, 2);
    ADD_FAILURE() << "a NaN weight was quantized";
  } catch (const std::domain_error& e) {
    EXPECT_NE(std::string(e.what()).find("value 1 (row 0) is not finite"), std::string::npos) << e.what();
  }
  Int8Tensor t = oft::quant::quantize_int8(w.data(), 1, 1);
  t.scales.push_back(1.0f);
  try {
    (void)oft::quant::dequantize_int8(t);
    ADD_FAILURE() << "2 scales for 1 row were accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("SCB has 2 values for 1 rows"), std::string::npos) << e.what();
  }
  t.scales.pop_back();
  t.values.push_back(3);
  EXPECT_THROW((void)oft::quant::dequantize_int8(t), std::invalid_argument);
}

}  // namespace

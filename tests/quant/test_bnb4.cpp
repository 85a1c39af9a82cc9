// bitsandbytes' NF4/FP4 (include/oft/quant/bnb4.hpp) against the real bitsandbytes 0.50.2:
// fixtures/bnb4_reference.safetensors holds its quantize_4bit and dequantize_4bit outputs for
// random and real (all-MiniLM-L6-v2) weights, every allowed block size, odd and ragged sizes,
// zeros and ties (made by make_bnb4_fixtures.py). Quantization must give the same bytes and
// absmax, dequantization the same float32 bits.
#include <gtest/gtest.h>
#include <oft/io/safetensors.hpp>
#include <oft/quant/bnb4.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using oft::io::SafetensorsFile;
using oft::quant::Bnb4Tensor;
using oft::quant::Bnb4Type;

const SafetensorsFile& reference() {
  static const SafetensorsFile file =
      SafetensorsFile::open(std::string(OFT_QUANT_FIXTURES_DIR) + "/bnb4_reference.safetensors");
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

TEST(Bnb4, CodesEqualBitsandbytes) {
  for (Bnb4Type type : {Bnb4Type::NF4, Bnb4Type::FP4}) {
    const std::vector<float> expected = values<float>(std::string("code.") + oft::quant::name(type));
    const auto& code = oft::quant::bnb4_code(type);
    EXPECT_EQ(bits(std::vector<float>(code.begin(), code.end())), bits(expected)) << oft::quant::name(type);
  }
}

TEST(Bnb4, QuantizeAndDequantizeEqualBitsandbytesBitForBit) {
  int compared = 0, dequantized = 0;
  for (const std::string& name : reference().tensor_names()) {
    const std::string suffix = ".packed";
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    // <case>.<type>.bs<blocksize>.packed (the ".nested" ones: DoubleQuantizedAbsmax below)
    const std::string key = name.substr(0, name.size() - suffix.size());
    if (key.size() > 7 && key.compare(key.size() - 7, 7, ".nested") == 0) continue;
    const std::size_t bs_at = key.rfind(".bs");
    const std::size_t type_at = key.rfind('.', bs_at - 1);
    const std::string case_name = key.substr(0, type_at);
    const std::string type_name = key.substr(type_at + 1, bs_at - type_at - 1);
    const oft::Index blocksize = std::stol(key.substr(bs_at + 3));
    const Bnb4Type type = type_name == "nf4" ? Bnb4Type::NF4 : Bnb4Type::FP4;
    SCOPED_TRACE(key);

    const std::vector<float> w = values<float>(case_name + ".w");
    const Bnb4Tensor q = oft::quant::quantize_bnb4(w.data(), static_cast<oft::Index>(w.size()), blocksize, type);
    EXPECT_EQ(q.packed, values<std::uint8_t>(name));
    EXPECT_EQ(bits(q.absmax), bits(values<float>(key + ".absmax")));
    ++compared;

    if (reference().contains(key + ".dequant")) {
      std::vector<float> out(w.size());
      oft::quant::dequantize_bnb4(q, out.data());
      // Bit for bit, except the sign of a zero: bitsandbytes' own CPU dequantizer gives FP4's
      // value 8 as +0.0 (its Python fallback, odd widths, and its AVX-512 kernel) or -0.0 (its
      // scalar kernel, e.g. rows of 40); oft gives +0.0, get_4bit_type's code.
      const std::vector<float> expected = values<float>(key + ".dequant");
      std::vector<float> signless_zero = expected;
      for (float& v : signless_zero) v = (v == 0.0f) ? 0.0f : v;
      EXPECT_EQ(bits(out), bits(signless_zero));
      ++dequantized;
    }
  }
  EXPECT_EQ(compared, 5 * 2 * 8 - 2 * 6);  // five weights x two types x eight block sizes, MiniLM at two
  EXPECT_EQ(dequantized, 4 * 2 * 2 + 2);  // block sizes 32 and 64, MiniLM at 64 only
}

TEST(Bnb4, DoubleQuantizedAbsmaxReadsBackAsBitsandbytes) {
  int compared = 0;
  for (const std::string case_name : {"odd_7x33", "wide_33x97", "special_2x40", "minilm_query_24x384"}) {
    for (Bnb4Type type : {Bnb4Type::NF4, Bnb4Type::FP4}) {
      const std::string key = case_name + "." + oft::quant::name(type) + ".bs64.nested";
      SCOPED_TRACE(key);
      const std::vector<std::uint8_t> qabsmax = values<std::uint8_t>(key + ".qabsmax");
      const std::vector<float> nested = values<float>(key + ".nested_absmax");
      const std::vector<float> code = values<float>(key + ".nested_code");
      ASSERT_EQ(code.size(), 256u);
      Bnb4Tensor t;
      t.type = type;
      t.blocksize = 64;
      t.packed = values<std::uint8_t>(key + ".packed");
      t.numel = static_cast<oft::Index>(values<float>(case_name + ".w").size());
      t.absmax = oft::quant::dequantize_bnb4_nested_absmax(
          qabsmax.data(), static_cast<oft::Index>(qabsmax.size()), nested.data(),
          static_cast<oft::Index>(nested.size()), code.data(), values<float>(key + ".offset")[0]);
      std::vector<float> out(static_cast<std::size_t>(t.numel));
      oft::quant::dequantize_bnb4(t, out.data());
      std::vector<float> expected = values<float>(key + ".dequant");
      for (float& v : expected) v = (v == 0.0f) ? 0.0f : v;  // zero sign: see above
      EXPECT_EQ(bits(out), bits(expected));
      ++compared;
    }
  }
  EXPECT_EQ(compared, 8);
  const std::uint8_t q[3] = {0, 1, 2};
  const float nested[1] = {1.0f}, code[256] = {};
  EXPECT_THROW(oft::quant::dequantize_bnb4_nested_absmax(q, 3, nested, 2, code, 0.0f),
               std::invalid_argument);
}

TEST(Bnb4, RefusesWhatBitsandbytesRefusesAndInconsistentSizes) {
  const std::vector<float> w(100, 0.5f);
  EXPECT_THROW(oft::quant::quantize_bnb4(w.data(), 100, 48, Bnb4Type::NF4), std::invalid_argument);
  EXPECT_THROW(oft::quant::quantize_bnb4(w.data(), 100, 8192, Bnb4Type::NF4), std::invalid_argument);
  std::vector<float> bad = w;
  bad[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(oft::quant::quantize_bnb4(bad.data(), 100, 64, Bnb4Type::FP4), std::domain_error);

  Bnb4Tensor q = oft::quant::quantize_bnb4(w.data(), 100, 64, Bnb4Type::NF4);
  std::vector<float> out(100);
  Bnb4Tensor short_absmax = q;
  short_absmax.absmax.pop_back();
  try {
    oft::quant::dequantize_bnb4(short_absmax, out.data());
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("absmax has 1 values for 100 values in blocks of 64 (expected 2)"),
              std::string::npos)
        << e.what();
  }
  Bnb4Tensor truncated = q;
  truncated.packed.resize(49);
  EXPECT_THROW(oft::quant::dequantize_bnb4(truncated, out.data()), std::invalid_argument);
}

}  // namespace

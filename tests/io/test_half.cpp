// The 16-bit float conversions (io/half.hpp): widening is exact for every one of the 65536
// encodings (checked against an independent decoding by ldexp), narrowing rounds to nearest
// with ties to even (checked at every midpoint between adjacent values), and both agree with
// numpy's float16 and ml_dtypes' bfloat16 on the values of reference_conversions.safetensors.

#include <gtest/gtest.h>

#include <oft/io/safetensors.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "io_test_support.hpp"

namespace {

using namespace oft_io_test;
using oft::io::bf16_to_float;
using oft::io::f16_to_float;
using oft::io::float_to_bf16;
using oft::io::float_to_f16;

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
float float_of(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// binary16 decoded from its definition, in double: (-1)^s 2^(e-15) (1 + m/1024), or 2^-14 m/1024.
double f16_reference(std::uint16_t h) {
  const int sign = (h >> 15) != 0 ? -1 : 1;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 31) return m == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), -24);
  return sign * std::ldexp(1024.0 + m, e - 25);
}

TEST(Half, WideningIsExactForEveryF16) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = f16_to_float(static_cast<std::uint16_t>(h));
    const double want = f16_reference(static_cast<std::uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      EXPECT_EQ(bits_of(got) >> 31, h >> 15) << std::hex << h;                 // sign kept
      EXPECT_EQ((bits_of(got) >> 13) & 0x3ffu, h & 0x3ffu) << std::hex << h;   // payload kept
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h >> 15) != 0) << std::hex << h;  // -0 stays -0
    }
  }
}

TEST(Half, NarrowingInvertsWideningForEveryF16) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto back = float_to_f16(f16_to_float(static_cast<std::uint16_t>(h)));
    if (std::isnan(f16_reference(static_cast<std::uint16_t>(h))))
      EXPECT_EQ(back, static_cast<std::uint16_t>(h | 0x200u)) << std::hex << h;  // quieted, payload kept
    else
      ASSERT_EQ(back, h) << std::hex << h;
  }
}

TEST(Half, F16RoundsToNearestTiesToEvenAtEveryMidpoint) {
  // Adjacent positive finite halves a < b: their midpoint is exact in float (12 significant
  // bits) and must go to the even encoding; one float ulp either side goes to the nearer.
  for (std::uint16_t h = 0; h < 0x7bff; ++h) {
    const float a = f16_to_float(h), b = f16_to_float(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(a) + b) / 2);
    const std::uint16_t even = (h & 1u) == 0 ? h : static_cast<std::uint16_t>(h + 1);
    ASSERT_EQ(float_to_f16(mid), even) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(float_to_f16(-mid), even | 0x8000u) << std::hex << h;
  }
}

TEST(Half, F16OverflowAndUnderflow) {
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bff);  // below the midpoint to 2^16
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);                         // the tie goes to even: inf
  EXPECT_EQ(float_to_f16(1e30f), 0x7c00);
  EXPECT_EQ(float_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: tie to 0
  EXPECT_EQ(float_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_f16(-std::ldexp(1.0f, -26)), 0x8000);  // -0 keeps its sign
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_f16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
}

// The bulk conversions (F16C eight at a time where the build has it, then the scalar tail) give
// the scalar functions' bits. Counts that are not a multiple of 8 run the tail too; the byte
// buffers start one byte off so that unaligned loads and stores are exercised.
TEST(Half, BulkF16ConversionsEqualTheScalarOnes) {
  // Widening: every binary16, as one array of 65536 + 3.
  const std::size_t count = 0x10000 + 3;
  std::vector<std::byte> halves(2 * count + 1);
  for (std::size_t i = 0; i < count; ++i) {
    const auto h = static_cast<std::uint16_t>(i & 0xffffu);
    std::memcpy(halves.data() + 1 + 2 * i, &h, 2);
  }
  std::vector<float> widened(count);
  oft::io::detail::f16_to_floats(halves.data() + 1, count, widened.data());
  for (std::size_t i = 0; i < count; ++i)
    ASSERT_EQ(bits_of(widened[i]), bits_of(f16_to_float(static_cast<std::uint16_t>(i & 0xffffu))))
        << std::hex << i;

  // Narrowing: every float whose low 16 bits are one of the patterns around binary16's rounding
  // points (bit 12 is the midpoint of a normal result; bits 13 to 15 and the high half hold the
  // subnormal results' midpoints, which the enumeration of all high halves covers), and a stride
  // through all 2^32 bit patterns. Every NaN payload, infinity, subnormal and overflow is in it.
  const std::uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000,
                                0x2001, 0x3fff, 0x4000, 0x4001, 0x7fff, 0x8000, 0x8001,
                                0xbfff, 0xc000, 0xefff, 0xf000, 0xf001, 0xffff};
  std::vector<float> floats;
  for (std::uint32_t high = 0; high <= 0xffffu; ++high)
    for (std::uint32_t low : lows) floats.push_back(float_of((high << 16) | low));
  for (std::uint64_t bits = 0; bits <= 0xffffffffu; bits += 4099u)
    floats.push_back(float_of(static_cast<std::uint32_t>(bits)));
  floats.push_back(1.0f);  // an odd count: the scalar tail runs
  std::vector<std::byte> narrowed(2 * floats.size() + 1);
  oft::io::detail::floats_to_f16(floats.data(), floats.size(), narrowed.data() + 1);
  for (std::size_t i = 0; i < floats.size(); ++i) {
    std::uint16_t got;
    std::memcpy(&got, narrowed.data() + 1 + 2 * i, 2);
    ASSERT_EQ(got, float_to_f16(floats[i])) << std::hex << bits_of(floats[i]);
  }
}

TEST(Half, Bf16WideningIsExactAndNarrowingInvertsIt) {
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const float x = bf16_to_float(static_cast<std::uint16_t>(b));
    ASSERT_EQ(bits_of(x), b << 16) << std::hex << b;
    if (std::isnan(x))
      EXPECT_EQ(float_to_bf16(x), b | 0x40u) << std::hex << b;
    else
      ASSERT_EQ(float_to_bf16(x), b) << std::hex << b;
  }
}

TEST(Half, Bf16RoundsToNearestTiesToEven) {
  for (std::uint32_t b = 0; b < 0x7f7f; ++b) {
    const std::uint32_t mid = (b << 16) | 0x8000u;  // exactly between b and b + 1
    const std::uint32_t even = (b & 1u) == 0 ? b : b + 1;
    ASSERT_EQ(float_to_bf16(float_of(mid)), even) << std::hex << b;
    ASSERT_EQ(float_to_bf16(float_of(mid - 1)), b) << std::hex << b;
    ASSERT_EQ(float_to_bf16(float_of(mid + 1)), b + 1) << std::hex << b;
  }
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // above the last midpoint: inf
  EXPECT_EQ(float_to_bf16(float_of(0x7f7f7fffu)), 0x7f7f);
}

TEST(Half, AgreesWithNumpyAndMlDtypes) {
  const auto file = oft::io::SafetensorsFile::open(fixture("reference_conversions.safetensors"));
  const auto src = file.tensor("src").as<float>();
  const auto f16 = file.tensor("src_f16").as<oft::float16>();
  const auto bf16 = file.tensor("src_bf16").as<oft::bfloat16>();
  const auto f16_wide = file.tensor("src_f16_widened").as<float>();
  const auto bf16_wide = file.tensor("src_bf16_widened").as<float>();
  ASSERT_GT(src.size(), 1000u);
  ASSERT_EQ(f16.size(), src.size());
  ASSERT_EQ(bf16.size(), src.size());
  for (std::size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(float_to_f16(src[i]), oft::bits_of(f16[i])) << i << ": " << src[i];
    ASSERT_EQ(float_to_bf16(src[i]), oft::bits_of(bf16[i])) << i << ": " << src[i];
    ASSERT_EQ(bits_of(oft::io::to_float(f16[i])), bits_of(f16_wide[i])) << i;
    ASSERT_EQ(bits_of(oft::io::to_float(bf16[i])), bits_of(bf16_wide[i])) << i;
  }
  EXPECT_EQ(file.tensor("src_f16").to_floats(), std::vector<float>(f16_wide.begin(), f16_wide.end()));
}

}  // namespace

// One bfloat16 type from file to kernel: a BF16 tensor is viewed as oft::bfloat16 (Eigen's), the
// type the CPU kernels take, and Eigen's own conversions of it agree with oft's bit for bit.
TEST(Half, TensorsAreViewedAsTheOneSixteenBitTypes) {
  const auto file = oft::io::SafetensorsFile::open(fixture("reference_conversions.safetensors"));
  const auto src = file.tensor("src").as<float>();
  const auto f16 = file.tensor("src_f16").as<oft::float16>();
  const auto bf16 = file.tensor("src_bf16").as<oft::bfloat16>();
  static_assert(std::is_same_v<std::decay_t<decltype(bf16[0])>, Eigen::bfloat16>);
  static_assert(std::is_same_v<std::decay_t<decltype(f16[0])>, Eigen::half>);
  std::size_t nan_count = 0;
  for (std::size_t i = 0; i < src.size(); ++i) {
    if (std::isnan(src[i])) {
      ++nan_count;
      EXPECT_TRUE(std::isnan(static_cast<float>(bf16[i])));
      continue;
    }
    ASSERT_EQ(oft::bits_of(Eigen::bfloat16(src[i])), oft::bits_of(bf16[i])) << i << ": " << src[i];
    ASSERT_EQ(oft::bits_of(Eigen::half(src[i])), oft::bits_of(f16[i])) << i << ": " << src[i];
    ASSERT_EQ(bits_of(static_cast<float>(bf16[i])), bits_of(oft::to_float(bf16[i]))) << i;
    ASSERT_EQ(bits_of(static_cast<float>(f16[i])), bits_of(oft::to_float(f16[i]))) << i;
    ASSERT_EQ(oft::bits_of(oft::to_bfloat16(src[i])), oft::bits_of(bf16[i])) << i;
    ASSERT_EQ(oft::bits_of(oft::bfloat16_from_bits(oft::bits_of(bf16[i]))), oft::bits_of(bf16[i]));
  }
  EXPECT_LT(nan_count, src.size() / 10);
}

// The io-only names of earlier releases are deprecated aliases of the same types.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static_assert(std::is_same_v<oft::io::BFloat16, oft::bfloat16>);
static_assert(std::is_same_v<oft::io::Float16, oft::float16>);
#pragma GCC diagnostic pop

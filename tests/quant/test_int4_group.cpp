// GPTQ (v1, v2) and AWQ GEMM int4 weights (include/oft/quant/int4_group.hpp) and their frozen
// base (int4_base.hpp):
//  - tiny tensors with literal int32 words and float16 scales, dequantized values worked out by
//    hand (GPTQ v1's +1 on zeros, v2's stored zeros, AWQ's interleaved nibble order);
//  - an act-order g_idx is honoured; float16 rounding of (q - zero) * scale shows (ties to even,
//    overflow to infinity, a subnormal scale);
//  - pack -> unpack -> dequantize round trips against the direct formula on random codes;
//  - Int4GroupBase rectangles at odd offsets equal the whole-tensor dequantizer bit for bit;
//  - QoftLinear over Int4GroupBase equals OftLinear over the dequantized weight, and the fused
//    products equal dense products (same bounds as test_qoft_linear.cpp);
//  - refusals name the tensor, its shape and the expected one.
#include <gtest/gtest.h>

#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/io/half.hpp>
#include <oft/linear.hpp>
#include <oft/quant/frozen_base.hpp>
#include <oft/quant/int4_base.hpp>
#include <oft/quant/int4_group.hpp>
#include <oft/quant/qoft_linear.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft::quant::Int4GroupBase;
using oft::quant::Int4GroupTensor;
using oft::quant::Int4Layout;
using oft_test::Rng;
using oft_test::RowMat;

std::int32_t word(std::uint32_t bits) {
  std::int32_t w;
  std::memcpy(&w, &bits, sizeof w);
  return w;
}

float h2f(std::uint16_t h) { return oft::io::f16_to_float(h); }

std::uint32_t bits_of(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

std::vector<std::uint32_t> bits(const float* v, std::size_t n) {
  std::vector<std::uint32_t> out(n);
  std::memcpy(out.data(), v, n * sizeof(float));
  return out;
}

struct Expected {
  Index o, i;
  float value;
};

void expect_values(const std::vector<float>& w, Index in, const std::vector<Expected>& expected) {
  for (const Expected& e : expected)
    EXPECT_EQ(w[static_cast<std::size_t>(e.o * in + e.i)], e.value)
        << "W[" << e.o << ", " << e.i << "]";
}

// ------------------------------------------------------------------------------------------------
// 1. Hand-computed values.
// ------------------------------------------------------------------------------------------------

// out = 8, in = 16, group_size 8 (2 groups). qweight [in/8, out] = [2, 8]: word [k, o] holds inputs
// 8k..8k+7 of output o, lowest nibble first.
Int4GroupTensor tiny_gptq(Int4Layout version) {
  Int4GroupTensor t;
  t.layout = version;
  t.out = 8;
  t.in = 16;
  t.group_size = 8;
  const std::int32_t e8 = word(0x88888888u);  // every input q = 8
  t.qweight.rows = 2;
  t.qweight.cols = 8;
  t.qweight.values = {
      // inputs 0..7: output 0 has q = i; output 2 q = 15 at input 0; output 7 q = 15 at input 7
      word(0x76543210u), e8, word(0x0000000Fu), e8, e8, e8, e8, word(0xF0000000u),
      // inputs 8..15: output 0 q = 15 at input 8 (0 after); output 1 q = 8 + (i - 8)
      word(0x0000000Fu), word(0xFEDCBA98u), e8, e8, e8, e8, e8, e8};
  // qzeros [groups, out/8] = [2, 1]: nibble o is output o's stored zero.
  //   group 0: stored o;  group 1: stored 15 for output 0, 0 for the others.
  t.qzeros = {2, 1, {word(0x76543210u), word(0x0000000Fu)}};
  // scales [2, 8]: group 0: 1.0 (0x3C00) except output 2: 0.5 (0x3800);
  //                group 1: 2.0 (0x4000) except output 0: 0.25 (0x3400).
  t.scales.rows = 2;
  t.scales.cols = 8;
  t.scales.values = {0x3C00, 0x3C00, 0x3800, 0x3C00, 0x3C00, 0x3C00, 0x3C00, 0x3C00,  //
                     0x3400, 0x4000, 0x4000, 0x4000, 0x4000, 0x4000, 0x4000, 0x4000};
  t.g_idx = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  return t;
}

TEST(Int4Group, GptqV1HandComputedValues) {
  // v1: real zero = stored + 1. Group 0: zero(o) = o + 1. Group 1: zero(0) = 15 + 1 = 16, others 1.
  const Int4GroupTensor t = tiny_gptq(Int4Layout::GptqV1);
  const std::vector<float> w = oft::quant::dequantize_int4_group(t);
  ASSERT_EQ(w.size(), 128u);
  expect_values(
      w, 16,
      {
          {0, 0, -1.0f},   // q 0 (lowest nibble of 0x76543210), zero 1, scale 1; without +1: 0
          {0, 3, 2.0f},    // q 3, zero 1
          {0, 7, 6.0f},    // q 7 (highest nibble), zero 1; lowest-last order would give -1
          {1, 0, 6.0f},    // q 8, zero 2
          {2, 0, 6.0f},    // q 15, zero 3, scale 0.5: 12 * 0.5
          {2, 1, -1.5f},   // q 0, zero 3, scale 0.5
          {7, 7, 7.0f},    // q 15 (top nibble of 0xF0000000), zero 8
          {7, 6, -8.0f},   // q 0, zero 8
          {0, 8, -0.25f},  // q 15, zero 16 (stored 15 + 1, not wrapped to 0), scale 0.25
          {0, 9, -4.0f},   // q 0, zero 16, scale 0.25: -16 * 0.25
          {1, 8, 14.0f},   // q 8 (lowest nibble of 0xFEDCBA98), zero 1, scale 2
          {1, 15, 28.0f},  // q 15, zero 1, scale 2
          {5, 12, 14.0f},  // q 8, zero 1, scale 2
          {4, 5, 3.0f},    // q 8, zero 5, scale 1
      });
  // The zeros as plain integers: the +1 is applied once, and 16 is kept.
  const std::vector<std::int32_t> zeros = oft::quant::unpack_int4_zeros(t);
  EXPECT_EQ(zeros, (std::vector<std::int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 16, 1, 1, 1, 1, 1, 1, 1}));
}

TEST(Int4Group, GptqV2HandComputedValues) {
  // Same words, v2: the stored zero is the zero. Group 0: zero(o) = o. Group 1: 15 for output 0.
  const std::vector<float> w = oft::quant::dequantize_int4_group(tiny_gptq(Int4Layout::GptqV2));
  expect_values(w, 16,
                {
                    {0, 0, 0.0f},    // q 0, zero 0
                    {0, 3, 3.0f},    // q 3, zero 0
                    {0, 7, 7.0f},    // q 7, zero 0
                    {1, 0, 7.0f},    // q 8, zero 1
                    {2, 0, 6.5f},    // q 15, zero 2, scale 0.5
                    {2, 1, -1.0f},   // q 0, zero 2, scale 0.5
                    {7, 7, 8.0f},    // q 15, zero 7
                    {7, 6, -7.0f},   // q 0, zero 7
                    {0, 8, 0.0f},    // q 15, zero 15, scale 0.25
                    {0, 9, -3.75f},  // q 0, zero 15, scale 0.25
                    {1, 8, 16.0f},   // q 8, zero 0, scale 2
                    {1, 15, 30.0f},  // q 15, zero 0, scale 2
                    {5, 12, 16.0f},  // q 8, zero 0, scale 2
                });
}

// out = 16, in = 8, group_size 4 (2 groups). qweight [in, out/8] = [8, 2]: word [i, c] holds input
// i of outputs 8c..8c+7, nibble p holding output 8c + {0,2,4,6,1,3,5,7}[p].
Int4GroupTensor tiny_awq() {
  Int4GroupTensor t;
  t.layout = Int4Layout::Awq;
  t.out = 16;
  t.in = 8;
  t.group_size = 4;
  const std::int32_t desc = word(0x12345678u);  // nibble p = 8 - p
  t.qweight.rows = 8;
  t.qweight.cols = 2;
  // clang-format off
  t.qweight.values = {
      word(0x76543210u), word(0xFFFFFFFFu),  // input 0: nibble p = p; outputs 8..15: q = 15
      0, 0,                                  // inputs 1..3: q = 0
      0, 0,
      0, 0,
      word(0x0000000Fu), desc,               // input 4: nibble 0 = 15
      word(0x000000F0u), desc,               // input 5: nibble 1 = 15
      word(0x88888888u), desc,               // inputs 6, 7: q = 8 for outputs 0..7
      word(0x88888888u), desc};
  // clang-format on
  // qzeros [2, 2]: group 0: zero 0 everywhere except nibble 1 of word 1 = 1 (output 8 + 2 = 10);
  //                group 1: zero 8 everywhere.
  t.qzeros = {2, 2, {0, word(0x00000010u), word(0x88888888u), word(0x88888888u)}};
  std::vector<std::uint16_t> scales(32, 0x3C00);             // group 0: 1.0
  for (std::size_t k = 16; k < 32; ++k) scales[k] = 0x3800;  // group 1: 0.5
  t.scales = {2, 16, scales};
  return t;
}

TEST(Int4Group, AwqHandComputedValuesFollowTheInterleavedOrder) {
  const std::vector<float> w = oft::quant::dequantize_int4_group(tiny_awq());
  ASSERT_EQ(w.size(), 128u);
  // Input 0, word 0x76543210: output j holds nibble {0,4,1,5,2,6,3,7}[j], so q(j) is that number
  // (zero 0, scale 1). With the identity order W[j, 0] would be j.
  const float first[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (Index j = 0; j < 8; ++j)
    EXPECT_EQ(w[static_cast<std::size_t>(j * 8)], first[j]) << "W[" << j << ", 0]";
  expect_values(w, 8,
                {
                    {10, 0, 14.0f},  // q 15, zero 1: the zero in nibble 1 belongs to output 8 + 2
                    {9, 0, 15.0f},   // q 15, zero 0 (identity order would give output 9 the zero 1)
                    {10, 1, -1.0f},  // q 0, zero 1
                    {0, 1, 0.0f},    // q 0, zero 0: stored as is (a v1-style +1 would give -1)
                    {0, 4, 3.5f},    // nibble 0 = output 0: q 15, zero 8, scale 0.5
                    {1, 4, -4.0f},   // q 0, zero 8, scale 0.5
                    {2, 5, 3.5f},    // nibble 1 = output 2: q 15
                    {1, 5, -4.0f},   // output 1 is nibble 4: q 0 (identity order would give 3.5)
                    {3, 6, 0.0f},    // q 8, zero 8
                    {9, 4, -2.0f},   // 0x12345678: output 9 is nibble 4 = 4; (4 - 8) * 0.5
                    {15, 7, -3.5f},  // output 15 is nibble 7 = 1; (1 - 8) * 0.5
                    {8, 5, 0.0f},    // output 8 is nibble 0 = 8
                    {12, 6, -1.0f},  // output 12 is nibble 2 = 6; (6 - 8) * 0.5
                });
  const std::vector<std::uint8_t> q = oft::quant::unpack_int4_codes(tiny_awq());
  EXPECT_EQ(q[1 * 8 + 0], 4);   // output 1, input 0
  EXPECT_EQ(q[13 * 8 + 6], 2);  // output 13 (offset 5, nibble 6): 8 - 6
}

// ------------------------------------------------------------------------------------------------
// 2. Act-order g_idx.
// ------------------------------------------------------------------------------------------------

TEST(Int4Group, ActOrderGIdxIsHonoured) {
  // out = 8, in = 16, group_size 4: 4 groups, each of 4 inputs, in a permuted order.
  const std::vector<std::int32_t> g_idx = {3, 1, 0, 2, 2, 0, 3, 1, 1, 3, 2, 0, 0, 2, 1, 3};
  // Every code 9; group g has zero g + 1 (v1) and scale 2^g, so W = (8 - g) 2^g:
  // group 0 -> 8, group 1 -> 14, group 2 -> 24, group 3 -> 40.
  const std::vector<std::uint8_t> codes(8 * 16, 9);
  std::vector<std::int32_t> zeros(4 * 8);
  std::vector<std::uint16_t> scales(4 * 8);
  const std::uint16_t pow2[4] = {0x3C00, 0x4000, 0x4400, 0x4800};  // 1, 2, 4, 8
  for (Index g = 0; g < 4; ++g)
    for (Index o = 0; o < 8; ++o) {
      zeros[static_cast<std::size_t>(g * 8 + o)] = static_cast<std::int32_t>(g + 1);
      scales[static_cast<std::size_t>(g * 8 + o)] = pow2[g];
    }
  const Int4GroupTensor t =
      oft::quant::pack_gptq(Int4Layout::GptqV1, 8, 16, 4, codes, zeros, scales, g_idx);
  const std::vector<float> expected_row = {40, 14, 8,  24, 24, 8,  40, 14,
                                           14, 40, 24, 8,  8,  24, 14, 40};
  // Without g_idx (group i / 4) the row would read 8 8 8 8 14 14 14 14 24 ...
  const std::vector<float> w = oft::quant::dequantize_int4_group(t);
  const Int4GroupBase base(t);
  EXPECT_TRUE(base.act_order());
  for (Index o = 0; o < 8; ++o) {
    EXPECT_EQ(std::vector<float>(w.begin() + o * 16, w.begin() + (o + 1) * 16), expected_row)
        << "row " << o;
    std::vector<float> row(16);
    base.dequantize(o, 1, 0, 16, row.data(), 16);
    EXPECT_EQ(row, expected_row) << "base row " << o;
  }
  std::vector<float> middle(5);
  base.dequantize(6, 1, 5, 5, middle.data(), 5);  // inputs 5..9: groups 0, 3, 1, 1, 3
  EXPECT_EQ(middle, (std::vector<float>{8, 40, 14, 14, 40}));
  // The sequential g_idx is recognized as such.
  EXPECT_FALSE(
      Int4GroupBase(oft::quant::pack_gptq(Int4Layout::GptqV1, 8, 16, 4, codes, zeros, scales))
          .act_order());
}

// ------------------------------------------------------------------------------------------------
// 3. float16 rounding of the product.
// ------------------------------------------------------------------------------------------------

TEST(Int4Group, ProductsAreRoundedToFloat16) {
  // GPTQ v2, out = 8, in = 32, one group: rows run through the 16-entry table (32 >= 16) and
  // one-column rectangles through the direct path; both must round the same way.
  const Index out = 8, in = 32;
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(out * in), 7);
  std::vector<std::int32_t> zeros(out, 7);
  std::vector<std::uint16_t> scales(out, 0x3C00);
  const auto code = [&](Index o, Index i) -> std::uint8_t& {
    return codes[static_cast<std::size_t>(o * in + i)];
  };
  // Row 0: scale 1 + 2^-10 (0x3C01), zero 7.
  scales[0] = 0x3C01;
  code(0, 0) = 10;  // 3 (1 + 2^-10) = 3 + 1.5 * 2^-9: halfway between float16 neighbours (ulp 2^-9)
                    // -> the even one, 3 + 2^-8 = 3.00390625
  code(0, 1) = 12;  // 5 (1 + 2^-10) = 5 + 1.25 * 2^-8 (ulp 2^-8) -> 5 + 2^-8 = 5.00390625
  code(0, 2) = 0;   // -7 (1 + 2^-10) = -(7 + 1.75 * 2^-8) -> -(7 + 2^-7) = -7.0078125
  // Row 1: scale 65504 (0x7BFF, the largest float16), zero 13.
  scales[1] = 0x7BFF;
  zeros[1] = 13;
  code(1, 0) = 15;  // 2 * 65504 = 131008 overflows float16: +inf
  code(1, 1) = 14;  // 65504
  code(1, 2) = 10;  // -3 * 65504: -inf
  code(1, 3) = 12;  // -65504
  // Row 2: scale 1023 * 2^-24 (0x03FF, the largest subnormal), zero 0.
  scales[2] = 0x03FF;
  zeros[2] = 0;
  code(2, 0) = 3;  // 3069 * 2^-24 lies in [2^-13, 2^-12), ulp 2^-23: halfway -> 3068 * 2^-24
  code(2, 1) = 1;  // 1023 * 2^-24, exact
  const Int4GroupTensor t =
      oft::quant::pack_gptq(Int4Layout::GptqV2, out, in, -1, codes, zeros, scales);
  const std::vector<float> w = oft::quant::dequantize_int4_group(t);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Expected> expected = {{0, 0, 3.00390625f},
                                          {0, 1, 5.00390625f},
                                          {0, 2, -7.0078125f},
                                          {0, 3, 0.0f},
                                          {1, 0, inf},
                                          {1, 1, 65504.0f},
                                          {1, 2, -inf},
                                          {1, 3, -65504.0f},
                                          {2, 0, std::ldexp(3068.0f, -24)},
                                          {2, 1, std::ldexp(1023.0f, -24)}};
  expect_values(w, in, expected);
  // The rounding is visible: the float32 products differ.
  EXPECT_NE(w[0], 3.0f * h2f(0x3C01));
  EXPECT_NE(w[1], 5.0f * h2f(0x3C01));
  EXPECT_NE(w[2], -7.0f * h2f(0x3C01));
  EXPECT_NE(w[static_cast<std::size_t>(2 * in)], 3.0f * h2f(0x03FF));
  const Int4GroupBase base(t);
  std::vector<float> row(in);
  for (const Expected& e : expected) {
    base.dequantize(e.o, 1, 0, in, row.data(), in);  // table path
    EXPECT_EQ(bits_of(row[static_cast<std::size_t>(e.i)]), bits_of(e.value))
        << "row " << e.o << " col " << e.i;
    float one = 0.0f;
    base.dequantize(e.o, 1, e.i, 1, &one, 1);  // direct path
    EXPECT_EQ(bits_of(one), bits_of(e.value)) << "W[" << e.o << ", " << e.i << "] alone";
  }
  // (q - zero) = 0 times a negative scale is -0 in torch's float16 product; so here (W[3, 5]:
  // q 7, zero 7, scale -1).
  std::vector<std::uint16_t> negative(out, 0xBC00);
  const Int4GroupTensor tn =
      oft::quant::pack_gptq(Int4Layout::GptqV2, out, in, -1, codes, zeros, negative);
  EXPECT_EQ(bits_of(oft::quant::dequantize_int4_group(tn)[3 * in + 5]), 0x80000000u);
}

// ------------------------------------------------------------------------------------------------
// 4. pack -> unpack -> dequantize against the direct formula.
// ------------------------------------------------------------------------------------------------

struct Codes {
  std::vector<std::uint8_t> q;
  std::vector<std::int32_t> zeros;
  std::vector<std::uint16_t> scales;
  std::vector<std::int32_t> g_idx;  // empty: sequential
};

Codes random_codes(Int4Layout layout, Index out, Index in, Index group_size, bool act_order,
                   Rng& rng, double scale = 0.05) {
  const Index groups = oft::quant::int4_groups(in, group_size);
  Codes c;
  c.q.resize(static_cast<std::size_t>(out * in));
  for (auto& v : c.q) v = static_cast<std::uint8_t>(rng.index(16));
  c.zeros.resize(static_cast<std::size_t>(groups * out));
  const int lo = layout == Int4Layout::GptqV1 ? 1 : 0;
  for (auto& v : c.zeros) v = lo + static_cast<std::int32_t>(rng.index(16));
  c.scales.resize(c.zeros.size());
  for (auto& v : c.scales)
    v = oft::io::float_to_f16(static_cast<float>(scale * (0.05 + std::fabs(rng.uniform()))));
  if (act_order) {
    c.g_idx.resize(static_cast<std::size_t>(in));
    for (auto& g : c.g_idx) g = static_cast<std::int32_t>(rng.index(groups));
  }
  return c;
}

/// `x` rounded to the nearest float16 value, ties to even, by scaling to float16's unit in the
/// last place (an independent check of io::float_to_f16's bit manipulation).
double round_to_half(double x) {
  if (x == 0.0) return x;
  int e = 0;
  (void)std::frexp(x, &e);                            // |x| in [2^(e-1), 2^e)
  const int exponent = std::max(e - 1, -14);          // subnormals share the smallest exponent
  const double ulp = std::ldexp(1.0, exponent - 10);  // 10 fraction bits
  const double r = std::nearbyint(x / ulp) * ulp;     // ties to even (the default rounding mode)
  return std::fabs(r) > 65504.0 ? std::copysign(std::numeric_limits<double>::infinity(), x) : r;
}

Int4GroupTensor pack(Int4Layout layout, Index out, Index in, Index group_size, const Codes& c) {
  if (layout == Int4Layout::Awq)
    return oft::quant::pack_awq(out, in, group_size, c.q, c.zeros, c.scales);
  return oft::quant::pack_gptq(layout, out, in, group_size, c.q, c.zeros, c.scales, c.g_idx);
}

TEST(Int4Group, PackRoundTripsAndDequantizesAsTheFormula) {
  Rng rng(11);
  const Index out = 24, in = 64;
  for (Int4Layout layout : {Int4Layout::GptqV1, Int4Layout::GptqV2, Int4Layout::Awq})
    for (Index group_size : {Index(32), Index(64), Index(-1)})
      for (bool act_order : {false, true}) {
        if (act_order && layout == Int4Layout::Awq) continue;
        SCOPED_TRACE(std::string(oft::quant::name(layout)) + " gs " + std::to_string(group_size) +
                     (act_order ? " act-order" : ""));
        const Codes c = random_codes(layout, out, in, group_size, act_order, rng);
        const Int4GroupTensor t = pack(layout, out, in, group_size, c);
        EXPECT_EQ(t.qweight.rows, oft::quant::is_gptq(layout) ? in / 8 : in);
        EXPECT_EQ(t.qweight.cols, oft::quant::is_gptq(layout) ? out : out / 8);
        EXPECT_EQ(oft::quant::unpack_int4_codes(t), c.q);
        EXPECT_EQ(oft::quant::unpack_int4_zeros(t), c.zeros);
        const std::vector<float> w = oft::quant::dequantize_int4_group(t);
        const Index width = group_size == -1 ? in : group_size;
        for (Index o = 0; o < out; ++o)
          for (Index i = 0; i < in; ++i) {
            const Index g = act_order ? c.g_idx[static_cast<std::size_t>(i)] : i / width;
            const double exact =
                (c.q[static_cast<std::size_t>(o * in + i)] -
                 c.zeros[static_cast<std::size_t>(g * out + o)]) *
                static_cast<double>(h2f(c.scales[static_cast<std::size_t>(g * out + o)]));
            const float expected = static_cast<float>(round_to_half(exact));
            ASSERT_EQ(bits_of(w[static_cast<std::size_t>(o * in + i)]), bits_of(expected))
                << "W[" << o << ", " << i << "]";
          }
      }
}

// ------------------------------------------------------------------------------------------------
// 5. Rectangles of Int4GroupBase.
// ------------------------------------------------------------------------------------------------

TEST(Int4GroupBase, RectanglesEqualTheWholeTensorDequantizerBitForBit) {
  Rng rng(12);
  struct Case {
    Int4Layout layout;
    Index in, group_size;
    bool act_order;
  };
  const Index out = 40;
  for (const Case& k : std::vector<Case>{{Int4Layout::GptqV1, 96, 32, false},
                                         {Int4Layout::GptqV1, 96, 32, true},
                                         {Int4Layout::GptqV2, 96, 16, true},
                                         {Int4Layout::GptqV2, 96, -1, false},
                                         {Int4Layout::GptqV1, 96, 8, false},
                                         {Int4Layout::Awq, 96, 32, false},
                                         {Int4Layout::Awq, 90, -1, false},
                                         {Int4Layout::Awq, 90, 6, false},
                                         // 132 groups: act-order tables in two blocks of 128
                                         {Int4Layout::GptqV1, 2112, 16, true}}) {
    const std::string where = std::string(oft::quant::name(k.layout)) + " in " +
                              std::to_string(k.in) + " gs " + std::to_string(k.group_size) +
                              (k.act_order ? " act-order" : "");
    SCOPED_TRACE(where);
    const Int4GroupTensor t =
        pack(k.layout, out, k.in, k.group_size,
             random_codes(k.layout, out, k.in, k.group_size, k.act_order, rng));
    const Int4GroupBase base(t);
    EXPECT_EQ(base.act_order(), k.act_order);
    const std::vector<float> whole = oft::quant::dequantize_int4_group(t);
    const Index in = k.in;
    for (const auto& rect : std::vector<std::array<Index, 4>>{{0, out, 0, in},
                                                              {3, 5, 1, in - 6},
                                                              {39, 1, 17, 33},
                                                              {0, out, 63, 1},
                                                              {10, 7, 5, 16},
                                                              {20, 3, 30, 40},
                                                              {1, 2, in - 3, 3}}) {
      const Index r0 = rect[0], nr = rect[1], c0 = rect[2], nc = rect[3], ld = nc + 3;
      std::vector<float> f(static_cast<std::size_t>(nr * ld), -7.0f);
      std::vector<double> d(static_cast<std::size_t>(nr * ld), -7.0);
      base.dequantize(r0, nr, c0, nc, f.data(), ld);  // ld > ncols: padding untouched
      base.dequantize(r0, nr, c0, nc, d.data(), ld);
      for (Index r = 0; r < nr; ++r) {
        SCOPED_TRACE("row " + std::to_string(r0 + r) + " cols " + std::to_string(c0) + "+" +
                     std::to_string(nc));
        const float* ref = whole.data() + (r0 + r) * in + c0;
        EXPECT_EQ(bits(f.data() + r * ld, static_cast<std::size_t>(nc)),
                  bits(ref, static_cast<std::size_t>(nc)));
        for (Index j = 0; j < nc; ++j)
          EXPECT_EQ(d[static_cast<std::size_t>(r * ld + j)], static_cast<double>(ref[j]))
              << "double, col " << c0 + j;
        for (Index j = nc; j < ld; ++j) {
          EXPECT_EQ(f[static_cast<std::size_t>(r * ld + j)], -7.0f);
          EXPECT_EQ(d[static_cast<std::size_t>(r * ld + j)], -7.0);
        }
      }
    }
  }
}

TEST(Int4GroupBase, TensorPacksTheCheckpointWordsBack) {
  Rng rng(19);
  for (Int4Layout layout : {Int4Layout::GptqV1, Int4Layout::GptqV2, Int4Layout::Awq})
    for (bool act_order : {false, true}) {
      if (act_order && layout == Int4Layout::Awq) continue;
      SCOPED_TRACE(std::string(oft::quant::name(layout)) + (act_order ? " act-order" : ""));
      const Int4GroupTensor t =
          pack(layout, 32, 64, 16, random_codes(layout, 32, 64, 16, act_order, rng));
      const Int4GroupTensor back = Int4GroupBase(t).tensor();
      EXPECT_EQ(back.layout, t.layout);
      EXPECT_EQ(back.out, t.out);
      EXPECT_EQ(back.in, t.in);
      EXPECT_EQ(back.group_size, t.group_size);
      EXPECT_EQ(back.qweight.rows, t.qweight.rows);
      EXPECT_EQ(back.qweight.cols, t.qweight.cols);
      EXPECT_EQ(back.qweight.values, t.qweight.values);
      EXPECT_EQ(back.qzeros.rows, t.qzeros.rows);
      EXPECT_EQ(back.qzeros.values, t.qzeros.values);
      EXPECT_EQ(back.scales.values, t.scales.values);
      EXPECT_EQ(back.g_idx, t.g_idx);
    }
  // The hand-written words too (v1 zeros of 16 included).
  EXPECT_EQ(Int4GroupBase(tiny_gptq(Int4Layout::GptqV1)).tensor().qzeros.values,
            tiny_gptq(Int4Layout::GptqV1).qzeros.values);
  EXPECT_EQ(Int4GroupBase(tiny_awq()).tensor().qweight.values, tiny_awq().qweight.values);
}

TEST(Int4GroupBase, FormatAndBytes) {
  Rng rng(13);
  const Index out = 64, in = 256, groups = 2;
  const Int4GroupBase gptq(pack(Int4Layout::GptqV1, out, in, 128,
                                random_codes(Int4Layout::GptqV1, out, in, 128, false, rng)));
  const Int4GroupBase gptq_v2(pack(Int4Layout::GptqV2, out, in, 128,
                                   random_codes(Int4Layout::GptqV2, out, in, 128, true, rng)));
  const Int4GroupBase awq(
      pack(Int4Layout::Awq, out, in, 128, random_codes(Int4Layout::Awq, out, in, 128, false, rng)));
  EXPECT_STREQ(gptq.format(), "gptq");
  EXPECT_STREQ(gptq_v2.format(), "gptq");
  EXPECT_STREQ(awq.format(), "awq");
  EXPECT_EQ(gptq.rows(), out);
  EXPECT_EQ(gptq.cols(), in);
  // 4 bits per value, a byte per zero, 2 bytes per scale.
  const std::size_t kept = out * in / 2 + out * groups + 2 * out * groups;
  EXPECT_EQ(gptq.bytes(), kept);
  EXPECT_EQ(awq.bytes(), kept);
  // Act-order keeps g_idx: 4 bytes per input.
  EXPECT_EQ(gptq_v2.bytes(), kept + 4 * in);
  // AWQ with in = 90: each row padded to 96 codes (12 words).
  const Int4GroupBase ragged(
      pack(Int4Layout::Awq, 8, 90, 45, random_codes(Int4Layout::Awq, 8, 90, 45, false, rng)));
  EXPECT_EQ(ragged.bytes(), std::size_t(8 * 12 * 4 + 8 * 2 + 2 * 8 * 2));
}

// ------------------------------------------------------------------------------------------------
// 6. The fused products and the QOFT layer.
// ------------------------------------------------------------------------------------------------

/// |A| |B| (elementwise absolute values), for the dot-product bounds.
RowMat<double> abs_product(const RowMat<double>& a, const RowMat<double>& b) {
  return a.cwiseAbs() * b.cwiseAbs();
}

/// A random weight's checkpoint tensors and its base (references come from the tensors).
struct Weight {
  Int4GroupTensor tensor;
  Int4GroupBase base;
};

Weight random_weight(Int4Layout layout, Index out, Index in, Index group_size, bool act_order,
                     Rng& rng) {
  Int4GroupTensor t = pack(layout, out, in, group_size,
                           random_codes(layout, out, in, group_size, act_order, rng, 0.01));
  Int4GroupBase base(t);
  return {std::move(t), std::move(base)};
}

void check_fused_products(const Weight& weight, Index n, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where + " N=" + std::to_string(n));
  const Int4GroupBase& base = weight.base;
  const Index n_out = base.rows(), d = base.cols();
  // W from the checkpoint tensors by the reference dequantizer, widened.
  const RowMat<double> w =
      RowMat<float>::Map(oft::quant::dequantize_int4_group(weight.tensor).data(), n_out, d)
          .cast<double>();
  const RowMat<double> y = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
  std::vector<double> panel(static_cast<std::size_t>(oft::quant::fused_panel_size(base)));
  RowMat<double> z(n, n_out), dy(n, d);
  oft::quant::dequant_gemm_nt(base, oft::view(y), oft::view(z), panel.data());
  oft::quant::dequant_gemm_nn(base, oft::view(dz), oft::view(dy), panel.data());
  if (n == 0) return;
  // Both sides are the same length-k dot products in other orders: Higham eq. 3.5.
  const RowMat<double> z_bound = 2.0 * oft_test::gamma<double>(d) * abs_product(y, w.transpose());
  const RowMat<double> dy_bound = 2.0 * oft_test::gamma<double>(n_out) * abs_product(dz, w);
  EXPECT_TRUE(((z - y * w.transpose()).cwiseAbs().array() <= z_bound.array()).all());
  EXPECT_TRUE(((dy - dz * w).cwiseAbs().array() <= dy_bound.array()).all());
  EXPECT_GT(z.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(dy.cwiseAbs().maxCoeff(), 0.0);
}

TEST(Int4GroupBase, FusedProductsEqualTheDenseProducts) {
  Rng rng(14);
  static_assert(oft::quant::kFusedPanelWidth == 512, "update the tail shapes below");
  // 520 = 512 + 8 rows; 1104 = 2 x 512 + 80 columns (1104 = 23 x 48 = 8 x 138).
  for (const auto& shape : std::vector<std::pair<Index, Index>>{{520, 1104}, {8, 16}}) {
    const Index n_out = shape.first, d = shape.second;
    const std::string s = std::to_string(n_out) + "x" + std::to_string(d);
    const Index gs = d == 1104 ? 48 : 8;
    for (Index n : {Index(0), Index(1), Index(9)}) {
      check_fused_products(random_weight(Int4Layout::GptqV1, n_out, d, gs, false, rng), n, rng,
                           "gptq " + s);
      check_fused_products(random_weight(Int4Layout::GptqV1, n_out, d, gs, true, rng), n, rng,
                           "gptq act-order " + s);
      check_fused_products(random_weight(Int4Layout::GptqV2, n_out, d, -1, false, rng), n, rng,
                           "gptq_v2 " + s);
      check_fused_products(random_weight(Int4Layout::Awq, n_out, d, gs, false, rng), n, rng,
                           "awq " + s);
    }
  }
  // Float panels: the dequantized floats themselves, so Z equals a float GEMM over them exactly
  // as a dense float base does (the same code path after the panel).
  const Weight weight = random_weight(Int4Layout::Awq, 72, 64, 32, false, rng);
  const Int4GroupBase& base = weight.base;
  const std::vector<float> w = oft::quant::dequantize_int4_group(weight.tensor);
  const oft::quant::DenseFloatBase dense(w.data(), 72, 64);
  const RowMat<float> y = oft_test::random_matrix<float>(5, 64, rng);
  RowMat<float> z_q(5, 72), z_d(5, 72);
  std::vector<float> panel(static_cast<std::size_t>(oft::quant::fused_panel_size(base)));
  oft::quant::dequant_gemm_nt(base, oft::view(y), oft::view(z_q), panel.data());
  oft::quant::dequant_gemm_nt(dense, oft::view(y), oft::view(z_d), panel.data());
  EXPECT_EQ(bits(z_q.data(), 5 * 72), bits(z_d.data(), 5 * 72));
}

template <class Policy>
void check_layer_equals_oft_linear(const Weight& weight, const Policy& policy, Index b,
                                   bool shared, Index n, Rng& rng, const std::string& where) {
  SCOPED_TRACE(where + " b=" + std::to_string(b) + (shared ? " shared" : "") +
               " N=" + std::to_string(n));
  const Int4GroupBase& base = weight.base;
  const Index n_out = base.rows(), d = base.cols();
  std::vector<double> bias(static_cast<std::size_t>(n_out));
  for (double& v : bias) v = rng.uniform();
  oft::quant::QoftLinear<double, Policy, Int4GroupBase> qoft(base, bias.data(), b, shared, policy);
  const RowMat<double> w = qoft.dequantized();
  // The layer's weight is the format's: the whole-tensor dequantizer's floats, widened.
  const std::vector<float> reference = oft::quant::dequantize_int4_group(weight.tensor);
  for (Index k = 0; k < n_out * d; ++k)
    ASSERT_EQ(w.data()[k], static_cast<double>(reference[static_cast<std::size_t>(k)]))
        << "element " << k;
  oft::OftLinear<double, Policy> dense(oft::view(w), bias.data(), b, shared, policy);
  const auto theta = oft_test::random_generators_with_rho<double>(shared ? 1 : d / b, b, 0.4, rng);
  qoft.set_generators(theta.view());
  dense.set_generators(theta.view());

  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dz = oft_test::random_matrix<double>(n, n_out, rng);
  RowMat<double> z_q(n, n_out), z_d(n, n_out), dx_q(n, d), dx_d(n, d);
  oft::Generators<double> dth_q(theta.count(), b), dth_d(theta.count(), b);
  oft::Workspace<double> ws;
  qoft.forward(oft::view(x), oft::view(z_q), ws);
  dense.forward(oft::view(x), oft::view(z_d), ws);
  qoft.backward(oft::view(x), oft::view(dz), oft::view(dx_q), dth_q.view(), ws);
  dense.backward(oft::view(x), oft::view(dz), oft::view(dx_d), dth_d.view(), ws);
  if (n == 0) return;
  // The bounds of test_qoft_linear.cpp: both layers compute Y = X R identically, then the same
  // length-d (forward) or length-n_out (backward) dot products in other orders.
  const double scale_z = (x.cwiseAbs() * w.transpose().cwiseAbs()).maxCoeff() * 2.0 + 1.0;
  EXPECT_LE((z_q - z_d).cwiseAbs().maxCoeff(), 4.0 * oft_test::gamma<double>(d + b) * scale_z);
  const double scale_dx = (dz.cwiseAbs() * w.cwiseAbs()).maxCoeff() * 2.0;
  EXPECT_LE((dx_q - dx_d).cwiseAbs().maxCoeff(),
            4.0 * oft_test::gamma<double>(n_out + b) * scale_dx);
  EXPECT_GT(dth_d.values().cwiseAbs().maxCoeff(), 0.0);
  const double scale_g = (x.cwiseAbs().transpose() * (dz.cwiseAbs() * w.cwiseAbs())).maxCoeff();
  EXPECT_LE((dth_q.values() - dth_d.values()).cwiseAbs().maxCoeff(),
            4.0 * b * oft_test::gamma<double>(n + n_out + b) * scale_g);
}

TEST(Int4GroupBase, QoftLinearEqualsOftLinearOverTheDequantizedWeight) {
  Rng rng(15);
  const Index n_out = 520, d = 528;  // panel tails (512 + 8 rows, 512 + 16 columns); 528 = 11 x 48
  for (Index n : {Index(0), Index(1), Index(40)})
    for (bool shared : {false, true}) {
      check_layer_equals_oft_linear(random_weight(Int4Layout::GptqV1, n_out, d, 48, true, rng),
                                    oft::CayleyNeumann{3}, 16, shared, n, rng, "gptq act-order");
      check_layer_equals_oft_linear(random_weight(Int4Layout::GptqV2, n_out, d, 48, false, rng),
                                    oft::ExactCayley{}, 8, shared, n, rng, "gptq_v2");
      check_layer_equals_oft_linear(random_weight(Int4Layout::Awq, n_out, d, 48, false, rng),
                                    oft::CayleyNeumann{3}, 8, shared, n, rng, "awq");
    }
}

// ------------------------------------------------------------------------------------------------
// 7. Refusals.
// ------------------------------------------------------------------------------------------------

/// A consistent GPTQ v1 weight, out = 16, in = 32, group_size 8 (4 groups), and an AWQ one.
Int4GroupTensor good_gptq() {
  Rng rng(16);
  return pack(Int4Layout::GptqV1, 16, 32, 8,
              random_codes(Int4Layout::GptqV1, 16, 32, 8, false, rng));
}
Int4GroupTensor good_awq() {
  Rng rng(17);
  return pack(Int4Layout::Awq, 16, 32, 8, random_codes(Int4Layout::Awq, 16, 32, 8, false, rng));
}

/// `t`, mutated, is refused by Int4GroupBase and by the whole-tensor dequantizer alike: an
/// `Exception` whose message names the function and contains `part`.
template <class Exception, class Mutate>
::testing::AssertionResult refused(Int4GroupTensor t, Mutate mutate, const std::string& part) {
  mutate(t);
  ::testing::AssertionResult base =
      oft_test::throws_with<Exception>([&] { (void)Int4GroupBase(t); }, {"Int4GroupBase: ", part});
  if (!base) return base;
  return oft_test::throws_with<Exception>([&] { (void)oft::quant::dequantize_int4_group(t); },
                                          {"dequantize_int4_group: ", part});
}

TEST(Int4Group, BadShapesAreRefusedWithTheShapes) {
  using E = std::invalid_argument;
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.in = 36; },
      "gptq weight has in = 36, which is not a positive multiple of 8"));
  EXPECT_TRUE(refused<E>(
      good_awq(), [](Int4GroupTensor& t) { t.out = 12; },
      "awq weight has out = 12, which is not a positive multiple of 8"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.out = 20; }, "out = 20"));
  EXPECT_TRUE(refused<E>(
      good_gptq(),
      [](Int4GroupTensor& t) {
        t.qweight.rows = 3;
        t.qweight.values.resize(3 * 16);
      },
      "gptq qweight has shape [3, 16], expected [in/8, out] = [4, 16]"));
  // AWQ's qweight given in GPTQ's orientation.
  EXPECT_TRUE(refused<E>(
      good_awq(),
      [](Int4GroupTensor& t) {
        t.qweight.rows = 2;
        t.qweight.cols = 32;
      },
      "awq qweight has shape [2, 32], expected [in, out/8] = [32, 2]"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.qweight.values.pop_back(); },
      "qweight holds 63 values, its shape [4, 16] needs 64"));
  EXPECT_TRUE(refused<E>(
      good_gptq(),
      [](Int4GroupTensor& t) {
        t.qzeros.cols = 1;
        t.qzeros.values.resize(4);
      },
      "qzeros has shape [4, 1], expected [groups, out/8] = [4, 2]"));
  EXPECT_TRUE(refused<E>(
      good_awq(),
      [](Int4GroupTensor& t) {
        t.scales.rows = 16;
        t.scales.cols = 4;
      },
      "awq scales has shape [16, 4], expected [groups, out] = [4, 16]"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.g_idx.pop_back(); },
      "gptq g_idx has shape [31], expected [in] = [32]"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.g_idx.clear(); },
      "g_idx has shape [0], expected [in] = [32]"));
  EXPECT_TRUE(refused<E>(
      good_awq(), [](Int4GroupTensor& t) { t.g_idx.assign(32, 0); }, "awq has no g_idx"));
}

TEST(Int4Group, BadGroupsAndValuesAreRefused) {
  using E = std::invalid_argument;
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.g_idx[5] = 4; }, "g_idx[5] = 4 is outside [0, 4)"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.g_idx[31] = -1; },
      "g_idx[31] = -1 is outside [0, 4)"));
  EXPECT_TRUE(refused<E>(
      good_gptq(), [](Int4GroupTensor& t) { t.group_size = 24; },
      "gptq group_size 24 does not divide in = 32"));
  EXPECT_TRUE(refused<E>(
      good_awq(), [](Int4GroupTensor& t) { t.group_size = 0; },
      "awq group_size 0 does not divide in = 32"));
  EXPECT_TRUE(refused<E>(
      good_awq(), [](Int4GroupTensor& t) { t.group_size = -2; }, "group_size -2"));
  // A group size that divides in but disagrees with the stored tensors: named by the shape.
  EXPECT_TRUE(refused<E>(
      good_awq(), [](Int4GroupTensor& t) { t.group_size = 16; },
      "qzeros has shape [4, 2], expected [groups, out/8] = [2, 2]"));
  // Non-finite scales: std::domain_error naming the element.
  EXPECT_TRUE(refused<std::domain_error>(
      good_gptq(), [](Int4GroupTensor& t) { t.scales.values[1 * 16 + 3] = 0x7E00; },
      "scales[1, 3] is not finite"));
  EXPECT_TRUE(refused<std::domain_error>(
      good_awq(), [](Int4GroupTensor& t) { t.scales.values[0] = 0xFC00; },
      "scales[0, 0] is not finite (-inf"));
}

TEST(Int4Group, PackingRefusesValuesTheLayoutCannotHold) {
  Rng rng(18);
  Codes c = random_codes(Int4Layout::GptqV1, 8, 16, 8, false, rng);
  for (auto& z : c.zeros) z = std::min(z, 15);  // 1..15: a zero every layout holds
  Codes bad = c;
  bad.q[2 * 16 + 5] = 16;
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 16, 8, bad); },
      {"pack_gptq: code [2, 5] = 16 is not a 4-bit value"}));
  bad = c;
  bad.zeros[1 * 8 + 3] = 0;  // v1 cannot store a zero of 0 (it stores zero - 1)
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 16, 8, bad); },
      {"zero [1, 3] = 0 cannot be stored by gptq (its zeros lie in 1..16)"}));
  EXPECT_NO_THROW((void)pack(Int4Layout::GptqV2, 8, 16, 8, bad));
  bad.zeros[1 * 8 + 3] = 16;
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::Awq, 8, 16, 8, bad); },
      {"pack_awq: zero [1, 3] = 16 cannot be stored by awq (its zeros lie in 0..15)"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV2, 8, 16, 8, bad); }, {"cannot be stored by gptq_v2"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)oft::quant::pack_gptq(Int4Layout::Awq, 8, 16, 8, c.q, c.zeros, c.scales); },
      {"pack_gptq: layout awq is not a GPTQ layout"}));
  bad = c;
  bad.scales.pop_back();
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 16, 8, bad); },
      {"scales hold 15 values, expected [groups, out] = [2, 8]"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 12, 4, c); },
      {"in = 12, which is not a positive multiple of 8"}));
  bad = c;
  bad.g_idx.assign(16, 0);
  bad.g_idx[7] = 2;
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 16, 8, bad); },
      {"pack_gptq: g_idx[7] = 2 is outside [0, 2)"}));
  bad = c;
  bad.scales[4] = 0x7C00;
  EXPECT_TRUE(oft_test::throws_with<std::domain_error>(
      [&] { (void)pack(Int4Layout::GptqV1, 8, 16, 8, bad); },
      {"pack_gptq: scales[0, 4] is not finite"}));
}

}  // namespace

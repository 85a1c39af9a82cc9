#pragma once
/// \file quant/int4_group.hpp
/// GPTQ and AWQ 4-bit weights (group-wise asymmetric int4 with float16 scales), as their
/// checkpoints store them, so that a frozen base quantized by AutoGPTQ / GPTQModel / AutoAWQ is
/// read exactly as they dequantize it (QOFT, SPEC section 9). W is n_out x d ("out" x "in"), the
/// nn.Linear layout; every int32 word packs eight 4-bit values. Facts from AutoGPTQ 0.7.1
/// (qlinear_cuda.py, its torch path) and AutoAWQ 0.2.9 (awq/utils/packing_utils.py), whose
/// dequantized values this file reproduces bit for bit (checked as docs/quant_int4.md says).
///
/// GPTQ (AutoGPTQ, GPTQModel, transformers' "gptq" checkpoints; bits = 4):
/// - `qweight` int32 [in/8, out]: input i of output o is qweight[i/8, o], bits 4(i%8)..4(i%8)+3
///   (the lowest nibble is the first input).
/// - `qzeros` int32 [groups, out/8]: the zero of output o in group g is qzeros[g, o/8], nibble o%8
///   (lowest first).
/// - `scales` float16 [groups, out]; `g_idx` int32 [in], the group of each input column. g_idx
///   is always used: act-order (desc_act) checkpoints permute it; without act-order it is
///   i / group_size. group_size -1 means one group.
/// - v1 ("gptq", nearly every checkpoint) stores zero - 1: the real zero is the stored nibble + 1,
///   in 1..16 (AutoGPTQ masks the nibble, then adds 1, so a stored 15 is a zero of 16). A real
///   zero of 0 cannot be stored. v2 ("gptq_v2", GPTQModel's internal format) stores the zero.
/// AWQ (AutoAWQ's "gemm" version):
/// - `qweight` int32 [in, out/8]: output o of input i is in qweight[i, o/8], but the eight
///   outputs of a word are interleaved: nibble p holds output 8(o/8) + {0,2,4,6,1,3,5,7}[p], so
///   output offset j sits in nibble {0,4,1,5,2,6,3,7}[j].
/// - `qzeros` int32 [groups, out/8], packed the same way; the zero is stored as is (no +1).
/// - `scales` float16 [groups, out]; the group of input i is i / group_size (no g_idx).
/// Dequantization, both formats: W[o, i] = scale * (q - zero), computed by torch in float16. The
/// integer q - zero lies in [-16, 15], so the product of it and a float16 scale is exact in
/// float32; the reference's float16 result is that product rounded once to float16 (to nearest,
/// ties to even; past 65504 it is infinity). Here: float_to_f16 of the float32 product, widened
/// back.
///
/// Shapes and values are checked once (check_int4_group), never in the dequantizing loops.
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../half.hpp"
#include "../index.hpp"

namespace oft::quant {

/// Which checkpoint layout an Int4GroupTensor holds.
enum class Int4Layout {
  GptqV1,  ///< GPTQ, zeros stored minus one (checkpoint_format "gptq")
  GptqV2,  ///< GPTQ, zeros stored as they are (checkpoint_format "gptq_v2")
  Awq,     ///< AutoAWQ GEMM (version "gemm")
};

inline const char* name(Int4Layout layout) {
  switch (layout) {
    case Int4Layout::GptqV1:
      return "gptq";
    case Int4Layout::GptqV2:
      return "gptq_v2";
    case Int4Layout::Awq:
      return "awq";
  }
  return "?";
}

inline bool is_gptq(Int4Layout layout) { return layout != Int4Layout::Awq; }

/// AWQ's interleave: nibble p of a word holds output offset kAwqOrder[p] ...
inline constexpr std::array<int, 8> kAwqOrder = {0, 2, 4, 6, 1, 3, 5, 7};
/// ... and output offset j sits in nibble kAwqNibbleOf[j] (the inverse permutation).
inline constexpr std::array<int, 8> kAwqNibbleOf = {0, 4, 1, 5, 2, 6, 3, 7};

/// A row-major 2-D array with the shape the checkpoint gave it.
template <class T>
struct Int4Array {
  Index rows = 0;
  Index cols = 0;
  std::vector<T> values;  ///< rows * cols
};

/// A GPTQ or AWQ 4-bit weight of `out` x `in` (n_out x d), its tensors as the checkpoint stores
/// them. `group_size` is the checkpoint's (-1: one group of all `in` inputs).
struct Int4GroupTensor {
  Int4Layout layout = Int4Layout::GptqV1;
  Index out = 0;                    ///< n_out, rows of W
  Index in = 0;                     ///< d, columns of W
  Index group_size = 128;           ///< inputs per group, or -1
  Int4Array<std::int32_t> qweight;  ///< GPTQ [in/8, out]; AWQ [in, out/8]
  Int4Array<std::int32_t> qzeros;   ///< [groups, out/8]
  Int4Array<std::uint16_t> scales;  ///< [groups, out], float16 bits
  std::vector<std::int32_t> g_idx;  ///< GPTQ: [in], the group of each input; AWQ: empty
};

/// Groups of a weight with `in` inputs: in / group_size, or 1 for group_size -1.
inline Index int4_groups(Index in, Index group_size) {
  return group_size == -1 ? 1 : in / group_size;
}

/// The g_idx of a GPTQ weight quantized without act-order: input i is in group i / group_size.
/// (For checkpoints that omit g_idx.)
inline std::vector<std::int32_t> gptq_sequential_g_idx(Index in, Index group_size) {
  oft::detail::require(in >= 0 && in <= std::numeric_limits<std::int32_t>::max(),
                       "gptq_sequential_g_idx: in = ", in, " is out of range");
  oft::detail::require(group_size == -1 || group_size >= 1, "gptq_sequential_g_idx: group_size ",
                       group_size, " is neither -1 nor positive");
  std::vector<std::int32_t> out(static_cast<std::size_t>(in));
  for (Index i = 0; i < in; ++i)
    out[static_cast<std::size_t>(i)] =
        static_cast<std::int32_t>(group_size == -1 ? 0 : i / group_size);
  return out;
}

namespace detail {

/// A shape as the messages print it: "[rows, cols]".
struct Shape {
  Index rows, cols;
};
inline std::ostream& operator<<(std::ostream& os, Shape s) {
  return os << '[' << s.rows << ", " << s.cols << ']';
}

/// The divisibility rules on out, in and group_size (everything the tensor shapes derive from).
inline void check_dims(Int4Layout layout, Index out, Index in, Index group_size,
                       const char* where) {
  const char* fmt = name(layout);
  oft::detail::require(
      out >= 8 && out % 8 == 0, where, ": ", fmt, " weight has out = ", out,
      ", which is not a positive multiple of 8 (qzeros packs 8 outputs per int32)");
  if (is_gptq(layout))
    oft::detail::require(
        in >= 8 && in % 8 == 0, where, ": ", fmt, " weight has in = ", in,
        ", which is not a positive multiple of 8 (qweight packs 8 inputs per int32)");
  else
    oft::detail::require(in >= 1, where, ": awq weight has in = ", in, ", which is not positive");
  oft::detail::require(in <= std::numeric_limits<std::int32_t>::max(), where, ": in = ", in,
                       " does not fit g_idx's int32");
  oft::detail::require(group_size == -1 || (group_size >= 1 && in % group_size == 0), where, ": ",
                       fmt, " group_size ", group_size, " does not divide in = ", in,
                       " (group_size must be -1 or a divisor of in)");
}

template <class T>
void check_array(const Int4Array<T>& a, const char* tensor, Shape expected, const char* formula,
                 Int4Layout layout, const char* where) {
  oft::detail::require(a.rows == expected.rows && a.cols == expected.cols, where, ": ",
                       name(layout), " ", tensor, " has shape ", Shape{a.rows, a.cols},
                       ", expected ", formula, " = ", expected);
  oft::detail::require(static_cast<Index>(a.values.size()) == a.rows * a.cols, where, ": ", tensor,
                       " holds ", a.values.size(), " values, its shape ", Shape{a.rows, a.cols},
                       " needs ", a.rows * a.cols);
}

}  // namespace detail

/// Throws std::invalid_argument naming the tensor, its shape and the expected shape when `t` is
/// inconsistent (out, in, group_size, qweight, qzeros, scales, g_idx), or naming the index and
/// value of a g_idx entry outside [0, groups); std::domain_error for a non-finite scale.
inline void check_int4_group(const Int4GroupTensor& t, const char* where) {
  using detail::Shape;
  detail::check_dims(t.layout, t.out, t.in, t.group_size, where);
  const Index groups = int4_groups(t.in, t.group_size);
  if (is_gptq(t.layout))
    detail::check_array(t.qweight, "qweight", Shape{t.in / 8, t.out}, "[in/8, out]", t.layout,
                        where);
  else
    detail::check_array(t.qweight, "qweight", Shape{t.in, t.out / 8}, "[in, out/8]", t.layout,
                        where);
  detail::check_array(t.qzeros, "qzeros", Shape{groups, t.out / 8}, "[groups, out/8]", t.layout,
                      where);
  detail::check_array(t.scales, "scales", Shape{groups, t.out}, "[groups, out]", t.layout, where);
  if (is_gptq(t.layout)) {
    oft::detail::require(static_cast<Index>(t.g_idx.size()) == t.in, where, ": ", name(t.layout),
                         " g_idx has shape [", t.g_idx.size(), "], expected [in] = [", t.in, "]");
    for (std::size_t i = 0; i < t.g_idx.size(); ++i)
      oft::detail::require(t.g_idx[i] >= 0 && t.g_idx[i] < groups, where, ": g_idx[", i,
                           "] = ", t.g_idx[i], " is outside [0, ", groups, ") (", groups,
                           " groups)");
  } else {
    oft::detail::require(t.g_idx.empty(), where, ": awq has no g_idx (input i is in group i / ",
                         "group_size), got one of shape [", t.g_idx.size(), "]");
  }
  for (Index g = 0; g < groups; ++g)
    for (Index o = 0; o < t.out; ++o) {
      const std::uint16_t h = t.scales.values[static_cast<std::size_t>(g * t.out + o)];
      oft::detail::require_domain(std::isfinite(f16_to_float(h)), where, ": scales[", g, ", ", o,
                                  "] is not finite (", f16_to_float(h), ", float16 bits 0x",
                                  std::hex, h, std::dec, ")");
    }
}

/// The 4-bit codes q, row-major [out, in] (W's layout), unpacked from qweight. Checks `t`.
inline std::vector<std::uint8_t> unpack_int4_codes(const Int4GroupTensor& t) {
  check_int4_group(t, "unpack_int4_codes");
  std::vector<std::uint8_t> q(static_cast<std::size_t>(t.out * t.in));
  const auto at = [&](Index o, Index i) -> std::uint8_t& {
    return q[static_cast<std::size_t>(o * t.in + i)];
  };
  for (Index r = 0; r < t.qweight.rows; ++r)
    for (Index c = 0; c < t.qweight.cols; ++c) {
      const auto word = static_cast<std::uint32_t>(
          t.qweight.values[static_cast<std::size_t>(r * t.qweight.cols + c)]);
      for (int p = 0; p < 8; ++p) {
        const auto nibble = static_cast<std::uint8_t>((word >> (4 * p)) & 0xFu);
        if (is_gptq(t.layout))
          at(c, 8 * r + p) = nibble;  // word [r, c]: inputs 8r..8r+7 of output c
        else
          at(8 * c + kAwqOrder[static_cast<std::size_t>(p)], r) =
              nibble;  // word [r, c]: input r, outputs 8c..8c+7
      }
    }
  return q;
}

/// The real zeros, row-major [groups, out] (GPTQ v1: the stored nibble + 1). Checks `t`.
inline std::vector<std::int32_t> unpack_int4_zeros(const Int4GroupTensor& t) {
  check_int4_group(t, "unpack_int4_zeros");
  std::vector<std::int32_t> z(static_cast<std::size_t>(t.qzeros.rows * t.out));
  const int plus = t.layout == Int4Layout::GptqV1 ? 1 : 0;
  for (Index g = 0; g < t.qzeros.rows; ++g)
    for (Index c = 0; c < t.qzeros.cols; ++c) {
      const auto word = static_cast<std::uint32_t>(
          t.qzeros.values[static_cast<std::size_t>(g * t.qzeros.cols + c)]);
      for (int p = 0; p < 8; ++p) {
        const Index o = 8 * c + (is_gptq(t.layout) ? p : kAwqOrder[static_cast<std::size_t>(p)]);
        z[static_cast<std::size_t>(g * t.out + o)] =
            static_cast<std::int32_t>((word >> (4 * p)) & 0xFu) + plus;
      }
    }
  return z;
}

/// The whole dequantized weight, row-major [out, in], float32: the reference for Int4GroupBase
/// (plain loops over the unpacked codes; it shares no code with the base's rectangle path).
inline std::vector<float> dequantize_int4_group(const Int4GroupTensor& t) {
  check_int4_group(t, "dequantize_int4_group");
  const std::vector<std::uint8_t> q = unpack_int4_codes(t);
  const std::vector<std::int32_t> z = unpack_int4_zeros(t);
  std::vector<float> w(q.size());
  for (Index o = 0; o < t.out; ++o)
    for (Index i = 0; i < t.in; ++i) {
      const Index g = is_gptq(t.layout) ? t.g_idx[static_cast<std::size_t>(i)]
                                        : (t.group_size == -1 ? 0 : i / t.group_size);
      const float scale = f16_to_float(t.scales.values[static_cast<std::size_t>(g * t.out + o)]);
      const int diff =
          q[static_cast<std::size_t>(o * t.in + i)] - z[static_cast<std::size_t>(g * t.out + o)];
      // Exact in float32 (|diff| <= 16, an 11-bit significand), then float16's single rounding.
      w[static_cast<std::size_t>(o * t.in + i)] =
          f16_to_float(float_to_f16(static_cast<float>(diff) * scale));
    }
  return w;
}

namespace detail {

inline void check_codes(Int4Layout layout, Index out, Index in, Index group_size,
                        const std::vector<std::uint8_t>& codes,
                        const std::vector<std::int32_t>& zeros,
                        const std::vector<std::uint16_t>& scales, const char* where) {
  check_dims(layout, out, in, group_size, where);
  const Index groups = int4_groups(in, group_size);
  oft::detail::require(static_cast<Index>(codes.size()) == out * in, where, ": codes hold ",
                       codes.size(), " values, expected [out, in] = ", Shape{out, in});
  oft::detail::require(static_cast<Index>(zeros.size()) == groups * out, where, ": zeros hold ",
                       zeros.size(), " values, expected [groups, out] = ", Shape{groups, out});
  oft::detail::require(static_cast<Index>(scales.size()) == groups * out, where, ": scales hold ",
                       scales.size(), " values, expected [groups, out] = ", Shape{groups, out});
  for (std::size_t k = 0; k < codes.size(); ++k)
    oft::detail::require(codes[k] <= 15, where, ": code [", static_cast<Index>(k) / in, ", ",
                         static_cast<Index>(k) % in, "] = ", static_cast<int>(codes[k]),
                         " is not a 4-bit value");
  // v1 stores zero - 1 in a nibble, so its zeros are 1..16; the others store the zero itself.
  const int lo = layout == Int4Layout::GptqV1 ? 1 : 0;
  for (std::size_t k = 0; k < zeros.size(); ++k)
    oft::detail::require(zeros[k] >= lo && zeros[k] <= lo + 15, where, ": zero [",
                         static_cast<Index>(k) / out, ", ", static_cast<Index>(k) % out,
                         "] = ", zeros[k], " cannot be stored by ", name(layout),
                         " (its zeros lie in ", lo, "..", lo + 15, ")");
}

inline void put_nibble(std::int32_t& word, int position, unsigned value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(word) | (value << (4 * position));
  word = static_cast<std::int32_t>(bits);
}

}  // namespace detail

/// Packs a GPTQ weight (`version` GptqV1 or GptqV2) from plain integers: `codes` [out, in] in
/// 0..15 (W's layout), `zeros` [groups, out] the real zeros (v1: 1..16, v2: 0..15), `scales`
/// [groups, out] float16 bits, `g_idx` [in] (empty: i / group_size, no act-order). Throws
/// std::invalid_argument for values the layout cannot hold and for inconsistent sizes, and
/// std::domain_error for a non-finite scale.
inline Int4GroupTensor pack_gptq(Int4Layout version, Index out, Index in, Index group_size,
                                 const std::vector<std::uint8_t>& codes,
                                 const std::vector<std::int32_t>& zeros,
                                 const std::vector<std::uint16_t>& scales,
                                 std::vector<std::int32_t> g_idx = {}) {
  oft::detail::require(is_gptq(version), "pack_gptq: layout ", name(version),
                       " is not a GPTQ layout");
  detail::check_codes(version, out, in, group_size, codes, zeros, scales, "pack_gptq");
  const Index groups = int4_groups(in, group_size);
  Int4GroupTensor t;
  t.layout = version;
  t.out = out;
  t.in = in;
  t.group_size = group_size;
  t.qweight = {in / 8, out, std::vector<std::int32_t>(static_cast<std::size_t>(in / 8 * out), 0)};
  t.qzeros = {groups, out / 8,
              std::vector<std::int32_t>(static_cast<std::size_t>(groups * out / 8), 0)};
  t.scales = {groups, out, scales};
  t.g_idx = g_idx.empty() ? gptq_sequential_g_idx(in, group_size) : std::move(g_idx);
  for (Index o = 0; o < out; ++o)
    for (Index i = 0; i < in; ++i)
      detail::put_nibble(t.qweight.values[static_cast<std::size_t>((i / 8) * out + o)],
                         static_cast<int>(i % 8),
                         static_cast<unsigned>(codes[static_cast<std::size_t>(o * in + i)]));
  const int minus = version == Int4Layout::GptqV1 ? 1 : 0;
  for (Index g = 0; g < groups; ++g)
    for (Index o = 0; o < out; ++o)
      detail::put_nibble(
          t.qzeros.values[static_cast<std::size_t>(g * (out / 8) + o / 8)], static_cast<int>(o % 8),
          static_cast<unsigned>(zeros[static_cast<std::size_t>(g * out + o)] - minus));
  check_int4_group(t, "pack_gptq");
  return t;
}

/// Packs an AWQ GEMM weight from plain integers: `codes` [out, in] in 0..15 (W's layout), `zeros`
/// [groups, out] in 0..15, `scales` [groups, out] float16 bits. Throws as pack_gptq.
inline Int4GroupTensor pack_awq(Index out, Index in, Index group_size,
                                const std::vector<std::uint8_t>& codes,
                                const std::vector<std::int32_t>& zeros,
                                const std::vector<std::uint16_t>& scales) {
  detail::check_codes(Int4Layout::Awq, out, in, group_size, codes, zeros, scales, "pack_awq");
  const Index groups = int4_groups(in, group_size);
  Int4GroupTensor t;
  t.layout = Int4Layout::Awq;
  t.out = out;
  t.in = in;
  t.group_size = group_size;
  t.qweight = {in, out / 8, std::vector<std::int32_t>(static_cast<std::size_t>(in * (out / 8)), 0)};
  t.qzeros = {groups, out / 8,
              std::vector<std::int32_t>(static_cast<std::size_t>(groups * (out / 8)), 0)};
  t.scales = {groups, out, scales};
  for (Index o = 0; o < out; ++o) {
    const int nibble = kAwqNibbleOf[static_cast<std::size_t>(o % 8)];
    for (Index i = 0; i < in; ++i)
      detail::put_nibble(t.qweight.values[static_cast<std::size_t>(i * (out / 8) + o / 8)], nibble,
                         static_cast<unsigned>(codes[static_cast<std::size_t>(o * in + i)]));
    for (Index g = 0; g < groups; ++g)
      detail::put_nibble(t.qzeros.values[static_cast<std::size_t>(g * (out / 8) + o / 8)], nibble,
                         static_cast<unsigned>(zeros[static_cast<std::size_t>(g * out + o)]));
  }
  check_int4_group(t, "pack_awq");
  return t;
}

}  // namespace oft::quant

#pragma once
/// \file quant/bnb4.hpp
/// bitsandbytes' 4-bit formats, NF4 and FP4 (Dettmers et al., QLoRA), bit for bit: the codes, the
/// blockwise quantizer and the dequantizer, so that a frozen base quantized by bitsandbytes (or
/// by oft) is read and written exactly as bitsandbytes does (QOFT, SPEC section 9). Facts from
/// bitsandbytes 0.50.2 (functional.py, backends/default/ops.py), checked against it by
/// tests/quant/test_bnb4.cpp on fixtures made by tests/quant/make_bnb4_fixtures.py:
///
/// - The weight is flattened row-major and cut into blocks of `blocksize` values (blocks cross
///   rows); a ragged last block has its own absmax. absmax is float32, max |w| of the block.
/// - Each value is scaled into [-1, 1] and replaced by the index of the nearest code (ties to the
///   lower code: torch.bucketize over the float32 midpoints of the sorted code). Full blocks scale
///   by w * (1 / max(absmax, 1e-38)); the ragged block by w / max(absmax, 1e-38) (a division:
///   the two round differently, and bitsandbytes does both).
/// - Two indices per byte, the first value in the high nibble; an odd count is padded with the
///   index of 0.
/// - Dequantization: code[index] * absmax in float32. (bitsandbytes' own CPU kernels give FP4's
///   value 8, a zero, as +0.0 or -0.0 depending on the kernel; oft gives +0.0, its code's value.)
/// - Allowed block sizes: 32, 64, 128, 256, 512, 1024, 2048, 4096.
/// - Double quantization (`compress_statistics=True`): absmax - offset (offset = mean absmax) is
///   stored as 8-bit indices into a 256-value code (bitsandbytes' signed dynamic map, saved with
///   the checkpoint), blocks of 256 with their own float32 absmax. Reading it back is here
///   (dequantize_bnb4_nested_absmax); writing it is quant/bnb4_double.hpp.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "../index.hpp"

namespace oft::quant {

enum class Bnb4Type { NF4, FP4 };

inline const char* name(Bnb4Type type) { return type == Bnb4Type::NF4 ? "nf4" : "fp4"; }

/// The 16 values of the code, indexed by the 4-bit value (bitsandbytes' get_4bit_type, float32).
inline const std::array<float, 16>& bnb4_code(Bnb4Type type) {
  static const std::array<float, 16> nf4 = {-1.0f,
                                            -0.6961928009986877f,
                                            -0.5250730514526367f,
                                            -0.39491748809814453f,
                                            -0.28444138169288635f,
                                            -0.18477343022823334f,
                                            -0.09105003625154495f,
                                            0.0f,
                                            0.07958029955625534f,
                                            0.16093020141124725f,
                                            0.24611230194568634f,
                                            0.33791524171829224f,
                                            0.44070982933044434f,
                                            0.5626170039176941f,
                                            0.7229568362236023f,
                                            1.0f};
  // FP4 (1 sign, 2 exponent, 1 mantissa bits) in bit-pattern order, normalized by its largest
  // magnitude 12: bitsandbytes divides [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, ...] by 12 in float32.
  // Its "-0" is a Python integer, so value 8 is +0.0, not -0.0 (it shows in the sign of a
  // dequantized zero).
  static const std::array<float, 16> fp4 = [] {
    const float raw[16] = {0.0f, 0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                           0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
    std::array<float, 16> out{};
    for (int i = 0; i < 16; ++i) out[static_cast<std::size_t>(i)] = raw[i] / 12.0f;
    return out;
  }();
  return type == Bnb4Type::NF4 ? nf4 : fp4;
}

/// Whether bitsandbytes accepts `blocksize` for 4-bit quantization.
inline bool bnb4_blocksize_allowed(Index blocksize) {
  for (Index allowed : {32, 64, 128, 256, 512, 1024, 2048, 4096})
    if (blocksize == allowed) return true;
  return false;
}

/// Number of absmax values (blocks, the ragged last one included) and of packed bytes.
inline Index bnb4_blocks(Index numel, Index blocksize) {
  return (numel + blocksize - 1) / blocksize;
}
inline Index bnb4_packed_bytes(Index numel) { return (numel + 1) / 2; }

/// A 4-bit quantized tensor: `packed` (bnb4_packed_bytes(numel)) and `absmax` (bnb4_blocks).
struct Bnb4Tensor {
  Bnb4Type type = Bnb4Type::NF4;
  Index numel = 0;
  Index blocksize = 64;
  std::vector<std::uint8_t> packed;
  std::vector<float> absmax;
};

namespace detail {

inline void check_blocksize(Index blocksize, const char* where) {
  oft::detail::require(bnb4_blocksize_allowed(blocksize), where, ": blocksize ", blocksize,
                       " is not one bitsandbytes allows (32, 64, 128, ..., 4096)");
}

/// The sorted code, its float32 midpoints and, for each sorted position, the 4-bit value.
struct Bounds {
  std::array<float, 16> sorted{};
  std::array<float, 15> midpoints{};
  std::array<std::uint8_t, 16> value_of{};
};

inline const Bounds& bounds(Bnb4Type type) {
  static const auto make = [](Bnb4Type t) {
    const std::array<float, 16>& code = bnb4_code(t);
    std::array<std::uint8_t, 16> order{};
    for (std::uint8_t i = 0; i < 16; ++i) order[i] = i;
    // torch.argsort (stable for equal keys here: FP4's +0 and -0 compare equal; +0 comes first).
    std::stable_sort(order.begin(), order.end(),
                     [&](std::uint8_t a, std::uint8_t b) { return code[a] < code[b]; });
    Bounds out;
    for (std::size_t i = 0; i < 16; ++i) {
      out.sorted[i] = code[order[i]];
      out.value_of[i] = order[i];
    }
    for (std::size_t i = 0; i < 15; ++i)
      out.midpoints[i] = (out.sorted[i] + out.sorted[i + 1]) / 2.0f;
    return out;
  };
  static const Bounds nf4 = make(Bnb4Type::NF4), fp4 = make(Bnb4Type::FP4);
  return type == Bnb4Type::NF4 ? nf4 : fp4;
}

/// torch.bucketize(x, midpoints, right=False): the number of midpoints strictly below x.
inline std::uint8_t nearest(const Bounds& b, float x) {
  std::uint8_t i = 0;
  while (i < 15 && b.midpoints[i] < x) ++i;
  return b.value_of[i];
}

inline float clamp_unit(float v) { return std::min(1.0f, std::max(-1.0f, v)); }

}  // namespace detail

/// Quantizes `numel` float32 values (the flattened weight) as bitsandbytes' quantize_4bit does.
/// Throws std::invalid_argument for a block size bitsandbytes refuses and std::domain_error for a
/// non-finite value (bitsandbytes would produce NaN scales; a frozen base must not).
inline Bnb4Tensor quantize_bnb4(const float* values, Index numel, Index blocksize, Bnb4Type type) {
  detail::check_blocksize(blocksize, "quantize_bnb4");
  oft::detail::require(numel >= 0, "quantize_bnb4: negative element count ", numel);
  oft::detail::require(values != nullptr || numel == 0, "quantize_bnb4: null values");
  for (Index i = 0; i < numel; ++i)
    oft::detail::require_domain(std::isfinite(values[i]), "quantize_bnb4: value ", i,
                                " is not finite (", values[i], ")");
  Bnb4Tensor out;
  out.type = type;
  out.numel = numel;
  out.blocksize = blocksize;
  out.absmax.resize(static_cast<std::size_t>(bnb4_blocks(numel, blocksize)));
  std::vector<std::uint8_t> q(static_cast<std::size_t>(numel + (numel % 2)), 0);
  const detail::Bounds& bounds = detail::bounds(type);
  const Index full_blocks = numel / blocksize;
  for (Index blk = 0; blk < static_cast<Index>(out.absmax.size()); ++blk) {
    const Index first = blk * blocksize, count = std::min(blocksize, numel - first);
    float absmax = 0.0f;
    for (Index i = 0; i < count; ++i) absmax = std::max(absmax, std::fabs(values[first + i]));
    out.absmax[static_cast<std::size_t>(blk)] = absmax;
    const float safe = std::max(absmax, 1e-38f);
    if (blk < full_blocks) {
      const float inverse = 1.0f / safe;
      for (Index i = 0; i < count; ++i)
        q[static_cast<std::size_t>(first + i)] =
            detail::nearest(bounds, detail::clamp_unit(values[first + i] * inverse));
    } else {
      for (Index i = 0; i < count; ++i)
        q[static_cast<std::size_t>(first + i)] =
            detail::nearest(bounds, detail::clamp_unit(values[first + i] / safe));
    }
  }
  if (numel % 2) q.back() = detail::nearest(bounds, 0.0f);
  out.packed.resize(static_cast<std::size_t>(bnb4_packed_bytes(numel)));
  for (std::size_t j = 0; j < out.packed.size(); ++j)
    out.packed[j] = static_cast<std::uint8_t>((q[2 * j] << 4) | q[2 * j + 1]);
  return out;
}

/// Dequantizes into `out` (numel float32 values), bit for bit as bitsandbytes' dequantize_4bit.
/// Throws std::invalid_argument when the sizes disagree (packed bytes, absmax count, blocksize).
inline void dequantize_bnb4(const Bnb4Tensor& t, float* out) {
  detail::check_blocksize(t.blocksize, "dequantize_bnb4");
  oft::detail::require(t.numel >= 0, "dequantize_bnb4: negative element count ", t.numel);
  oft::detail::require(static_cast<Index>(t.packed.size()) == bnb4_packed_bytes(t.numel),
                       "dequantize_bnb4: ", t.packed.size(), " packed bytes for ", t.numel,
                       " values (expected ", bnb4_packed_bytes(t.numel), ")");
  oft::detail::require(static_cast<Index>(t.absmax.size()) == bnb4_blocks(t.numel, t.blocksize),
                       "dequantize_bnb4: absmax has ", t.absmax.size(), " values for ", t.numel,
                       " values in blocks of ", t.blocksize, " (expected ",
                       bnb4_blocks(t.numel, t.blocksize), ")");
  const std::array<float, 16>& code = bnb4_code(t.type);
  for (Index i = 0; i < t.numel; ++i) {
    const std::uint8_t byte = t.packed[static_cast<std::size_t>(i / 2)];
    const std::uint8_t index =
        (i % 2 == 0) ? static_cast<std::uint8_t>(byte >> 4) : static_cast<std::uint8_t>(byte & 0xF);
    out[i] = code[index] * t.absmax[static_cast<std::size_t>(i / t.blocksize)];
  }
}

/// absmax from bitsandbytes' double quantization: absmax[i] = code[q[i]] * nested_absmax[i / 256]
/// + offset, in float32 and in that order (as dequantize_blockwise, then `absmax += offset`).
/// `code` holds 256 values (the checkpoint's `nested_quant_map`). Throws std::invalid_argument
/// when nested_absmax does not have one value per block of `nested_blocksize`.
inline std::vector<float> dequantize_bnb4_nested_absmax(const std::uint8_t* qabsmax, Index count,
                                                        const float* nested_absmax,
                                                        Index nested_count, const float* code,
                                                        float offset,
                                                        Index nested_blocksize = 256) {
  oft::detail::require(count >= 0 && nested_blocksize > 0,
                       "dequantize_bnb4_nested_absmax: bad sizes (count ", count, ", blocksize ",
                       nested_blocksize, ")");
  oft::detail::require(nested_count == bnb4_blocks(count, nested_blocksize),
                       "dequantize_bnb4_nested_absmax: nested_absmax has ", nested_count,
                       " values for ", count, " quantized absmax in blocks of ", nested_blocksize,
                       " (expected ", bnb4_blocks(count, nested_blocksize), ")");
  oft::detail::require(
      (qabsmax != nullptr && nested_absmax != nullptr && code != nullptr) || count == 0,
      "dequantize_bnb4_nested_absmax: null input");
  std::vector<float> out(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i) {
    // volatile: the product must be rounded before the sum, as in bitsandbytes; GCC would
    // otherwise contract the two into one FMA (-ffp-contract=fast) and round once.
    const volatile float scaled = code[qabsmax[i]] * nested_absmax[i / nested_blocksize];
    out[static_cast<std::size_t>(i)] = scaled + offset;
  }
  return out;
}

}  // namespace oft::quant

#pragma once
/// \file quant/bnb_dynamic.hpp
/// bitsandbytes' 8-bit blockwise quantization with its signed "dynamic" code (Dettmers, 8-bit
/// approximations): the format double quantization stores the NF4/FP4 absmax in
/// (quant/bnb4_double.hpp). Facts from bitsandbytes 0.50.2, checked against it by
/// tests/quant/test_bnb4_double.cpp (fixtures by make_bnb4_double_fixtures.py):
///
/// - The code: 256 sorted float32 values in [-0.99297, 1] (create_dynamic_map(signed=True)),
///   saved with a checkpoint as `nested_quant_map`. kBnbDynamicCode holds it bit for bit.
/// - Blocks of `blocksize` consecutive values (the last may be ragged), each with a float32
///   absmax = max |x| of the block; an all-zero block stores absmax 0 and index 0 everywhere.
/// - Each value becomes x * (1 / absmax), clamped to [-1, 1], and is looked up, as bitsandbytes'
///   CPU kernel does, through a table of 65536 bins over [-1, 1]: bin i stands for the value
///   -1 + 2i / 65535 and holds the index of the code value nearest to it (ties to the lower
///   index), and x goes to bin floor((x + 1) * 0.5 * 65535 + 0.5). That is not always the code
///   value nearest to x itself (a bin that straddles a midpoint is decided by its centre);
///   bitsandbytes' CUDA kernel picks the exact nearest value and so can differ from its CPU
///   kernel in such a bin. oft reproduces the CPU kernel.
/// - Dequantization: code[q] * absmax[block] in float32.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../errors.hpp"
#include "../index.hpp"

namespace oft::quant {

/// bitsandbytes' signed dynamic 8-bit code (create_dynamic_map(signed=True), float32), sorted.
inline constexpr std::array<float, 256> kBnbDynamicCode = {
    -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.eep-1f,      -0x1.e6ccccp-1f,  -0x1.df999ap-1f,
    -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.cap-1f,      -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,
    -0x1.b46666p-1f,  -0x1.ad3334p-1f,  -0x1.a6p-1f,      -0x1.9eccccp-1f,  -0x1.97999ap-1f,
    -0x1.906666p-1f,  -0x1.893334p-1f,  -0x1.82p-1f,      -0x1.7accccp-1f,  -0x1.73999ap-1f,
    -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5ep-1f,      -0x1.56ccccp-1f,  -0x1.4f999ap-1f,
    -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3ap-1f,      -0x1.32ccccp-1f,  -0x1.2b999ap-1f,
    -0x1.246668p-1f,  -0x1.1d3334p-1f,  -0x1.16p-1f,      -0x1.0eccccp-1f,  -0x1.079998p-1f,
    -0x1.006666p-1f,  -0x1.f26664p-2f,  -0x1.e4p-2f,      -0x1.d59998p-2f,  -0x1.c73334p-2f,
    -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9cp-2f,      -0x1.8d9998p-2f,  -0x1.7f3334p-2f,
    -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.54p-2f,      -0x1.459998p-2f,  -0x1.373334p-2f,
    -0x1.28ccccp-2f,  -0x1.1a6668p-2f,  -0x1.0cp-2f,      -0x1.fb3332p-3f,  -0x1.de6666p-3f,
    -0x1.c1999ap-3f,  -0x1.a4ccccp-3f,  -0x1.88p-3f,      -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
    -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,  -0x1.93d70ap-4f,
    -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,  -0x1.65c29p-4f,   -0x1.5a3d7p-4f,
    -0x1.4eb854p-4f,  -0x1.433334p-4f,  -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,
    -0x1.151ebap-4f,  -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,  -0x1.5ae146p-5f,
    -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c29p-5f,   -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,
    -0x1.a147aep-6f,  -0x1.733334p-6f,  -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,
    -0x1.75c29p-7f,   -0x1.3e76c8p-7f,  -0x1.2c083p-7f,   -0x1.19999ap-7f,  -0x1.072b02p-7f,
    -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,  -0x1.56041ap-8f,
    -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,  -0x1.851eb8p-9f,  -0x1.3b645ap-9f,
    -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f,
    -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f,
    -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0.0p+0f,        0x1.27476ep-21f,  0x1.b43528p-19f,
    0x1.040bfep-17f,  0x1.64840cp-16f,  0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,
    0x1.47ae16p-13f,  0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
    0x1.78d5p-11f,    0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,  0x1.e353f8p-10f,
    0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,   0x1.0c49bap-8f,   0x1.3126e8p-8f,
    0x1.56041ap-8f,   0x1.7ae148p-8f,   0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,
    0x1.072b02p-7f,   0x1.19999ap-7f,   0x1.2c083p-7f,    0x1.3e76c8p-7f,   0x1.75c29p-7f,
    0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,   0x1.a147aep-6f,
    0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c29p-5f,    0x1.2ccccep-5f,   0x1.43d70ap-5f,
    0x1.5ae146p-5f,   0x1.71eb86p-5f,   0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,
    0x1.ce147ap-5f,   0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
    0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,   0x1.4eb854p-4f,
    0x1.5a3d7p-4f,    0x1.65c29p-4f,    0x1.7147aep-4f,   0x1.7ccccep-4f,   0x1.8851eep-4f,
    0x1.93d70ap-4f,   0x1.b66668p-4f,   0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,
    0x1.4e6666p-3f,   0x1.6b3334p-3f,   0x1.88p-3f,       0x1.a4ccccp-3f,   0x1.c1999ap-3f,
    0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0cp-2f,       0x1.1a6668p-2f,   0x1.28ccccp-2f,
    0x1.373334p-2f,   0x1.459998p-2f,   0x1.54p-2f,       0x1.626666p-2f,   0x1.70ccccp-2f,
    0x1.7f3334p-2f,   0x1.8d9998p-2f,   0x1.9cp-2f,       0x1.aa6666p-2f,   0x1.b8ccccp-2f,
    0x1.c73334p-2f,   0x1.d59998p-2f,   0x1.e4p-2f,       0x1.f26664p-2f,   0x1.006666p-1f,
    0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.16p-1f,       0x1.1d3334p-1f,   0x1.246668p-1f,
    0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3ap-1f,       0x1.413334p-1f,   0x1.486668p-1f,
    0x1.4f999ap-1f,   0x1.56ccccp-1f,   0x1.5ep-1f,       0x1.653334p-1f,   0x1.6c6668p-1f,
    0x1.73999ap-1f,   0x1.7accccp-1f,   0x1.82p-1f,       0x1.893334p-1f,   0x1.906666p-1f,
    0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a6p-1f,       0x1.ad3334p-1f,   0x1.b46666p-1f,
    0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.cap-1f,       0x1.d13334p-1f,   0x1.d86666p-1f,
    0x1.df999ap-1f,   0x1.e6ccccp-1f,   0x1.eep-1f,       0x1.f53334p-1f,   0x1.fc6666p-1f,
    0x1.0p+0f,
};

/// An 8-bit blockwise-quantized vector: one code index per value, one absmax per block.
struct BnbBlockwise8 {
  Index blocksize = 256;
  std::vector<std::uint8_t> codes;
  std::vector<float> absmax;
};

namespace detail {

inline constexpr int kLutBins = 65536;

/// For each of the 65536 bins over [-1, 1], the index of the code value nearest to the bin's
/// centre (the first whose upper midpoint is not below it). Built once per code.
inline std::vector<std::uint8_t> make_lut(const std::array<float, 256>& code) {
  std::array<float, 255> midpoints{};
  for (std::size_t i = 0; i < 255; ++i) midpoints[i] = 0.5f * (code[i] + code[i + 1]);
  std::vector<std::uint8_t> lut(kLutBins);
  std::size_t index = 0;
  for (int i = 0; i < kLutBins; ++i) {
    const float centre = -1.0f + (2.0f * static_cast<float>(i)) / static_cast<float>(kLutBins - 1);
    while (index < 255 && midpoints[index] < centre) ++index;
    lut[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(index);
  }
  return lut;
}

inline const std::vector<std::uint8_t>& dynamic_lut() {
  static const std::vector<std::uint8_t> lut = make_lut(kBnbDynamicCode);
  return lut;
}

inline std::uint16_t bin_of(float scaled) {
  const float x = std::min(1.0f, std::max(-1.0f, scaled));
  // volatile: the product is rounded before the + 0.5, as in bitsandbytes' kernel (GCC would
  // otherwise contract the two into one fused multiply-add).
  const volatile float position = (x + 1.0f) * 0.5f * static_cast<float>(kLutBins - 1);
  return static_cast<std::uint16_t>(position + 0.5f);
}

}  // namespace detail

/// Quantizes `count` values in blocks of `blocksize` with bitsandbytes' dynamic code, as its CPU
/// quantize_blockwise. Throws std::invalid_argument for a non-positive blocksize and
/// std::domain_error for a non-finite value.
inline BnbBlockwise8 quantize_blockwise_dynamic(const float* values, Index count,
                                                Index blocksize = 256) {
  oft::detail::require(blocksize > 0, "quantize_blockwise_dynamic: blocksize ", blocksize,
                       " must be positive");
  oft::detail::require(count >= 0, "quantize_blockwise_dynamic: negative count ", count);
  oft::detail::require(values != nullptr || count == 0, "quantize_blockwise_dynamic: null values");
  for (Index i = 0; i < count; ++i)
    oft::detail::require_domain(std::isfinite(values[i]), "quantize_blockwise_dynamic: value ", i,
                                " is not finite (", values[i], ")");
  const std::vector<std::uint8_t>& lut = detail::dynamic_lut();
  BnbBlockwise8 out;
  out.blocksize = blocksize;
  out.codes.assign(static_cast<std::size_t>(count), 0);
  out.absmax.assign(static_cast<std::size_t>((count + blocksize - 1) / blocksize), 0.0f);
  for (std::size_t block = 0; block < out.absmax.size(); ++block) {
    const Index first = static_cast<Index>(block) * blocksize;
    const Index end = std::min(count, first + blocksize);
    float absmax = 0.0f;
    for (Index i = first; i < end; ++i) absmax = std::max(absmax, std::fabs(values[i]));
    out.absmax[block] = absmax;
    if (absmax == 0.0f) continue;  // codes stay 0, as bitsandbytes writes them
    const float inverse = 1.0f / absmax;
    for (Index i = first; i < end; ++i)
      out.codes[static_cast<std::size_t>(i)] = lut[detail::bin_of(values[i] * inverse)];
  }
  return out;
}

/// code[q] * absmax[block] in float32, as bitsandbytes' dequantize_blockwise; `code` defaults to
/// the dynamic one (a checkpoint carries its own, which should be passed).
inline std::vector<float> dequantize_blockwise(
    const BnbBlockwise8& q, const std::array<float, 256>& code = kBnbDynamicCode) {
  const Index count = static_cast<Index>(q.codes.size());
  oft::detail::require(q.blocksize > 0, "dequantize_blockwise: blocksize ", q.blocksize,
                       " must be positive");
  const Index blocks = (count + q.blocksize - 1) / q.blocksize;
  oft::detail::require(static_cast<Index>(q.absmax.size()) == blocks,
                       "dequantize_blockwise: absmax has ", q.absmax.size(), " values for ", count,
                       " codes in blocks of ", q.blocksize, " (expected ", blocks, ")");
  std::vector<float> out(q.codes.size());
  for (Index i = 0; i < count; ++i)
    out[static_cast<std::size_t>(i)] = code[q.codes[static_cast<std::size_t>(i)]] *
                                       q.absmax[static_cast<std::size_t>(i / q.blocksize)];
  return out;
}

}  // namespace oft::quant

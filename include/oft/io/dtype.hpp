#pragma once
/// \file io/dtype.hpp
/// safetensors element types: names, widths, and the C++ type each typed accessor uses.
///
/// The list, the spellings and the order are those of the reference implementation
/// (huggingface/safetensors, `safetensors/src/tensor.rs`, `enum Dtype`). The order matters: the
/// reference writer lays tensors out by *decreasing* position in this list ("They MUST be in
/// increasing alignment order"), then by name, which keeps every tensor naturally aligned once the
/// header is padded to 8 bytes. oft's writer does the same, so its files match the reference's
/// byte for byte.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "../half_types.hpp"

namespace oft::io {

/// A safetensors dtype. Enumerators are spelled as in the file header.
enum class Dtype : std::uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

namespace detail {
struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  unsigned bits;
};
// Bit widths from the reference's `Dtype::bitsize`.
inline constexpr DtypeEntry kDtypes[] = {
    {Dtype::BOOL, "BOOL", 8},
    {Dtype::F4, "F4", 4},
    {Dtype::F6_E2M3, "F6_E2M3", 6},
    {Dtype::F6_E3M2, "F6_E3M2", 6},
    {Dtype::U8, "U8", 8},
    {Dtype::I8, "I8", 8},
    {Dtype::F8_E5M2, "F8_E5M2", 8},
    {Dtype::F8_E4M3, "F8_E4M3", 8},
    {Dtype::F8_E8M0, "F8_E8M0", 8},
    {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {Dtype::I16, "I16", 16},
    {Dtype::U16, "U16", 16},
    {Dtype::F16, "F16", 16},
    {Dtype::BF16, "BF16", 16},
    {Dtype::I32, "I32", 32},
    {Dtype::U32, "U32", 32},
    {Dtype::F32, "F32", 32},
    {Dtype::C64, "C64", 64},
    {Dtype::F64, "F64", 64},
    {Dtype::I64, "I64", 64},
    {Dtype::U64, "U64", 64},
};
inline constexpr std::size_t kDtypeCount = sizeof(kDtypes) / sizeof(kDtypes[0]);
// dtype_name/dtype_bits index the table by enumerator: keep the two in the same order.
constexpr bool dtype_table_in_enum_order() {
  for (std::size_t i = 0; i < kDtypeCount; ++i)
    if (static_cast<std::size_t>(kDtypes[i].dtype) != i) return false;
  return kDtypeCount == static_cast<std::size_t>(Dtype::U64) + 1;
}
static_assert(dtype_table_in_enum_order(), "oft::io: kDtypes must list every Dtype in enum order");
}  // namespace detail

/// The header spelling of `dtype` ("F32", "BF16", ...).
constexpr std::string_view dtype_name(Dtype dtype) noexcept {
  return detail::kDtypes[static_cast<std::size_t>(dtype)].name;
}

/// Bits per element: 4 (F4), 6 (F6_*), 8, 16, 32 or 64.
constexpr unsigned dtype_bits(Dtype dtype) noexcept {
  return detail::kDtypes[static_cast<std::size_t>(dtype)].bits;
}

/// The dtype spelled `name` exactly (case-sensitive, as the reference), or nothing.
constexpr std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
  for (const auto& entry : detail::kDtypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

/// F16 and BF16 elements are oft's 16-bit float types (half_types.hpp: oft::float16 = Eigen::half,
/// oft::bfloat16 = Eigen::bfloat16), distinct from each other and from std::uint16_t, so that F16
/// and BF16 tensors cannot be read as each other nor as U16/I16, and a BF16 tensor is viewed as
/// the type the CPU kernels take. Bits with oft::bits_of, float with oft::to_float (half_types.hpp).
using Float16 [[deprecated("use oft::float16 (half_types.hpp), the one binary16 type")]] = oft::float16;
using BFloat16 [[deprecated("use oft::bfloat16 (half_types.hpp), the one bfloat16 type")]] =
    oft::bfloat16;

/// The dtype whose elements a typed accessor views as `T`. Only types with a one-to-one dtype
/// are mapped: BOOL (bytes other than 0/1 would be undefined as `bool`), C64 and the FP8/FP6/FP4
/// formats are read as raw bytes (`TensorView::data`).
template <class T>
struct DtypeOf {
  static_assert(sizeof(T) == 0,
                "oft::io: no safetensors dtype for this C++ type; use double, float, "
                "oft::float16, oft::bfloat16, std::int64_t/uint64_t, std::int32_t/uint32_t, "
                "std::int16_t/uint16_t, std::int8_t or std::uint8_t");
};
template <> struct DtypeOf<double> {
  static constexpr Dtype value = Dtype::F64;
  static constexpr const char* cpp_name = "double";
};
template <> struct DtypeOf<float> {
  static constexpr Dtype value = Dtype::F32;
  static constexpr const char* cpp_name = "float";
};
template <> struct DtypeOf<oft::float16> {
  static constexpr Dtype value = Dtype::F16;
  static constexpr const char* cpp_name = "oft::float16";
};
template <> struct DtypeOf<oft::bfloat16> {
  static constexpr Dtype value = Dtype::BF16;
  static constexpr const char* cpp_name = "oft::bfloat16";
};
template <> struct DtypeOf<std::int64_t> {
  static constexpr Dtype value = Dtype::I64;
  static constexpr const char* cpp_name = "std::int64_t";
};
template <> struct DtypeOf<std::uint64_t> {
  static constexpr Dtype value = Dtype::U64;
  static constexpr const char* cpp_name = "std::uint64_t";
};
template <> struct DtypeOf<std::int32_t> {
  static constexpr Dtype value = Dtype::I32;
  static constexpr const char* cpp_name = "std::int32_t";
};
template <> struct DtypeOf<std::uint32_t> {
  static constexpr Dtype value = Dtype::U32;
  static constexpr const char* cpp_name = "std::uint32_t";
};
template <> struct DtypeOf<std::int16_t> {
  static constexpr Dtype value = Dtype::I16;
  static constexpr const char* cpp_name = "std::int16_t";
};
template <> struct DtypeOf<std::uint16_t> {
  static constexpr Dtype value = Dtype::U16;
  static constexpr const char* cpp_name = "std::uint16_t";
};
template <> struct DtypeOf<std::int8_t> {
  static constexpr Dtype value = Dtype::I8;
  static constexpr const char* cpp_name = "std::int8_t";
};
template <> struct DtypeOf<std::uint8_t> {
  static constexpr Dtype value = Dtype::U8;
  static constexpr const char* cpp_name = "std::uint8_t";
};

template <class T>
inline constexpr Dtype dtype_of = DtypeOf<T>::value;

// The typed views reinterpret little-endian file bytes in place.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "oft::io reads safetensors (little-endian) in place and supports little-endian hosts only"
#endif
static_assert(sizeof(oft::float16) == 2 && alignof(oft::float16) == 2 &&
                  sizeof(oft::bfloat16) == 2 && alignof(oft::bfloat16) == 2,
              "oft::io: oft::float16/bfloat16 must be bare 16-bit words to view file bytes");

}  // namespace oft::io

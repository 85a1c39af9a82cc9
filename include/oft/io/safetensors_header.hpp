#pragma once
/// \file io/safetensors_header.hpp
/// Parsing and validating a safetensors header, for a file already in memory (mapped or read).
///
/// The layout, from the reference implementation (huggingface/safetensors, README "Format" and
/// `safetensors/src/tensor.rs`): an unsigned 64-bit little-endian header length N; N bytes of
/// UTF-8 JSON `{name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}`,
/// with an optional `"__metadata__": {string: string}`, beginning with `{` and possibly padded
/// with spaces; then the data section, which the offsets index from its first byte, C order,
/// little-endian. parse_header() enforces everything the reference's `read_metadata` and
/// `Metadata::validate` enforce, and more (docs/io.md lists every rule):
///
/// - the file holds the 8 length bytes; N <= 100,000,000 (the reference's MAX_HEADER_SIZE);
///   8 + N <= file size;
/// - the header begins with `{` (required by the format, not checked by the reference), is valid
///   UTF-8 and valid JSON, has no duplicate key at any level (the format forbids them; the
///   reference keeps the last one) and is an object;
/// - `__metadata__`, when present (or null, as the reference's `Option` allows), is an object of
///   string values;
/// - each tensor entry is an object with exactly `dtype`, `shape` and `data_offsets` (the
///   reference ignores unknown fields); the dtype is one of io/dtype.hpp; the shape holds
///   non-negative integers; the offsets are two non-negative integers, begin <= end;
/// - elements x bits neither overflows 64 bits (with the reference's left-to-right product, so
///   [2^40, 2^40, 0] is refused as it is there) nor leaves a partial byte, and end - begin is
///   exactly that many bytes;
/// - no tensor ends past the data section; sorted by offsets, the tensors tile the data section
///   from 0 with no hole and no overlap, and nothing follows the last one.
///
/// Every refusal is a format_error naming the file, the tensor and the values.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "detail/json.hpp"
#include "detail/utf8.hpp"
#include "dtype.hpp"
#include "errors.hpp"

namespace oft::io {

// Offsets and sizes are 64-bit in the format; a 32-bit size_t could not map such files anyway.
static_assert(sizeof(std::size_t) == 8, "oft::io needs a 64-bit platform (size_t of 64 bits)");

/// The reference's MAX_HEADER_SIZE: longer headers are refused before being read.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

/// One tensor as its header entry describes it.
struct TensorInfo {
  std::string name;
  Dtype dtype{};
  std::vector<std::uint64_t> shape;  ///< empty for a scalar; may contain 0
  std::uint64_t begin = 0;           ///< data_offsets[0], from the start of the data section
  std::uint64_t end = 0;             ///< data_offsets[1], one past the last byte

  /// Number of elements (1 for a scalar). Cannot overflow once parse_header accepted the entry.
  std::uint64_t numel() const noexcept {
    std::uint64_t n = 1;
    for (const std::uint64_t d : shape) n *= d;
    return n;
  }
  std::uint64_t bytes() const noexcept { return end - begin; }
};

/// A validated header.
struct Header {
  std::uint64_t header_bytes = 0;            ///< N, the JSON's length including padding
  std::vector<TensorInfo> tensors;           ///< in data order: by (begin, end), then name
  std::map<std::string, std::string> metadata;  ///< `__metadata__`; empty when absent

  /// Where the data section starts in the file: 8 + N.
  std::uint64_t data_start() const noexcept { return 8 + header_bytes; }
};

namespace detail {

/// Elements x bits of `shape` and `dtype` in bytes, or false on overflow / a partial byte, as the
/// reference computes it (left-to-right checked product).
inline bool tensor_bytes(const std::vector<std::uint64_t>& shape, Dtype dtype, std::uint64_t& bytes,
                         bool& partial_byte) noexcept {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t n = 1;
  partial_byte = false;
  for (const std::uint64_t d : shape) {
    if (d != 0 && n > kMax / d) return false;
    n *= d;
  }
  const std::uint64_t bits = dtype_bits(dtype);
  if (n > kMax / bits) return false;
  n *= bits;
  partial_byte = n % 8 != 0;
  bytes = n / 8;
  return !partial_byte;
}

/// A JSON number that is a non-negative integer within uint64, what serde accepts for usize:
/// not 2.0, not 1e3, not -0 (serde_json reads "-0" as a float and refuses it).
inline bool json_uint(const nlohmann::json& value, std::uint64_t& out) {
  if (!value.is_number_unsigned()) return false;
  out = value.get<std::uint64_t>();
  return true;
}

/// `value` as JSON text for messages; nlohmann stores "-0" as the integer 0 and would print 0.
inline std::string json_text(const nlohmann::json& value) {
  if (value.is_number_integer() && !value.is_number_unsigned() && value.get<std::int64_t>() == 0) return "-0";
  if (!value.is_array()) return value.dump();
  std::string text = "[";
  for (std::size_t i = 0; i < value.size(); ++i) text += (i ? "," : "") + json_text(value[i]);
  return text + "]";
}

inline TensorInfo parse_tensor_entry(const std::string& where, const std::string& name,
                                     const nlohmann::json& entry) {
  const std::string tensor = "tensor " + detail::quote_name(name);
  if (!entry.is_object())
    fail(where, tensor, " is ", json_kind(entry), ", not an object {\"dtype\", \"shape\", \"data_offsets\"}");
  for (const auto& field : entry.items())
    if (field.key() != "dtype" && field.key() != "shape" && field.key() != "data_offsets")
      fail(where, tensor, " has an unknown field ", detail::quote_name(field.key()),
           " (a tensor entry holds exactly dtype, shape and data_offsets)");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(field)) fail(where, tensor, " has no \"", field, "\"");

  TensorInfo info;
  info.name = name;
  const nlohmann::json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(where, tensor, " dtype is ", json_kind(dtype), " (", dtype.dump(), "), not a string");
  const auto parsed = parse_dtype(dtype.get_ref<const std::string&>());
  if (!parsed) {
    std::string known;
    for (const auto& e : kDtypes) known += (known.empty() ? "" : ", ") + std::string(e.name);
    fail(where, tensor, " has unknown dtype ", dtype.dump(), " (known: ", known, ")");
  }
  info.dtype = *parsed;

  const nlohmann::json& shape = entry["shape"];
  if (!shape.is_array()) fail(where, tensor, " shape is ", json_kind(shape), " (", shape.dump(), "), not an array");
  for (std::size_t i = 0; i < shape.size(); ++i) {
    std::uint64_t d = 0;
    if (!json_uint(shape[i], d))
      fail(where, tensor, " shape ", json_text(shape), ": dimension ", i, " is ", json_text(shape[i]),
           ", not a non-negative integer");
    info.shape.push_back(d);
  }

  const nlohmann::json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !json_uint(offsets[0], info.begin) ||
      !json_uint(offsets[1], info.end))
    fail(where, tensor, " data_offsets ", json_text(offsets), " are not two non-negative integers [begin, end]");
  if (info.begin > info.end)
    fail(where, tensor, " data_offsets [", info.begin, ", ", info.end, ") begin after they end");

  std::uint64_t needed = 0;
  bool partial = false;
  if (!tensor_bytes(info.shape, info.dtype, needed, partial)) {
    if (partial)
      fail(where, tensor, " shape ", dims(info.shape), " of ", dtype_name(info.dtype),
           " is not a whole number of bytes");
    fail(where, tensor, " shape ", dims(info.shape), " of ", dtype_name(info.dtype),
         ": elements x ", dtype_bits(info.dtype), " bits overflows 64 bits");
  }
  if (info.end - info.begin != needed)
    fail(where, tensor, " data_offsets [", info.begin, ", ", info.end, ") hold ", info.end - info.begin,
         " bytes, but shape ", dims(info.shape), " of ", dtype_name(info.dtype), " needs ", needed);
  return info;
}

}  // namespace detail

/// Validates the safetensors file `file[0, size)` and returns its header. `where` names the
/// file in messages (its path). Throws format_error; reads nothing outside the buffer.
inline Header parse_header(const std::string& where, const std::byte* file, std::size_t size) {
  using detail::fail;
  if (size < 8) fail(where, "the file holds ", size, " bytes, fewer than the 8-byte header length");
  unsigned char length_bytes[8];
  std::memcpy(length_bytes, file, 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | length_bytes[i];  // little-endian on any host
  if (n > kMaxHeaderBytes)
    fail(where, "header length ", n, " exceeds the ", kMaxHeaderBytes,
         "-byte limit (safetensors' MAX_HEADER_SIZE)");
  if (n > size - 8)
    fail(where, "header length ", n, " runs past the end of the file (8 + ", n, " > ", size,
         " bytes): truncated?");

  const std::string_view text(reinterpret_cast<const char*>(file) + 8, static_cast<std::size_t>(n));
  if (text.empty() || text.front() != '{')
    fail(where, "the header does not begin with '{'",
         text.empty() ? std::string(" (it is empty)")
                      : oft::detail::message(" (byte 0x", std::hex,
                                             static_cast<unsigned>(static_cast<unsigned char>(text.front())), ")"));
  if (const std::size_t bad = detail::utf8_error_offset(text); bad != text.size())
    fail(where, "the header is not valid UTF-8: byte 0x", std::hex,
         static_cast<unsigned>(static_cast<unsigned char>(text[bad])), std::dec, " at header offset ", bad);
  // Depth 3: the header object, a tensor entry, its shape.
  const nlohmann::json json = detail::parse_json_strict(where, text, "the header", 3);
  if (!json.is_object()) fail(where, "the header is ", detail::json_kind(json), ", not an object");

  Header header;
  header.header_bytes = n;
  for (const auto& item : json.items()) {
    if (item.key() == "__metadata__") {
      const nlohmann::json& meta = item.value();
      if (meta.is_null()) continue;
      if (!meta.is_object())
        fail(where, "__metadata__ is ", detail::json_kind(meta), ", not an object of strings");
      for (const auto& kv : meta.items()) {
        if (!kv.value().is_string())
          fail(where, "__metadata__ key ", detail::quote_name(kv.key()), " holds ", detail::json_kind(kv.value()), " (",
               kv.value().dump(), "); safetensors metadata values must be strings");
        header.metadata.emplace(kv.key(), kv.value().get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(detail::parse_tensor_entry(where, item.key(), item.value()));
  }

  const std::uint64_t data_bytes = size - 8 - n;
  for (const TensorInfo& t : header.tensors)
    if (t.end > data_bytes)
      fail(where, "tensor ", detail::quote_name(t.name), " data_offsets [", t.begin, ", ", t.end, ") run past the data section, which holds ",
           data_bytes, " bytes (file ", size, " bytes, header 8 + ", n, "): truncated?");

  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  std::uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin > covered)
      fail(where, "tensor ", detail::quote_name(t.name), " data_offsets [", t.begin, ", ", t.end, ") leave a hole of ",
           t.begin - covered, " bytes after ",
           previous ? "tensor " + detail::quote_name(previous->name) + " ending at " + std::to_string(covered)
                    : std::string("the start of the data section"),
           " (safetensors forbids holes)");
    if (t.begin < covered)
      fail(where, "tensor ", detail::quote_name(t.name), " data_offsets [", t.begin, ", ", t.end, ") overlap tensor ",
           detail::quote_name(previous->name), " [", previous->begin, ", ", previous->end, ")");
    covered = t.end;
    previous = &t;
  }
  if (covered != data_bytes)
    fail(where, "the data section holds ", data_bytes, " bytes but the tensors cover ", covered, ": ",
         data_bytes - covered, " trailing bytes", previous ? " after tensor " + detail::quote_name(previous->name) : std::string(),
         " (safetensors forbids them)");
  return header;
}

}  // namespace oft::io

#pragma once
/// \file io/errors.hpp
/// What oft::io throws.
///
/// - `oft::io::format_error` (a `std::invalid_argument`): a file or index that breaks the
///   safetensors format, or a writer entry that would. The message names the file, the tensor
///   and the values at fault, e.g. `oft: model.safetensors: tensor 'a.weight' data_offsets
///   [0, 12) hold 12 bytes, but shape [2, 2] of F32 needs 16`.
/// - `std::system_error` (generic category, the errno): the operating system refused (missing
///   file, permissions, disk full); `what()` names the path and ends with the errno text.
/// - `std::invalid_argument`: a caller's mistake with a valid file (asking an F32 tensor for
///   doubles, a misaligned typed view); `std::out_of_range`: a tensor name the file lacks.

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../errors.hpp"

namespace oft::io {

/// A file, index or writer entry that breaks the safetensors format.
class format_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// `[2, 3]`: how shapes and offsets appear in messages (as in the JSON header).
inline std::string dims(const std::vector<std::uint64_t>& values) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << ']';
  return out.str();
}

/// `'name'` for messages: a name from a file may hold any character, so control characters
/// (a NUL would end what()) are written as \xNN; everything else, UTF-8 included, as is.
inline std::string quote_name(std::string_view name) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (const char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out + "'";
}

/// Throws format_error "oft: <where>: <parts...>".
template <class... Parts>
[[noreturn]] void fail(const std::string& where, Parts&&... parts) {
  throw format_error(oft::detail::message("oft: ", where, ": ", std::forward<Parts>(parts)...));
}

/// Throws std::system_error for the current errno: "oft: <what> '<path>': <strerror>".
[[noreturn]] inline void fail_errno(const char* what, const std::filesystem::path& path) {
  const int code = errno;
  throw std::system_error(code, std::generic_category(),
                          oft::detail::message("oft: ", what, " '", path.string(), "'"));
}

}  // namespace detail
}  // namespace oft::io

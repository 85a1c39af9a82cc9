#pragma once
/// \file io/detail/adapter_files.hpp
/// What the PEFT adapter readers and writers share (peft_adapter.hpp for OFT,
/// peft_family_adapter.hpp for BOFT and HRA): a key-suffix test, an optional config field read
/// with a named error, and the config file written so that a reader never sees half of it.

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "../errors.hpp"

namespace oft::io::detail {

inline bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

/// json[key] as T, or `fallback` when the key is absent or null; format_error naming the file
/// (`where`), the field and its value when it has the wrong type.
template <class T>
T config_field(const nlohmann::ordered_json& json, const char* key, const std::string& where, T fallback) {
  if (!json.contains(key) || json.at(key).is_null()) return fallback;
  try {
    return json.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(where, "field '", key, "' is ", json.at(key).dump(), ", of the wrong type");
  }
}

/// Writes `text` to `path` through a temporary beside it and a rename.
inline void write_text_atomically(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path temporary = path.string() + ".tmp-oft";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      fail_errno("cannot write", temporary);
    }
  }
  std::filesystem::rename(temporary, path);
}

}  // namespace oft::io::detail

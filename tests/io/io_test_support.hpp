#pragma once
// Helpers shared by the oft::io tests: a scratch directory per test, raw file bytes, and forged
// safetensors files (a header text and data bytes put together by hand, so that every
// malformation can be made exactly).

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#ifndef OFT_IO_FIXTURES_DIR
#error "tests/io/CMakeLists.txt defines OFT_IO_FIXTURES_DIR"
#endif

namespace oft_io_test {

namespace fs = std::filesystem;

inline fs::path fixture(const std::string& name) { return fs::path(OFT_IO_FIXTURES_DIR) / name; }

/// A fresh directory, removed with everything in it at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "oft_io_" + std::to_string(::getpid()) + "_" +
                       (info ? std::string(info->test_suite_name()) + "_" + info->name() : "x");
    for (char& c : name)
      if (c == '/') c = '_';  // parameterized tests are named Prefix/Suite.Name/Index
    path_ = fs::temp_directory_path() / name;
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  /// Names of the entries in the directory (to see that nothing was left behind).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    return names;
  }

 private:
  fs::path path_;
};

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

/// A safetensors file: the length (`length` or the header's size), the header, the data.
inline std::string forge(std::string_view header, std::string_view data = {},
                         std::optional<std::uint64_t> length = std::nullopt) {
  return le64(length.value_or(header.size())) + std::string(header) + std::string(data);
}

/// `header` padded with spaces to a multiple of 8, as writers do (keeps the data aligned).
inline std::string padded(std::string header) {
  header.resize((header.size() + 7) / 8 * 8, ' ');
  return header;
}

/// Bytes of `values` (host order = little-endian, which oft::io requires).
template <class T>
std::string bytes_of(const std::vector<T>& values) {
  std::string s(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(s.data(), values.data(), s.size());
  return s;
}

/// gtest predicate: `text` contains `part` (gmock's HasSubstr without needing libgmock).
inline ::testing::AssertionResult contains(const char* text_expr, const char* part_expr, const std::string& text,
                                           const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text_expr << " does not contain " << part_expr << "\n  text: " << text
                                       << "\n  part: " << part;
}
/// gtest predicate: `text` starts with `prefix`.
inline ::testing::AssertionResult starts_with(const char* text_expr, const char* prefix_expr, const std::string& text,
                                              const std::string& prefix) {
  if (text.compare(0, prefix.size(), prefix) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text_expr << " does not start with " << prefix_expr << "\n  text: " << text
                                       << "\n  prefix: " << prefix;
}

}  // namespace oft_io_test

#define EXPECT_CONTAINS(text, part) EXPECT_PRED_FORMAT2(::oft_io_test::contains, text, part)
#define EXPECT_STARTS_WITH(text, prefix) EXPECT_PRED_FORMAT2(::oft_io_test::starts_with, text, prefix)

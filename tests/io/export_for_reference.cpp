// Writes files with oft for check_with_reference.py, which reads them with the reference
// implementation (the `safetensors` Python package). Not a ctest test: it needs Python.
//
//   export_for_reference <dir>
//     <dir>/oft_all_dtypes.safetensors  the values of make_fixtures.all_dtypes_tensors()
//     <dir>/oft_random.safetensors      every dtype, random bytes, empty and scalar tensors,
//                                       several metadata keys; <dir>/oft_random.json lists each
//                                       tensor's dtype, shape and bytes (hex)
//     <dir>/forged/<name>.safetensors   forged_files.hpp; <dir>/forged.json: name ->
//                                       reference_refuses, and oft's message

#include <oft/io/safetensors.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "forged_files.hpp"

namespace {

namespace fs = std::filesystem;
using oft::io::Dtype;
using oft::io::SafetensorsWriter;

void all_dtypes(const fs::path& path) {
  const std::vector<double> f64{0.5, -1.25, 3.0, 1e300, -0.0, std::numeric_limits<double>::denorm_min()};
  const std::vector<float> f32{1.5f, -2.0f, 3.25f, std::numeric_limits<float>::denorm_min(),
                               std::numeric_limits<float>::max(), -7.0f};
  const std::vector<std::uint16_t> f16{0x3c00, 0xc100, 0x7bff, 0x0001, 0xfc00, 0x3555};
  const std::vector<std::uint16_t> bf16{0x3f80, 0xc020, 0x7f62, 0x3eab};
  const std::vector<std::int64_t> i64{std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::uint64_t> u64{std::numeric_limits<std::uint64_t>::max(), 7};
  const std::vector<std::int32_t> i32{std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max(), 0, -5};
  const std::vector<std::uint32_t> u32{4294967295u, 1};
  const std::vector<std::int16_t> i16{-32768, 32767, -3};
  const std::vector<std::uint16_t> u16{65535, 2};
  const std::vector<std::int8_t> i8{-128, 127, -1};
  const std::vector<std::uint8_t> u8{0, 255, 17, 42};
  const std::vector<std::uint8_t> flags{1, 0, 1};
  const std::vector<double> scalar{3.25};
  SafetensorsWriter writer;
  writer.add("f64", {2, 3}, f64).add("f32", {3, 2}, f32);
  writer.add("f16", Dtype::F16, {6}, f16.data(), 12).add("bf16", Dtype::BF16, {4}, bf16.data(), 8);
  writer.add("i64", {2}, i64).add("u64", {2}, u64).add("i32", {2, 2}, i32).add("u32", {2}, u32);
  writer.add("i16", {3}, i16).add("u16", {2}, u16).add("i8", {3}, i8).add("u8", {4}, u8);
  writer.add("bool", Dtype::BOOL, {3}, flags.data(), 3);
  writer.add("empty", Dtype::F32, {0, 3}, nullptr, 0);
  writer.add("scalar", {}, scalar);
  writer.add_metadata("format", "pt");
  writer.write(path);
}

void random_file(const fs::path& path, const fs::path& manifest) {
  std::mt19937 gen(7);
  const std::vector<std::vector<std::uint64_t>> shapes{{2, 4}, {}, {0, 5}, {3, 2, 4}};
  // The writer keeps pointers to the bytes: no reallocation may move them before write().
  std::vector<std::string> payloads;
  payloads.reserve(shapes.size() * oft::io::detail::kDtypeCount);
  SafetensorsWriter writer;
  nlohmann::json listing = nlohmann::json::object();
  for (const auto& entry : oft::io::detail::kDtypes) {
    for (std::size_t s = 0; s < shapes.size(); ++s) {
      std::uint64_t n = 1;
      for (auto d : shapes[s]) n *= d;
      if (n * entry.bits % 8 != 0) continue;  // a scalar F4/F6 is not whole bytes
      std::string bytes(n * entry.bits / 8, '\0');
      for (auto& c : bytes) c = static_cast<char>(gen() & 0xff);
      if (entry.dtype == Dtype::BOOL)
        for (auto& c : bytes) c = static_cast<char>(c & 1);
      payloads.push_back(bytes);
      const std::string name = "t." + std::string(entry.name) + "." + std::to_string(s);
      writer.add(name, entry.dtype, shapes[s], payloads.back().data(), payloads.back().size());
      static const char* hex = "0123456789abcdef";
      std::string text;
      for (const char c : bytes) {
        text += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
        text += hex[static_cast<unsigned char>(c) & 0xf];
      }
      listing[name] = {{"dtype", entry.name}, {"shape", shapes[s]}, {"hex", text}};
    }
  }
  writer.add_metadata("format", "pt").add_metadata("note", "\xc3\xa9t\xc3\xa9 \"quoted\"\n").add_metadata("a", "1");
  writer.write(path);
  std::ofstream(manifest) << listing.dump(1) << "\n";
}

void forged(const fs::path& dir, const fs::path& manifest) {
  fs::create_directories(dir);
  nlohmann::json listing = nlohmann::json::object();
  for (const auto& file : oft_io_test::forged_files()) {
    const fs::path path = dir / (file.name + ".safetensors");
    oft_io_test::write_bytes(path, file.bytes);
    std::string message;
    try {
      (void)oft::io::SafetensorsFile::open(path);
    } catch (const std::exception& error) {
      message = error.what();
    }
    listing[file.name] = {{"reference_refuses", file.reference_refuses}, {"oft_message", message}};
  }
  std::ofstream(manifest) << listing.dump(1) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output directory>\n", argv[0]);
    return 2;
  }
  try {
    const fs::path out = argv[1];
    fs::create_directories(out);
    all_dtypes(out / "oft_all_dtypes.safetensors");
    random_file(out / "oft_random.safetensors", out / "oft_random.json");
    forged(out / "forged", out / "forged.json");
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}

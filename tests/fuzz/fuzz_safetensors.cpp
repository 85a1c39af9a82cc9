// libFuzzer target: the safetensors header parser and reader on arbitrary bytes. Every input is
// either refused with oft::io::format_error (or std::invalid_argument for a tensor accessor) or
// accepted; for an accepted file every tensor is read whole (to_floats / copy), so that ASan
// catches any read outside the file. Built by scripts/fuzz.sh with clang's -fsanitize=fuzzer.
#include <oft/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The parser alone, on memory (no file system in the loop).
  try {
    const oft::io::Header header = oft::io::parse_header("fuzz", reinterpret_cast<const std::byte*>(data), size);
    (void)header;
  } catch (const oft::io::format_error&) {
  }
  // The reader over a real file, as users call it.
  const oft_fuzz::ScratchFile file(data, size);
  try {
    const auto f = oft::io::SafetensorsFile::open(file.path());
    oft_fuzz::touch_every_tensor(f);
  } catch (const oft::io::format_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}

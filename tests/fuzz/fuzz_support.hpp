#pragma once
// Scratch files for the fuzz targets: the readers take paths (they mmap), so each input is
// written to a file under $TMPDIR (or /dev/shm when it exists: no disk in the loop).
#include <oft/io/safetensors.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace oft_fuzz {

namespace fs = std::filesystem;

inline fs::path scratch_root() {
  static const fs::path root = [] {
    const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path dir = base / ("oft_fuzz_" + std::to_string(static_cast<long>(::getpid())));
    fs::create_directories(dir);
    return dir;
  }();
  return root;
}

inline void write_file(const fs::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

class ScratchFile {
 public:
  ScratchFile(const std::uint8_t* data, std::size_t size) : path_(scratch_root() / "input.safetensors") {
    write_file(path_, data, size);
  }
  ~ScratchFile() { fs::remove(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

class ScratchDir {
 public:
  ScratchDir() : path_(scratch_root() / "adapter") { fs::create_directories(path_); }
  ~ScratchDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// Reads every byte of every tensor (ASan reports a read outside the mapping).
inline void touch_every_tensor(const oft::io::SafetensorsFile& f) {
  volatile unsigned sink = 0;
  for (const auto& info : f.tensors()) {
    const auto v = f.view(info);
    for (std::size_t i = 0; i < v.bytes; ++i) sink = sink + static_cast<unsigned>(v.data[i]);
    if (v.dtype == oft::io::Dtype::F32 || v.dtype == oft::io::Dtype::F16 || v.dtype == oft::io::Dtype::BF16)
      (void)v.to_floats();
  }
  (void)f.metadata();
}

}  // namespace oft_fuzz

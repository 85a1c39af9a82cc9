#pragma once
/// \file io/mapped_file.hpp
/// A whole file mapped read-only into memory (POSIX mmap), unmapped when the owner goes.
///
/// The mapping is private and read-only: pages come from the page cache on first touch, nothing
/// is copied, and writing through a pointer into it is a crash, not a change to the file. As
/// with every mmap reader (the reference's included), a file truncated by another process while
/// mapped makes later reads of the lost pages raise SIGBUS; oft does not guard against that.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <utility>

#include "errors.hpp"

namespace oft::io {

class MappedFile {
 public:
  /// Maps `path`. Throws std::system_error naming the path (missing, unreadable, a directory).
  static MappedFile open(const std::filesystem::path& path) {
    MappedFile mapped;
    mapped.path_ = path;
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) detail::fail_errno("cannot open", path);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int code = errno;
      ::close(fd);
      errno = code;
      detail::fail_errno("cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
      detail::fail_errno("cannot read", path);
    }
    mapped.size_ = static_cast<std::size_t>(st.st_size);
    if (mapped.size_ > 0) {  // mmap refuses a length of 0; an empty file maps to nothing
      void* base = ::mmap(nullptr, mapped.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (base == MAP_FAILED) {
        const int code = errno;
        ::close(fd);
        errno = code;
        detail::fail_errno("cannot map", path);
      }
      mapped.data_ = static_cast<const std::byte*>(base);
    }
    ::close(fd);  // the mapping keeps the file open
    return mapped;
  }

  MappedFile() noexcept = default;
  MappedFile(MappedFile&& other) noexcept
      : path_(std::move(other.path_)), data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      unmap();
      path_ = std::move(other.path_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { unmap(); }

  /// The first byte (page-aligned), or nullptr for an empty file. Stays put when moved.
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace oft::io

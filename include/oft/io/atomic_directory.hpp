#pragma once
/// \file io/atomic_directory.hpp
/// A directory written whole or not at all: it is built in a hidden sibling
/// (staging_directory), renamed into place only when complete (commit_directory), and removed
/// when anything fails before that (RemoveOnFailure). A reader of the output never sees a partial
/// directory, and a failure leaves none behind.

#include <unistd.h>

#include <filesystem>
#include <system_error>
#include <utility>

#include "errors.hpp"

namespace oft::io {

/// The hidden sibling `.<name>.oft-partial-<pid>` where `out` is built before commit_directory
/// renames it into place (the process id keeps two writers of one output apart).
inline std::filesystem::path staging_directory(const std::filesystem::path& out) {
  return out.parent_path() / oft::detail::message(".", out.filename().string(), ".oft-partial-",
                                                  static_cast<long>(::getpid()));
}

/// Renames the complete `staging` to `out`, replacing an existing `out` only now: the old one is
/// first renamed aside, then removed once the new one is in place.
inline void commit_directory(const std::filesystem::path& staging,
                             const std::filesystem::path& out) {
  namespace fs = std::filesystem;
  if (!fs::exists(out)) {
    fs::rename(staging, out);
    return;
  }
  const fs::path old =
      out.parent_path() / oft::detail::message(".", out.filename().string(), ".oft-old-",
                                               static_cast<long>(::getpid()));
  fs::rename(out, old);
  fs::rename(staging, out);
  fs::remove_all(old);
}

/// Removes a directory tree on destruction unless released (the partial output on failure).
class RemoveOnFailure {
 public:
  explicit RemoveOnFailure(std::filesystem::path path) : path_(std::move(path)) {}
  RemoveOnFailure(const RemoveOnFailure&) = delete;
  RemoveOnFailure& operator=(const RemoveOnFailure&) = delete;
  ~RemoveOnFailure() {
    if (!path_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(path_, ignored);
    }
  }
  void release() { path_.clear(); }

 private:
  std::filesystem::path path_;
};

}  // namespace oft::io

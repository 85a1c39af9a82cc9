#pragma once
/// \file cuda/workspace.hpp
/// Caller-owned device workspaces: their alignment, and the one check that every CUDA entry point
/// taking a workspace makes before it enqueues anything.

#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../errors.hpp"
#include "device_view.hpp"

namespace oft::detail::cuda {

/// Alignment of a workspace and of every part carved out of it (cudaMalloc gives 256).
inline constexpr std::size_t kAlignment = 256;

inline std::size_t align_up(std::size_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

/// Throws std::invalid_argument naming `where` unless `workspace` holds at least `needed` bytes
/// (the caller's workspace_bytes(tokens)), is device memory and is kAlignment-byte aligned. A
/// null workspace passes only when nothing is needed.
inline void require_workspace(const void* workspace, std::size_t size, std::size_t needed,
                              Index tokens, const char* where) {
  detail::require(size >= needed, where, ": workspace of ", size, " bytes, needs workspace_bytes(",
                  tokens, ") = ", needed);
  detail::require(workspace != nullptr || needed == 0, where, ": null workspace");
  require_device_pointer(workspace, "workspace", where);
  detail::require(reinterpret_cast<std::uintptr_t>(workspace) % kAlignment == 0, where,
                  ": workspace is not ", kAlignment, "-byte aligned");
}

}  // namespace oft::detail::cuda

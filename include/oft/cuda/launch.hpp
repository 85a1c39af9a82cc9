#pragma once
/// \file cuda/launch.hpp
/// What every kernel launch of the CUDA backend needs to know about the device, in one place:
///
/// - DeviceInfo: the device an operator was built on (SM count, compute capability, opt-in
///   shared memory per thread block), queried once at construction.
/// - Dynamic shared memory. One declaration of the dynamic shared-memory array for every kernel
///   (dynamic_shared_memory(), 128-byte aligned, so the 32-byte alignment WMMA needs holds at
///   every 32-byte multiple offset). A kernel may use more than 48 KiB only after
///   cudaFuncSetAttribute(MaxDynamicSharedMemorySize), a process-wide per-kernel setting. Setting
///   it per launch to the launch's own size is a race: another host thread can lower it between
///   the set and the launch. Here it is set once per (kernel, device), to the most the device
///   allows that kernel (opt-in maximum minus the kernel's static shared memory), under a mutex,
///   and never lowered; each launch only checks that its bytes fit that limit
///   (require_dynamic_shared) and throws std::invalid_argument naming b and the bytes otherwise.
/// - The token grid: kernels loop over token tiles with a stride of gridDim.y, which CUDA caps at
///   65,535. token_grid_limit() is that cap; ScopedTokenGridLimit lowers it (tests only), so that
///   small inputs make every thread block loop over several tiles.

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

#include "../config.hpp"
#include "../errors.hpp"
#include "error.hpp"

namespace oft::detail::cuda {

/// Shared memory a kernel may use without opting in.
inline constexpr std::size_t kDefaultSharedBytes = 48 * 1024;
/// Alignment of the dynamic shared-memory array (dynamic_shared_memory()).
inline constexpr std::size_t kSharedAlignment = 128;
/// Alignment WMMA load_matrix_sync / store_matrix_sync need for their pointers (256 bits).
inline constexpr std::size_t kWmmaAlignment = 32;
static_assert(kSharedAlignment % kWmmaAlignment == 0,
              "the shared-memory base must keep WMMA's 32-byte alignment");

/// The dynamic shared memory of the calling kernel, kSharedAlignment-aligned. Declared once for
/// the whole backend: every `extern __shared__` declaration of one symbol in a translation unit
/// must agree on its alignment, and one declaration cannot disagree with itself.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(kSharedAlignment) unsigned char oft_dynamic_shared[];
  return oft_dynamic_shared;
}

struct DeviceInfo {
  int device = 0;
  int multiprocessors = 1;
  int compute_capability = 0;                          ///< major * 10 + minor, e.g. 90
  std::size_t max_shared_bytes = kDefaultSharedBytes;  ///< per thread block, with opt-in
};

inline DeviceInfo query_device(const char* where) {
  DeviceInfo info;
  check(cudaGetDevice(&info.device), "cudaGetDevice", where);
  int sms = 0, shared = 0, major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, info.device),
        "cudaDeviceGetAttribute(MultiProcessorCount)", where);
  check(cudaDeviceGetAttribute(&shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, info.device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)", where);
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, info.device),
        "cudaDeviceGetAttribute(ComputeCapabilityMajor)", where);
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, info.device),
        "cudaDeviceGetAttribute(ComputeCapabilityMinor)", where);
  info.multiprocessors = sms > 0 ? sms : 1;
  info.compute_capability = 10 * major + minor;
  info.max_shared_bytes = static_cast<std::size_t>(shared);
  return info;
}

/// The process-wide record of the dynamic shared-memory limit set for each (kernel, device).
class DynamicSharedLimits {
 public:
  static DynamicSharedLimits& instance() {
    static DynamicSharedLimits limits;  // one per program: a static of an inline function
    return limits;
  }

  /// Dynamic shared bytes `kernel` may use on the current device. The first call for a
  /// (kernel, device) raises the kernel's MaxDynamicSharedMemorySize to that limit (if it is
  /// not already at least that) and records it; later calls only look it up. Thread-safe.
  std::size_t limit(const void* kernel, const char* where) {
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice", where);
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto known = limits_.find({kernel, device});
    if (known != limits_.end()) return known->second;
    const std::size_t limit = raise_to_device_limit(kernel, device, where);
    limits_.emplace(std::make_pair(kernel, device), limit);
    return limit;
  }

 private:
  DynamicSharedLimits() = default;

  static std::size_t raise_to_device_limit(const void* kernel, int device, const char* where) {
    cudaFuncAttributes attributes{};
    check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes", where);
    int optin = 0;
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
          "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)", where);
    // Static and dynamic shared memory together may not exceed the opt-in maximum.
    const int limit = optin - static_cast<int>(attributes.sharedSizeBytes);
    if (limit > attributes.maxDynamicSharedSizeBytes) {  // only ever raise it
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit),
            "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", where);
    }
    return static_cast<std::size_t>(limit > 0 ? limit : 0);
  }

  std::mutex mutex_;
  std::map<std::pair<const void*, int>, std::size_t> limits_;
};

/// Dynamic shared bytes `kernel` may use on the current device (see DynamicSharedLimits).
template <class Kernel>
std::size_t dynamic_shared_limit(Kernel kernel, const char* where) {
  return DynamicSharedLimits::instance().limit(reinterpret_cast<const void*>(kernel), where);
}

/// Before a launch of `kernel` with `bytes` of dynamic shared memory for blocks of size b:
/// makes sure the kernel may use them, or throws std::invalid_argument naming b, the bytes and
/// the limit (nothing is enqueued then).
template <class Kernel>
void require_dynamic_shared(Kernel kernel, std::size_t bytes, Index b, const char* kernel_name,
                            const char* where) {
  const std::size_t limit = dynamic_shared_limit(kernel, where);
  detail::require(bytes <= limit, where, ": block size b=", b, " needs ", bytes,
                  " bytes of shared memory per thread block in ", kernel_name,
                  "; this GPU allows ", limit);
}

// ---------------------------------------------------------------------------------------------
// The token grid.
// ---------------------------------------------------------------------------------------------

/// CUDA's largest gridDim.y.
inline constexpr unsigned kMaxGridY = 65535;

inline std::atomic<unsigned>& token_grid_limit_storage() {
  static std::atomic<unsigned> limit{kMaxGridY};
  return limit;
}

/// Largest gridDim.y of the token-tile kernels (kMaxGridY unless a test lowered it).
inline unsigned token_grid_limit() {
  return token_grid_limit_storage().load(std::memory_order_relaxed);
}

/// For tests: lowers token_grid_limit() for its lifetime, so that every thread block of the
/// apply and backward kernels loops over several token tiles even for small N. Process-wide:
/// use it only where no other thread launches oft kernels, and call workspace_bytes after
/// creating it (the number of gradient chunks depends on the limit).
class ScopedTokenGridLimit {
 public:
  explicit ScopedTokenGridLimit(unsigned limit) {
    detail::require(limit >= 1 && limit <= kMaxGridY, "ScopedTokenGridLimit: limit ", limit,
                    " outside [1, ", kMaxGridY, "]");
    previous_ = token_grid_limit_storage().exchange(limit);
  }
  ~ScopedTokenGridLimit() { token_grid_limit_storage().store(previous_); }
  ScopedTokenGridLimit(const ScopedTokenGridLimit&) = delete;
  ScopedTokenGridLimit& operator=(const ScopedTokenGridLimit&) = delete;

 private:
  unsigned previous_ = kMaxGridY;
};

}  // namespace oft::detail::cuda

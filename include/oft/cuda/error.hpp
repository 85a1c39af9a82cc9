#pragma once
/// \file cuda/error.hpp
/// CUDA and cuBLAS failures as host exceptions that name the call that failed.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../errors.hpp"

namespace oft {

/// A CUDA runtime or cuBLAS call failed. what() names the oft call, the CUDA call and the error
/// string, e.g. "oft: cudaMemcpyAsync in BlockOrthogonal<cuda>::set_generators failed: invalid
/// argument (cudaErrorInvalidValue)". Kernel launches are checked with cudaGetLastError
/// (launch configuration errors); errors of the kernels themselves surface, as always in CUDA, at
/// the caller's next synchronization.
class cuda_error : public std::runtime_error {
 public:
  cuda_error(const std::string& what, int code) : std::runtime_error(what), code_(code) {}
  /// The cudaError_t or cublasStatus_t value.
  int code() const noexcept { return code_; }

 private:
  int code_;
};

namespace detail::cuda {

inline void check(cudaError_t status, const char* call, const char* where) {
  if (status != cudaSuccess) {
    // Reset the runtime's last error (non-sticky errors such as out-of-memory), so that the next
    // launch check does not report this failure again for an unrelated kernel.
    (void)cudaGetLastError();
    throw cuda_error(detail::message("oft: ", call, " in ", where, " failed: ",
                                     cudaGetErrorString(status), " (", cudaGetErrorName(status),
                                     ")"),
                     static_cast<int>(status));
  }
}

/// Checks the launch that was just made (bad configuration, too much shared memory, no device).
inline void check_launch(const char* kernel, const char* where) {
  check(cudaGetLastError(), kernel, where);
}

inline const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

inline void check(cublasStatus_t status, const char* call, const char* where) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw cuda_error(detail::message("oft: ", call, " in ", where, " failed: ",
                                     cublas_status_name(status)),
                     static_cast<int>(status));
  }
}

}  // namespace detail::cuda

/// Why no CUDA device can be used by this process ("" when one can): the runtime's error name
/// and string (e.g. no driver, or a driver older than the runtime), or "no CUDA device found".
inline std::string cuda_device_unavailable_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the "no device / no driver" error
    return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
  }
  return count > 0 ? std::string() : std::string("no CUDA device found");
}

/// True when a CUDA device can be used by this process (a driver, at least one GPU). Tests and
/// benchmarks use it to skip cleanly on machines without a GPU.
inline bool cuda_device_available() { return cuda_device_unavailable_reason().empty(); }

}  // namespace oft

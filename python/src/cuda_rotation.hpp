#pragma once
// The CUDA backend for oft._core, behind an interface free of CUDA and nanobind types, so that
// core.cpp (compiled by the host compiler) binds it and cuda_rotation.cu (nvcc) implements it.
// Compiled only with OFT_PYTHON_CUDA=ON.
#include <cstddef>
#include <cstdint>
#include <memory>

#include <oft/index.hpp>

namespace oft_python {

/// Activation types of the CUDA backend (theta, R and dtheta are float, or double for Float64).
enum class CudaDtype { Float32, Float64, Float16, Bfloat16 };

/// BlockOrthogonal<T, CayleyNeumann or ExactCayley, cuda> for a dtype and policy chosen at run
/// time. Pointers are device pointers; `stream` is a cudaStream_t as an integer (torch's
/// `torch.cuda.current_stream().cuda_stream`). Every call only enqueues work on that stream.
class CudaRotation {
 public:
  /// exact: ExactCayley; else CayleyNeumann{k}. Constructed on the current CUDA device.
  CudaRotation(oft::Index features, oft::Index block_size, bool shared, bool exact, int k,
               CudaDtype dtype);
  ~CudaRotation();
  CudaRotation(const CudaRotation&) = delete;
  CudaRotation& operator=(const CudaRotation&) = delete;

  oft::Index generators() const;
  oft::Index packed() const;
  bool tensor_cores() const;

  void set_generators(const void* theta, oft::Index ld, std::uintptr_t stream);
  void apply(const void* x, oft::Index ldx, void* y, oft::Index ldy, oft::Index rows,
             bool transposed, std::uintptr_t stream) const;
  std::size_t workspace_bytes(oft::Index rows) const;
  /// dx or dtheta may be nullptr (skipped).
  void backward(const void* x, oft::Index ldx, const void* dy, oft::Index lddy, void* dx,
                oft::Index lddx, void* dtheta, oft::Index ldtheta, void* workspace,
                std::size_t workspace_size, oft::Index rows, std::uintptr_t stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace oft_python

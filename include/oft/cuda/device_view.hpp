#pragma once
/// \file cuda/device_view.hpp
/// Views over row-major matrices in GPU memory, and a small owning device buffer.
///
/// `DeviceMatrixView<T>` is the CUDA backend's boundary type: pointer, rows, cols and leading
/// dimension (the row stride, in elements). It is a distinct type from the CPU's MatrixView so
/// that a host pointer cannot be passed to a kernel by accident; the operators also ask the CUDA
/// runtime whether each pointer is device-accessible and throw std::invalid_argument otherwise.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../detail/overlap.hpp"
#include "../errors.hpp"
#include "error.hpp"

namespace oft {

template <class Element>
class DeviceMatrixView {
 public:
  using Scalar = std::remove_const_t<Element>;

  DeviceMatrixView() = default;

  /// Leading-dimension argument meaning "rows are packed": ld is the width.
  static constexpr Index kPackedRows = -1;

  /// `rows x cols` elements, element (i, j) at data[i * ld + j]; ld = kPackedRows (the default)
  /// means cols. Throws std::invalid_argument for negative sizes, ld < cols, a negative ld other
  /// than kPackedRows, a null pointer with elements, or an extent that does not fit an Index.
  DeviceMatrixView(Element* data, Index rows, Index cols, Index ld = kPackedRows)
      : data_(data), rows_(rows), cols_(cols), ld_(ld == kPackedRows ? cols : ld) {
    detail::require(rows >= 0 && cols >= 0, "device matrix view with negative shape ", rows, "x",
                    cols);
    detail::require(ld >= 0 || ld == kPackedRows, "device matrix view leading dimension ", ld,
                    " is negative (only ", kPackedRows, ", the default, is accepted: rows packed)");
    detail::require(ld_ >= cols, "device matrix view leading dimension ", ld_,
                    " is smaller than its width ", cols);
    detail::require(data != nullptr || rows == 0 || cols == 0, "device matrix view of shape ",
                    rows, "x", cols, " over a null pointer");
    constexpr Index kMaxElements =
        std::numeric_limits<Index>::max() / static_cast<Index>(sizeof(Scalar));
    detail::require(rows <= 1 || ld_ <= (kMaxElements - cols) / (rows - 1),
                    "device matrix view of shape ", rows, "x", cols, " with leading dimension ",
                    ld_, " spans more elements than an Index holds");
  }

  /// A mutable view converts to a const view.
  template <class Other, class = std::enable_if_t<std::is_same_v<const Other, Element> &&
                                                  !std::is_same_v<Other, Element>>>
  DeviceMatrixView(const DeviceMatrixView<Other>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), ld_(other.ld()) {}

  Element* data() const { return data_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index ld() const { return ld_; }
  bool empty() const { return rows_ == 0 || cols_ == 0; }

  /// Sub-view of rows [first, first+count) and columns [col, col+width) (no bounds check).
  DeviceMatrixView block(Index first, Index col, Index count, Index width) const {
    DeviceMatrixView out;
    out.data_ = data_ + first * ld_ + col;
    out.rows_ = count;
    out.cols_ = width;
    out.ld_ = ld_;
    return out;
  }

  /// Byte range touched, for overlap tests.
  const char* begin_byte() const { return reinterpret_cast<const char*>(data_); }
  const char* end_byte() const {
    return empty() ? begin_byte()
                   : reinterpret_cast<const char*>(data_ + (rows_ - 1) * ld_ + cols_);
  }

 private:
  Element* data_ = nullptr;
  Index rows_ = 0;
  Index cols_ = 0;
  Index ld_ = 0;
};

/// Owning, uninitialized device memory for `count` elements of T (cudaMalloc / cudaFree).
/// Used for the operators' own state (generators, rotation blocks), never in a hot path.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count > 0) {
      void* p = nullptr;
      detail::cuda::check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc", "DeviceBuffer");
      data_ = static_cast<T*>(p);
    }
  }
  ~DeviceBuffer() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (data_ != nullptr) (void)cudaFree(data_);
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

namespace detail::cuda {

/// A pinned (page-locked) host buffer that asynchronous host-to-device copies read from, with
/// an event that marks the end of the last such copy. Pinned memory makes cudaMemcpyAsync truly
/// asynchronous (a pageable source may make the runtime synchronize, and cannot be captured in
/// a CUDA graph); the event keeps the next fill from overwriting bytes that a copy still in
/// flight has yet to read. Used by BlockOrthogonal<cuda>::set_active_blocks.
class HostStaging {
 public:
  HostStaging() = default;
  /// cudaMallocHost of `bytes` (at least 1) and a timing-free event (construction only).
  HostStaging(std::size_t bytes, const char* where) : bytes_(bytes > 0 ? bytes : 1) {
    void* p = nullptr;
    check(cudaMallocHost(&p, bytes_), "cudaMallocHost", where);
    data_ = static_cast<unsigned char*>(p);
    const cudaError_t status = cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming);
    if (status != cudaSuccess) {
      (void)cudaFreeHost(data_);
      data_ = nullptr;
      check(status, "cudaEventCreateWithFlags", where);
    }
  }
  /// Waits for the last copy out of the buffer (if any is pending) before freeing it.
  ~HostStaging() { release(); }
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  HostStaging(HostStaging&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        bytes_(std::exchange(other.bytes_, 0)),
        copied_(std::exchange(other.copied_, nullptr)) {}
  HostStaging& operator=(HostStaging&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      copied_ = std::exchange(other.copied_, nullptr);
    }
    return *this;
  }

  /// The buffer, once the copy enqueued by the previous copy_to_device has read it: blocks the
  /// host only while that copy is still pending on its stream (an event wait), else returns at
  /// once.
  unsigned char* acquire(const char* where) {
    check(cudaEventSynchronize(copied_), "cudaEventSynchronize", where);
    return data_;
  }

  /// Enqueues on `stream` the copy of the first `bytes` of the buffer (filled after acquire) to
  /// device memory `dst`, and marks its end with the event.
  void copy_to_device(void* dst, std::size_t bytes, cudaStream_t stream, const char* where) {
    check(cudaMemcpyAsync(dst, data_, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync",
          where);
    check(cudaEventRecord(copied_, stream), "cudaEventRecord", where);
  }

 private:
  void release() noexcept {
    if (copied_ != nullptr) {
      (void)cudaEventSynchronize(copied_);
      (void)cudaEventDestroy(copied_);
    }
    if (data_ != nullptr) (void)cudaFreeHost(data_);
    copied_ = nullptr;
    data_ = nullptr;
  }

  unsigned char* data_ = nullptr;
  std::size_t bytes_ = 0;
  cudaEvent_t copied_ = nullptr;
};

/// Throws std::invalid_argument unless `p` is memory a kernel may read (device or managed memory,
/// or host memory mapped for the device). One cheap runtime query, no synchronization.
inline void require_device_pointer(const void* p, const char* name, const char* where) {
  if (p == nullptr) return;  // empty views; shape checks reject null with elements
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, p);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    detail::require(false, where, ": ", name, " is not a pointer the CUDA runtime knows (",
                    cudaGetErrorString(status), ")");
  }
  detail::require(attributes.type == cudaMemoryTypeDevice ||
                      attributes.type == cudaMemoryTypeManaged ||
                      (attributes.type == cudaMemoryTypeHost && attributes.devicePointer != nullptr),
                  where, ": ", name,
                  " points to host memory; the CUDA backend needs device memory (cudaMalloc)");
}

/// True when two views share an element: exact for views with one leading dimension (disjoint
/// column slices of one buffer are disjoint), conservative otherwise (detail/overlap.hpp, the
/// same test as the CPU views').
template <class A, class B>
bool overlaps(const DeviceMatrixView<A>& a, const DeviceMatrixView<B>& b) {
  const auto region = [](const auto& v) {
    using E = std::remove_reference_t<decltype(*v.data())>;
    const Index size = static_cast<Index>(sizeof(E));
    return detail::StridedRegion{reinterpret_cast<std::uintptr_t>(v.data()), v.rows(),
                                 v.cols() * size, v.ld() * size};
  };
  return detail::regions_overlap(region(a), region(b));
}

template <class A, class B>
bool same_memory(const DeviceMatrixView<A>& a, const DeviceMatrixView<B>& b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) &&
         a.rows() == b.rows() && a.cols() == b.cols() && a.ld() == b.ld();
}

template <class A>
void require_shape(const DeviceMatrixView<A>& m, Index rows, Index cols, const char* name,
                   const char* where) {
  detail::require(m.rows() == rows && m.cols() == cols, where, ": ", name, " has shape ",
                  m.rows(), "x", m.cols(), ", expected ", rows, "x", cols);
}

template <class A, class B>
void require_in_place_or_disjoint(const DeviceMatrixView<A>& out, const DeviceMatrixView<B>& in,
                                  const char* out_name, const char* in_name, const char* where) {
  detail::require(same_memory(out, in) || !overlaps(out, in), where, ": ", out_name,
                  " partially overlaps ", in_name,
                  "; pass the same view for in-place use or disjoint memory");
}

/// dst = src (same shape, device memory, any leading dimensions), enqueued on `stream`.
template <class T>
void copy_rows(DeviceMatrixView<const T> src, DeviceMatrixView<T> dst, cudaStream_t stream,
               const char* where) {
  if (src.empty()) return;
  check(cudaMemcpy2DAsync(dst.data(), static_cast<std::size_t>(dst.ld()) * sizeof(T), src.data(),
                          static_cast<std::size_t>(src.ld()) * sizeof(T),
                          static_cast<std::size_t>(src.cols()) * sizeof(T),
                          static_cast<std::size_t>(src.rows()), cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpy2DAsync", where);
}

template <class A, class B>
void require_disjoint(const DeviceMatrixView<A>& out, const DeviceMatrixView<B>& in,
                      const char* out_name, const char* in_name, const char* where) {
  detail::require(!overlaps(out, in), where, ": ", out_name, " overlaps ", in_name,
                  ", which this operation does not support");
}

}  // namespace detail::cuda
}  // namespace oft

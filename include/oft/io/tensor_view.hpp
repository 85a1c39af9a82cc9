#pragma once
/// \file io/tensor_view.hpp
/// A read-only view of one tensor's bytes in a safetensors file, and typed access to them.
///
/// Zero-copy: `data` points into the file's mapping, and as<T>() reinterprets it in place. The
/// view does not own the mapping: it stays valid while the SafetensorsFile (or
/// ShardedSafetensors) it came from lives, moved or not.
///
/// Alignment: safetensors does not promise that a tensor's bytes are aligned for its type; the
/// data section starts at 8 + N and tensors follow each other. Files written by the reference
/// writer (and by oft's) are aligned: the header is padded to a multiple of 8 and tensors are
/// laid out by decreasing dtype width. as<T>() checks and refuses a misaligned tensor (reading
/// through a misaligned pointer is undefined behaviour); copy_as<T>() and to_floats() copy with
/// memcpy and work at any alignment.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "errors.hpp"
#include "detail/half_bulk.hpp"
#include "half.hpp"

namespace oft::io {

/// A read-only contiguous range of `T` (what std::span<const T> is in C++20).
template <class T>
class ConstSpan {
 public:
  ConstSpan() noexcept = default;
  ConstSpan(const T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  const T* begin() const noexcept { return data_; }
  const T* end() const noexcept { return data_ + size_; }

 private:
  const T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// One tensor of a file: its dtype, shape and bytes (C order, little-endian).
struct TensorView {
  std::string file;                  ///< the file it lives in (for messages)
  std::string name;
  Dtype dtype{};
  std::vector<std::uint64_t> shape;  ///< empty for a scalar
  const std::byte* data = nullptr;   ///< into the mapping; may be misaligned (see above)
  std::size_t bytes = 0;             ///< numel x width (exactly; validated when opened)

  std::uint64_t numel() const noexcept {
    std::uint64_t n = 1;
    for (const std::uint64_t d : shape) n *= d;
    return n;
  }

  /// The elements in place, as `T` (dtype_of<T> must be the tensor's dtype: float for F32,
  /// oft::float16 for F16, ...). Throws std::invalid_argument on another dtype or when the bytes
  /// are not aligned for `T` (use copy_as<T>() then).
  template <class T>
  ConstSpan<T> as() const {
    check_dtype<T>("as");
    const std::size_t count = bytes / sizeof(T);
    if (count == 0) return {};
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(T) != 0)
      throw std::invalid_argument(oft::detail::message(
          "oft: ", file, ": tensor ", detail::quote_name(name), " (", dtype_name(dtype), ") starts at an address that is not ",
          alignof(T), "-byte aligned; safetensors does not promise alignment: use copy_as<T>()"));
    return {reinterpret_cast<const T*>(data), count};
  }

  /// A copy of the elements as `T` (same dtype rule as as<T>()), at any alignment.
  template <class T>
  std::vector<T> copy_as() const {
    check_dtype<T>("copy_as");
    std::vector<T> out(bytes / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), data, out.size() * sizeof(T));
    return out;
  }

  /// The elements widened to float, exactly: F32, F16 or BF16 (any alignment). Other dtypes
  /// throw std::invalid_argument, F64 and the integers because float would round them.
  std::vector<float> to_floats() const {
    if (dtype == Dtype::F32) return copy_as<float>();
    if (dtype != Dtype::F16 && dtype != Dtype::BF16)
      throw std::invalid_argument(oft::detail::message(
          "oft: ", file, ": tensor ", detail::quote_name(name), " is ", dtype_name(dtype),
          "; to_floats() converts F32, F16 and BF16 only (exactly)"));
    std::vector<float> out(bytes / 2);
    if (dtype == Dtype::F16) {
      detail::f16_to_floats(data, out.size(), out.data());
      return out;
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint16_t bits;
      std::memcpy(&bits, data + 2 * i, 2);
      out[i] = bf16_to_float(bits);
    }
    return out;
  }

 private:
  template <class T>
  void check_dtype(const char* accessor) const {
    if (dtype_of<T> != dtype)
      throw std::invalid_argument(oft::detail::message(
          "oft: ", file, ": tensor ", detail::quote_name(name), " is ", dtype_name(dtype), ", but ", accessor, "<",
          DtypeOf<T>::cpp_name, ">() reads ", dtype_name(dtype_of<T>)));
  }
};

}  // namespace oft::io

#pragma once
// The array arguments of oft._core (core.cpp, serving.cpp): DLPack arrays (torch tensors, NumPy
// arrays) taken without a copy and turned into the library's views, or refused with a TypeError
// (dtype) or ValueError (device, shape, strides) that names the argument and its shape.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <sstream>
#include <string>
#include <type_traits>

#include <oft/half_types.hpp>
#include <oft/view.hpp>

namespace oft_python {

namespace nb = nanobind;

using AnyArray = nb::ndarray<>;          // an array oft may write
using ConstArray = nb::ndarray<nb::ro>;  // an array oft only reads (read-only ones too)

template <class Scalar>
const char* dtype_name() {
  if constexpr (std::is_same_v<Scalar, oft::bfloat16>) {
    return "bfloat16";
  } else {
    return sizeof(Scalar) == 4 ? "float32" : "float64";
  }
}

/// DLPack's code for Scalar (nanobind has none for Eigen::bfloat16).
template <class Scalar>
nb::dlpack::dtype dtype_of() {
  if constexpr (std::is_same_v<Scalar, oft::bfloat16>) {
    return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
  } else {
    return nb::dtype<Scalar>();
  }
}

inline std::string dtype_name(const nb::dlpack::dtype& t) {
  const char* kind = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)      ? "float"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int)      ? "int"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::UInt)     ? "uint"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)   ? "bfloat"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bool)     ? "bool"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Complex)  ? "complex"
                                                                                        : "dtype";
  return std::string(kind) + std::to_string(t.bits);
}

template <class Array>
std::string shape_of(const Array& a) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < a.ndim(); ++i) out << (i ? ", " : "") << a.shape(i);
  out << "]";
  return out.str();
}

/// The C++ view of a 2-D array argument, or a Python exception naming it.
template <class Element>
oft::MatrixView<Element> matrix_of(const AnyArray& a, const char* name) {
  using Scalar = std::remove_const_t<Element>;
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " is not on the CPU (this oft._core is the CPU backend)")
                              .c_str());
  }
  if (a.dtype() != dtype_of<Scalar>()) {
    throw nb::type_error((std::string(name) + " " + shape_of(a) + " is " + dtype_name(a.dtype()) +
                          ", expected " + dtype_name<Scalar>() + " like the other arguments")
                             .c_str());
  }
  if (a.ndim() != 2) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) +
                           ", expected a 2-D array (rows x features)")
                              .c_str());
  }
  const auto rows = static_cast<oft::Index>(a.shape(0));
  const auto cols = static_cast<oft::Index>(a.shape(1));
  const auto col_stride = static_cast<oft::Index>(a.stride(1));
  oft::Index row_stride = static_cast<oft::Index>(a.stride(0));
  if (rows <= 1) row_stride = cols;  // the stride of a single row is meaningless (torch sets 1)
  if (rows == 0) return oft::MatrixView<Element>(static_cast<Element*>(a.data()), 0, cols, cols);
  if ((cols > 1 && col_stride != 1) || row_stride < cols) {
    std::ostringstream msg;
    msg << name << " " << shape_of(a) << " has strides [" << a.stride(0) << ", " << a.stride(1)
        << "] (elements): oft needs unit column stride and a row stride >= the width "
        << "(call .contiguous() first)";
    throw nb::value_error(msg.str().c_str());
  }
  return oft::MatrixView<Element>(static_cast<Element*>(a.data()), rows, cols, row_stride);
}

/// str(h) as Python spells it (e.g. "meta" for torch.device("meta")), for messages.
inline std::string python_str(nb::handle h) {
  const nb::object text = nb::steal(PyObject_Str(h.ptr()));
  const char* utf8 = text.is_valid() ? PyUnicode_AsUTF8(text.ptr()) : nullptr;
  if (utf8 == nullptr) {
    PyErr_Clear();
    return "?";
  }
  return utf8;
}

/// An array argument from Python: a NumPy array, torch tensor or anything with DLPack, taken
/// without a copy. Inputs (`writable` false) may be read-only; outputs must be writable. What
/// nanobind cannot take (a read-only output, a tensor whose device has no DLPack export such as
/// torch's meta) becomes an error naming the argument instead of nanobind's generic
/// "incompatible function arguments".
inline AnyArray array_of(nb::handle h, const char* name, bool writable) {
  if (writable) {
    AnyArray a;
    if (nb::try_cast(h, a, false)) return a;
  }
  ConstArray c;
  if (nb::try_cast(h, c, false)) {
    if (writable) {
      throw nb::value_error((std::string(name) + " " + shape_of(c) +
                             " is read-only; oft writes its result there (pass a writable array)")
                                .c_str());
    }
    return AnyArray(c);
  }
  std::string where;
  if (nb::hasattr(h, "device")) where = " on " + python_str(h.attr("device"));
  std::string shape;
  if (nb::hasattr(h, "shape")) {
    shape = " [";
    for (nb::handle n : h.attr("shape")) {
      shape += (shape.size() > 2 ? ", " : "") + python_str(n);
    }
    shape += "]";
  }
  throw nb::value_error((std::string(name) + shape + ": a " +
                         python_str(nb::type_name(h.type())) + where +
                         " that oft cannot read (it takes NumPy arrays and CPU or CUDA tensors, "
                         "through DLPack)")
                            .c_str());
}

}  // namespace oft_python

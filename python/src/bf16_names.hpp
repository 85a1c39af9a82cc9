#pragma once
// The names that Python uses for oft::Bf16Arithmetic ("float", "dot_product"), shared by the
// operators (core.cpp) and the adapter bank (serving.cpp).
#include <nanobind/nanobind.h>

#include <string>

#include <oft/cpu/bf16.hpp>

namespace oft_python {

inline const char* arithmetic_name(oft::Bf16Arithmetic a) {
  return a == oft::Bf16Arithmetic::Float ? "float" : "dot_product";
}

inline oft::Bf16Arithmetic parse_arithmetic(const std::string& name) {
  if (name == "float") return oft::Bf16Arithmetic::Float;
  if (name == "dot_product") return oft::Bf16Arithmetic::DotProduct;
  throw nanobind::value_error(
      ("bf16_arithmetic must be 'float' or 'dot_product', got '" + name + "'").c_str());
}

}  // namespace oft_python

#pragma once
/// \file errors.hpp
/// Error reporting at the public boundary. Checks here run always (not only in debug builds):
/// they cost a few comparisons per call, never per element. Inner loops stay check-free.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace oft::detail {

/// Concatenates its arguments with operator<< into one message.
template <class... Parts>
std::string message(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

/// Throws std::invalid_argument (bad shapes, sizes, aliasing) built from `parts` unless `ok`.
template <class... Parts>
void require(bool ok, Parts&&... parts) {
  if (!ok) throw std::invalid_argument(message("oft: ", std::forward<Parts>(parts)...));
}

/// Throws std::domain_error (values outside the domain of the math: non-finite theta,
/// a divergent Neumann series) built from `parts` unless `ok`.
template <class... Parts>
void require_domain(bool ok, Parts&&... parts) {
  if (!ok) throw std::domain_error(message("oft: ", std::forward<Parts>(parts)...));
}

}  // namespace oft::detail

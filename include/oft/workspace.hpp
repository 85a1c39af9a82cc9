#pragma once
/// \file workspace.hpp
/// Caller-owned scratch memory. Operators ask for the number of scalars they need
/// (`workspace_size()`); a `Workspace` grows to that once and is reused, so steady-state calls
/// allocate nothing. Frameworks can pass their own buffer through the raw-pointer overloads.

#include <vector>

#include "config.hpp"

namespace oft {

template <class Scalar>
class Workspace {
 public:
  /// Pointer to at least `count` scalars; reallocates only when the buffer must grow.
  Scalar* reserve(Index count) {
    if (static_cast<Index>(buffer_.size()) < count) buffer_.resize(static_cast<size_t>(count));
    return buffer_.data();
  }
  Index size() const { return static_cast<Index>(buffer_.size()); }

 private:
  std::vector<Scalar> buffer_;
};

}  // namespace oft

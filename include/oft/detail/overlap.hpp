#pragma once
/// \file detail/overlap.hpp
/// Whether two strided row-major regions share a byte. Eigen-free and host-only, so the CPU's
/// MatrixView and the CUDA backend's DeviceMatrixView answer aliasing questions the same way.

#include <algorithm>
#include <cstdint>

#include "../config.hpp"

namespace oft::detail {

/// `rows` rows of `width` bytes each, `stride` bytes apart, starting at address `begin`.
struct StridedRegion {
  std::uintptr_t begin = 0;
  Index rows = 0;
  Index width = 0;
  Index stride = 0;

  bool empty() const { return rows == 0 || width == 0; }
  /// One past the last byte.
  std::uintptr_t end() const {
    return begin + static_cast<std::uintptr_t>((rows - 1) * stride + width);
  }
};

/// Floor division for a positive divisor (C++ `/` truncates toward zero).
inline Index floor_divide(Index numerator, Index divisor) {
  const Index quotient = numerator / divisor;
  return (numerator % divisor != 0 && numerator < 0) ? quotient - 1 : quotient;
}

/// True when the two regions share at least one byte. Exact when both have the same stride (a
/// one-row region takes the other's stride), such as disjoint column slices of one buffer, whose
/// address ranges interleave without sharing an element; regions with different strides whose
/// address ranges intersect are reported as overlapping (conservative).
inline bool regions_overlap(StridedRegion a, StridedRegion b) {
  if (a.empty() || b.empty()) return false;
  if (!(a.begin < b.end() && b.begin < a.end())) return false;
  if (a.rows == 1) a.stride = b.stride;
  if (b.rows == 1) b.stride = a.stride;
  if (a.stride != b.stride || a.width > a.stride || b.width > b.stride) return true;
  const Index s = a.stride;
  // B starts delta = q*s + rem bytes after A (0 <= rem < s). B's row i covers [rem, rem + wb)
  // of A's row band q + i, spilling into band q + i + 1 when rem + wb > s (wb <= s, so never
  // further). A's row j covers [0, wa) of band j. So they share a byte iff some i in [0, rb)
  // meets A's row q + i with rem < wa, or A's row q + i + 1 with rem + wb > s.
  const Index delta = b.begin >= a.begin ? static_cast<Index>(b.begin - a.begin)
                                         : -static_cast<Index>(a.begin - b.begin);
  const Index q = floor_divide(delta, s), rem = delta - q * s;
  const auto rows_meet = [&](Index shift) {  // some i in [0, rb) with q + shift + i in [0, ra)
    return std::max<Index>(0, -q - shift) < std::min<Index>(b.rows, a.rows - q - shift);
  };
  return (rem < a.width && rows_meet(0)) || (rem + b.width > s && rows_meet(1));
}

}  // namespace oft::detail

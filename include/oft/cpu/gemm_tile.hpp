#pragma once
/// \file cpu/gemm_tile.hpp
/// The one compute kernel of the CPU backend: a small GEMM with the output tile held in SIMD
/// registers, C (=|+=) A * B where
///   A(t, p) = a[t * a_row + p * a_inner]   (any strides: X rows for apply, X^T for gradients)
///   B(p, c) = b[p * ldb + c]               (row-major, contiguous columns)
///   C(t, c) = c[t * ldc + c]               (row-major)
/// The register tile is kTileRows x (kTilePackets * lanes): 6 x 16 floats with AVX2 (the classic
/// sgemm micro-kernel: 12 accumulators, 2 B loads and 6 broadcasts per step of p) and 8 x 32 with
/// AVX-512. Eigen's packet primitives make it portable to SSE, AVX2, AVX-512 and NEON. No checks: callers in
/// block_orthogonal.hpp validate shapes at the public boundary.

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "../config.hpp"

namespace oft::cpu_detail {

template <class Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;

template <class Scalar>
inline constexpr int kLanes = Eigen::internal::unpacket_traits<Packet<Scalar>>::size;

/// Rows of the register tile, chosen from the ISA's register file. With 16 vector registers
/// (SSE, AVX2, NEON), 6 rows x 2 packets leaves room for the B row and the broadcast. With 32
/// (AVX-512), 8 rows x 2 packets (16 accumulators + 3) fit, and b in {16, 32, 64} (the common
/// block sizes, and the b x b gradient tiles G_i = X_i^T dY_i) split into whole tiles with no
/// row tail; 6 rows left a 2-row tail at b = 32.
#if defined(EIGEN_VECTORIZE_AVX512)
inline constexpr int kTileRows = 8;
#else
inline constexpr int kTileRows = 6;
#endif
inline constexpr int kTilePackets = 2;

#if defined(__GNUC__) && !defined(__clang__)
#define OFT_UNROLL _Pragma("GCC unroll 16")
#elif defined(__clang__)
#define OFT_UNROLL _Pragma("unroll")
#else
#define OFT_UNROLL
#endif

/// One register tile: Rows x (Packets * lanes) outputs, full depth.
template <class Scalar, int Rows, int Packets>
inline void gemm_register_tile(const Scalar* a, Index a_row, Index a_inner, const Scalar* b,
                               Index ldb, Scalar* c, Index ldc, Index depth, bool accumulate) {
  using P = Packet<Scalar>;
  constexpr int lanes = kLanes<Scalar>;
  P acc[Rows][Packets];
  OFT_UNROLL for (int t = 0; t < Rows; ++t)
    OFT_UNROLL for (int v = 0; v < Packets; ++v) acc[t][v] = Eigen::internal::pset1<P>(Scalar(0));
  for (Index p = 0; p < depth; ++p) {
    P row[Packets];
    OFT_UNROLL for (int v = 0; v < Packets; ++v)
      row[v] = Eigen::internal::ploadu<P>(b + p * ldb + v * lanes);
    const Scalar* a_col = a + p * a_inner;
    OFT_UNROLL for (int t = 0; t < Rows; ++t) {
      const P scale = Eigen::internal::pset1<P>(a_col[t * a_row]);
      OFT_UNROLL for (int v = 0; v < Packets; ++v)
        acc[t][v] = Eigen::internal::pmadd(scale, row[v], acc[t][v]);
    }
  }
  OFT_UNROLL for (int t = 0; t < Rows; ++t)
    OFT_UNROLL for (int v = 0; v < Packets; ++v) {
      Scalar* out = c + t * ldc + v * lanes;
      P value = acc[t][v];
      if (accumulate) value = Eigen::internal::padd(value, Eigen::internal::ploadu<P>(out));
      Eigen::internal::pstoreu(out, value);
    }
}

/// Scalar fallback for the columns left over after whole packets (b not a multiple of lanes).
template <class Scalar>
inline void gemm_scalar_columns(Index rows, Index cols, const Scalar* a, Index a_row,
                                Index a_inner, const Scalar* b, Index ldb, Scalar* c, Index ldc,
                                Index depth, bool accumulate) {
  for (Index t = 0; t < rows; ++t)
    for (Index col = 0; col < cols; ++col) {
      Scalar sum = accumulate ? c[t * ldc + col] : Scalar(0);
      for (Index p = 0; p < depth; ++p) sum += a[t * a_row + p * a_inner] * b[p * ldb + col];
      c[t * ldc + col] = sum;
    }
}

/// Column sweep for a fixed number of tile rows.
template <class Scalar, int Rows>
inline void gemm_rows(Index cols, const Scalar* a, Index a_row, Index a_inner, const Scalar* b,
                      Index ldb, Scalar* c, Index ldc, Index depth, bool accumulate) {
  constexpr int lanes = kLanes<Scalar>;
  constexpr int wide = kTilePackets * lanes;
  Index col = 0;
  for (; col + wide <= cols; col += wide)
    gemm_register_tile<Scalar, Rows, kTilePackets>(a, a_row, a_inner, b + col, ldb, c + col, ldc,
                                                   depth, accumulate);
  for (; col + lanes <= cols; col += lanes)
    gemm_register_tile<Scalar, Rows, 1>(a, a_row, a_inner, b + col, ldb, c + col, ldc, depth,
                                        accumulate);
  if (col < cols)
    gemm_scalar_columns(Rows, cols - col, a, a_row, a_inner, b + col, ldb, c + col, ldc, depth,
                        accumulate);
}

/// Software prefetch of `rows` rows of `count` elements at row stride `stride` (a block slice
/// of the next block): the slices are short (one or two cache lines per row) and rows are d
/// elements apart, a pattern the hardware prefetchers do not follow, so without this every
/// slice copy waits on memory with nothing to overlap.
template <class Element>
inline void prefetch_slice(const Element* from, Index stride, Index rows, Index count) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr Index kLine = 64 / static_cast<Index>(sizeof(Element));
  for (Index t = 0; t < rows; ++t)
    for (Index k = 0; k < count; k += kLine) __builtin_prefetch(from + t * stride + k, 0, 3);
#else
  (void)from, (void)stride, (void)rows, (void)count;
#endif
}

/// C (rows x cols) (=|+=) A (rows x depth) * B (depth x cols), strides as in the file comment.
/// C must not overlap A or B.
template <class Scalar>
inline void gemm_small(Index rows, Index cols, Index depth, const Scalar* a, Index a_row,
                       Index a_inner, const Scalar* b, Index ldb, Scalar* c, Index ldc,
                       bool accumulate) {
  Index t = 0;
  for (; t + kTileRows <= rows; t += kTileRows)
    gemm_rows<Scalar, kTileRows>(cols, a + t * a_row, a_row, a_inner, b, ldb, c + t * ldc, ldc,
                                 depth, accumulate);
  const Scalar* a_rest = a + t * a_row;
  Scalar* c_rest = c + t * ldc;
  static_assert(kTileRows <= 8, "the tail switch below covers at most 7 rows");
  switch (rows - t) {
    case 7: gemm_rows<Scalar, 7>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 6: gemm_rows<Scalar, 6>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 5: gemm_rows<Scalar, 5>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 4: gemm_rows<Scalar, 4>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 3: gemm_rows<Scalar, 3>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 2: gemm_rows<Scalar, 2>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    case 1: gemm_rows<Scalar, 1>(cols, a_rest, a_row, a_inner, b, ldb, c_rest, ldc, depth, accumulate); break;
    default: break;
  }
}

}  // namespace oft::cpu_detail

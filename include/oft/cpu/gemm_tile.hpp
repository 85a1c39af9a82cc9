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
/// block_orthogonal.hpp validate shapes at the public boundary. For a float kernel, C may be
/// bfloat16: each result is rounded once to nearest even as it is stored (bf16_bits.hpp).

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include "../config.hpp"
#include "bf16_bits.hpp"

namespace oft::detail::cpu {

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

/// How the kernel writes C. Streaming stores bypass the caches (non-temporal): a C that is a
/// separate output buffer (Y of an out-of-place apply, dX of an out-of-place backward) is then
/// written without first being read for ownership, a third less memory traffic for that stream.
/// They need every store to be one aligned cache line (see streaming_allowed) and a
/// stream_fence() before another thread reads C; accumulation (C +=) always uses regular stores.
enum class Store { Regular, Streaming };

/// A non-temporal store of one packet to an address aligned to the packet's size; a regular
/// store where the ISA (or the packet type) has none. Overloads, not a type switch: naming the
/// vector types as template arguments trips GCC's -Wignored-attributes.
template <class Scalar, class P>
inline void pstore_streaming(Scalar* to, const P& value) {
  Eigen::internal::pstoreu(to, value);
}
#if defined(EIGEN_VECTORIZE_AVX512)
inline void pstore_streaming(float* to, const __m512& value) { _mm512_stream_ps(to, value); }
inline void pstore_streaming(double* to, const __m512d& value) { _mm512_stream_pd(to, value); }
#endif
#if defined(EIGEN_VECTORIZE_AVX)
inline void pstore_streaming(float* to, const __m256& value) { _mm256_stream_ps(to, value); }
inline void pstore_streaming(double* to, const __m256d& value) { _mm256_stream_pd(to, value); }
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
inline void pstore_streaming(float* to, const __m128& value) { _mm_stream_ps(to, value); }
inline void pstore_streaming(double* to, const __m128d& value) { _mm_stream_pd(to, value); }
#endif

/// Stores one packet of results: to C's own type (regular or streaming), or rounded to
/// bfloat16 (regular stores; bfloat16 outputs never stream).
template <Store Kind, class Scalar, class P>
inline void store_packet(Scalar* to, const P& value) {
  if constexpr (Kind == Store::Streaming)
    pstore_streaming(to, value);
  else
    Eigen::internal::pstoreu(to, value);
}
template <Store Kind, class P>
inline void store_packet(Eigen::bfloat16* to, const P& value) {
  narrow_packet_bf16(to, value);
}

/// One result of the scalar column tail, likewise.
template <class Scalar>
inline void store_scalar(Scalar* to, Scalar value) {
  *to = value;
}
inline void store_scalar(Eigen::bfloat16* to, float value) {
  const std::uint16_t bits = narrow_bf16(value);
  std::memcpy(static_cast<void*>(to), &bits, sizeof bits);
}

/// Orders this thread's streaming stores before its later stores (and so before the OpenMP
/// barrier that publishes them): non-temporal stores are weakly ordered on x86.
inline void stream_fence() {
#if defined(EIGEN_VECTORIZE_SSE2)
  _mm_sfence();
#endif
}

/// Whether streaming stores may write a C that starts at `c` with row stride `ldc` and `cols`
/// columns. Each packet must be one whole 64-byte cache line (AVX-512, float or double), so
/// every store fills a line by itself, and every packet of every row must be aligned: each row
/// starts aligned and holds whole packets only (no scalar column tail). With 32-byte packets
/// (an AVX2 build, measured on Zen 4) streaming made the out-of-place apply 9-17% slower at
/// b = 32 and the rotation step 9% slower, so those builds keep regular stores.
template <class Scalar>
inline bool streaming_allowed(const Scalar* c, Index ldc, Index cols) {
  constexpr Index kLineBytes = 64;
  constexpr Index packet_bytes = kLanes<Scalar> * static_cast<Index>(sizeof(Scalar));
  const auto address = reinterpret_cast<std::uintptr_t>(c);
  return packet_bytes == kLineBytes && address % kLineBytes == 0 &&
         (ldc * static_cast<Index>(sizeof(Scalar))) % kLineBytes == 0 &&
         cols % kLanes<Scalar> == 0;
}

/// One register tile: Rows x (Packets * lanes of P) outputs, full depth. P is the ISA's full
/// packet, or a narrower one (half, quarter) for the columns a full packet does not cover.
/// C is Scalar, or bfloat16 for a float kernel (rounded once as stored; no accumulation).
template <class Scalar, int Rows, int Packets, Store Kind = Store::Regular,
          class P = Packet<Scalar>, class Out = Scalar>
inline void gemm_register_tile(const Scalar* a, Index a_row, Index a_inner, const Scalar* b,
                               Index ldb, Out* c, Index ldc, Index depth, bool accumulate) {
  constexpr int lanes = Eigen::internal::unpacket_traits<P>::size;
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
      Out* out = c + t * ldc + v * lanes;
      P value = acc[t][v];
      if constexpr (std::is_same_v<Out, Scalar>)
        if (accumulate) value = Eigen::internal::padd(value, Eigen::internal::ploadu<P>(out));
      store_packet<Kind>(out, value);
    }
}

/// Scalar fallback for the columns left over after whole packets (b not a multiple of lanes).
template <class Scalar, class Out>
inline void gemm_scalar_columns(Index rows, Index cols, const Scalar* a, Index a_row,
                                Index a_inner, const Scalar* b, Index ldb, Out* c, Index ldc,
                                Index depth, bool accumulate) {
  for (Index t = 0; t < rows; ++t)
    for (Index col = 0; col < cols; ++col) {
      Scalar sum(0);
      if constexpr (std::is_same_v<Out, Scalar>)
        if (accumulate) sum = c[t * ldc + col];
      for (Index p = 0; p < depth; ++p) sum += a[t * a_row + p * a_inner] * b[p * ldb + col];
      store_scalar(c + t * ldc + col, sum);
    }
}

/// Columns [col, cols) that are fewer than P's lanes, with the next narrower packets (with
/// AVX-512 floats: 8, then 4 lanes), so that b = 8 or the 8-column tail of b = 24 stays
/// vectorized rather than falling to the scalar loop. Returns the first column left for it.
/// Regular stores only: streaming_allowed rules out any column tail.
// Naming the narrower packets (__m256, __m128) as template arguments drops their may_alias
// attribute, which GCC warns about; the packets here are register values loaded and stored
// through Eigen's ploadu/pstoreu, so the attribute is not needed (Eigen silences the same
// warning inside its own headers).
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
template <class Scalar, int Rows, class P, class Out>
inline Index gemm_narrow_columns(Index col, Index cols, const Scalar* a, Index a_row,
                                 Index a_inner, const Scalar* b, Index ldb, Out* c, Index ldc,
                                 Index depth, bool accumulate) {
  using Half = typename Eigen::internal::unpacket_traits<P>::half;
  constexpr int half_lanes = Eigen::internal::unpacket_traits<Half>::size;
  if constexpr (half_lanes < Eigen::internal::unpacket_traits<P>::size) {
    if (col + half_lanes <= cols) {
      gemm_register_tile<Scalar, Rows, 1, Store::Regular, Half>(a, a_row, a_inner, b + col, ldb,
                                                                c + col, ldc, depth, accumulate);
      col += half_lanes;  // at most one: fewer than 2 * half_lanes columns were left
    }
    return gemm_narrow_columns<Scalar, Rows, Half>(col, cols, a, a_row, a_inner, b, ldb, c, ldc,
                                                   depth, accumulate);
  } else {
    return col;
  }
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/// Column sweep for a fixed number of tile rows.
template <class Scalar, int Rows, Store Kind = Store::Regular, class Out = Scalar>
inline void gemm_rows(Index cols, const Scalar* a, Index a_row, Index a_inner, const Scalar* b,
                      Index ldb, Out* c, Index ldc, Index depth, bool accumulate) {
  constexpr int lanes = kLanes<Scalar>;
  constexpr int wide = kTilePackets * lanes;
  Index col = 0;
  for (; col + wide <= cols; col += wide)
    gemm_register_tile<Scalar, Rows, kTilePackets, Kind>(a, a_row, a_inner, b + col, ldb,
                                                         c + col, ldc, depth, accumulate);
  for (; col + lanes <= cols; col += lanes)
    gemm_register_tile<Scalar, Rows, 1, Kind>(a, a_row, a_inner, b + col, ldb, c + col, ldc, depth,
                                              accumulate);
  col = gemm_narrow_columns<Scalar, Rows, Packet<Scalar>>(col, cols, a, a_row, a_inner, b, ldb, c,
                                                          ldc, depth, accumulate);
  if (col < cols)
    gemm_scalar_columns(Rows, cols - col, a, a_row, a_inner, b + col, ldb, c + col, ldc, depth,
                        accumulate);
}

/// Software prefetch into L2 (prefetcht1; on AMD Zen, T1 and T2 both fill L2, not L1) of rows
/// [first, last) of `count` elements each at row stride `stride`. Backward reads row segments
/// of one or a few blocks, rows d elements apart, a pattern the hardware prefetchers follow
/// poorly, so the next segments are requested while the current ones compute. Not into L1:
/// rows 16 KiB apart share an L1 set, and at b = 16 an L1 prefetch measured 6-29% slower.
template <class Element>
inline void prefetch_rows(const Element* from, Index stride, Index first, Index last,
                          Index count) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr Index kLine = 64 / static_cast<Index>(sizeof(Element));
  for (Index t = first; t < last; ++t)
    for (Index k = 0; k < count; k += kLine) __builtin_prefetch(from + t * stride + k, 0, 2);
  // GCC's interprocedural analysis counts a prefetch as no side effect, so a caller that only
  // prefetches is "pure" and its calls are deleted where it is not inlined (measured: the
  // backward's prefetches vanished from the binary). An empty volatile asm is a side effect the
  // compiler must keep, and it constrains nothing else.
  asm volatile("" : : "r"(from));
#else
  (void)from, (void)stride, (void)first, (void)last, (void)count;
#endif
}

/// Whether `cols` is the width of P or of one of the narrower packets below it (with AVX-512
/// floats: 16, 8 or 4). (Naming the narrower packets as template arguments: see the pragma
/// before gemm_narrow_columns.)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
template <class Scalar, class P = Packet<Scalar>>
constexpr bool is_packet_width(Index cols) {
  using Half = typename Eigen::internal::unpacket_traits<P>::half;
  constexpr int lanes = Eigen::internal::unpacket_traits<P>::size;
  if (cols == lanes) return true;
  if constexpr (Eigen::internal::unpacket_traits<Half>::size < lanes)
    return is_packet_width<Scalar, Half>(cols);
  else
    return false;
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/// Whether gemm_small covers `cols` columns with one register tile per row tile: a whole tile,
/// one packet, or one of gemm_narrow_columns' narrower packets. Each tile reads all of its rows
/// of A before it stores any of C, so then C may be A itself (in place, a_inner = 1,
/// depth = cols).
template <class Scalar>
constexpr bool one_register_tile(Index cols) {
  return cols == kTilePackets * kLanes<Scalar> || is_packet_width<Scalar>(cols);
}

/// The tile that spans a block of four packets (b = 32 floats or 16 doubles) with 16 vector
/// registers (AVX2), where the 6-row, two-packet tile spans half of it: 3 rows x 4 packets, 12
/// accumulators, leaving 4 registers for the broadcast and B's packets. Used where one tile must
/// span the block, the in-place apply (out of place it measured 12.6% slower than the 6 x 2
/// tiles); AVX-512's two-packet tile already spans 32 floats.
inline constexpr int kWideTileRows = 3;
inline constexpr int kWidePackets = 4;

template <class Scalar>
constexpr bool wide_register_tile(Index cols) {
  return kTileRows == 6 && cols == kWidePackets * kLanes<Scalar>;
}

/// C = A * B for wide_register_tile(cols) columns, each tile all of them: a tile reads all of
/// its rows of A before it stores any of C, so C may be A itself (in place, a_inner = 1,
/// depth = cols) without a copy. Every output is the same sum in the same order as gemm_small's.
template <class Scalar>
inline void gemm_small_wide(Index rows, Index depth, const Scalar* a, Index a_row, Index a_inner,
                            const Scalar* b, Index ldb, Scalar* c, Index ldc) {
  Index t = 0;
  for (; t + kWideTileRows <= rows; t += kWideTileRows)
    gemm_register_tile<Scalar, kWideTileRows, kWidePackets>(a + t * a_row, a_row, a_inner, b, ldb,
                                                            c + t * ldc, ldc, depth, false);
  static_assert(kWideTileRows == 3, "the tail below covers 1 and 2 rows");
  if (rows - t == 2)
    gemm_register_tile<Scalar, 2, kWidePackets>(a + t * a_row, a_row, a_inner, b, ldb, c + t * ldc,
                                                ldc, depth, false);
  else if (rows - t == 1)
    gemm_register_tile<Scalar, 1, kWidePackets>(a + t * a_row, a_row, a_inner, b, ldb, c + t * ldc,
                                                ldc, depth, false);
}

/// Calls tail(std::integral_constant<int, count>{}) for a row tail of count = 1..7 rows, nothing
/// for 0: register tiles take their row count as a template argument.
template <class Tail>
inline void for_row_tail(Index count, Tail&& tail) {
  // clang-format off
  switch (count) {
    case 7: tail(std::integral_constant<int, 7>{}); break;
    case 6: tail(std::integral_constant<int, 6>{}); break;
    case 5: tail(std::integral_constant<int, 5>{}); break;
    case 4: tail(std::integral_constant<int, 4>{}); break;
    case 3: tail(std::integral_constant<int, 3>{}); break;
    case 2: tail(std::integral_constant<int, 2>{}); break;
    case 1: tail(std::integral_constant<int, 1>{}); break;
    default: break;
  }
  // clang-format on
}

/// C (rows x cols) (=|+=) A (rows x depth) * B (depth x cols), strides as in the file comment.
/// C must not overlap A or B, except C == A where one_register_tile(cols) allows it.
/// Kind == Store::Streaming needs streaming_allowed(c, ldc, cols).
template <class Scalar, Store Kind = Store::Regular, class Out = Scalar>
inline void gemm_small(Index rows, Index cols, Index depth, const Scalar* a, Index a_row,
                       Index a_inner, const Scalar* b, Index ldb, Out* c, Index ldc,
                       bool accumulate) {
  Index t = 0;
  for (; t + kTileRows <= rows; t += kTileRows)
    gemm_rows<Scalar, kTileRows, Kind>(cols, a + t * a_row, a_row, a_inner, b, ldb, c + t * ldc,
                                       ldc, depth, accumulate);
  const Scalar* a_rest = a + t * a_row;
  Out* c_rest = c + t * ldc;
  auto tail = [&](auto rows_constant) {
    gemm_rows<Scalar, decltype(rows_constant)::value, Kind>(cols, a_rest, a_row, a_inner, b, ldb,
                                                            c_rest, ldc, depth, accumulate);
  };
  static_assert(kTileRows <= 8, "for_row_tail covers at most 7 rows");
  for_row_tail(rows - t, tail);
}

/// gemm_small with streaming stores where streaming_allowed, regular ones otherwise.
template <class Scalar, class Out>
inline void gemm_small_to(bool streaming, Index rows, Index cols, Index depth, const Scalar* a,
                          Index a_row, Index a_inner, const Scalar* b, Index ldb, Out* c,
                          Index ldc) {
  if (streaming)
    gemm_small<Scalar, Store::Streaming>(rows, cols, depth, a, a_row, a_inner, b, ldb, c, ldc,
                                         false);
  else
    gemm_small<Scalar>(rows, cols, depth, a, a_row, a_inner, b, ldb, c, ldc, false);
}

}  // namespace oft::detail::cpu

#pragma once
/// \file cpu/panels.hpp
/// What the CPU backend's panel loops share: the kernel parameters (Params, a view of one
/// BlockOrthogonal<Scalar, P, cpu>'s state that the loops read), the work split over panels of
/// token rows, and the slice copies. The loops themselves are in cpu/apply.hpp,
/// cpu/backward.hpp and their bfloat16 twins; the host class is cpu/block_orthogonal.hpp.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "../config.hpp"
#include "../detail/thread_scratch.hpp"
#include "../index.hpp"
#include "../view.hpp"
#include "bf16.hpp"
#include "gemm_tile.hpp"

namespace oft::detail::cpu {

/// Everything the panel loops read from the operator, by value or pointer: they are free
/// functions over this, so a new operator family can reuse them with its own host class.
template <class Scalar>
struct Params {
  BlockSpec spec;                ///< r blocks of size b, shared or one generator each
  const unsigned char* active;   ///< r flags; a 0 block acts as the identity (dropout)
  const Scalar* rotations_t;     ///< R_g^T, generators x b x b row-major (backward's dX)
  const std::uint32_t* pairs_t;  ///< D_g^T = R_g^T - I packed for vdpbf16ps (float)
  bool dot_products;             ///< Bf16Arithmetic::DotProduct for bfloat16 activations

  bool is_active(Index i) const { return active[static_cast<std::size_t>(i)] != 0; }
  Index block_area() const { return spec.block_size * spec.block_size; }
};

// Rows per work item of apply: one register tile, so few rows stream at once (friendly to the
// hardware prefetchers; X rows d apart alias to the same L1 sets) and the copy stays in L1.
inline constexpr Index kApplyPanelRows = kTileRows;
// Rows per work item of backward: deep enough that the G_i = X_i^T dY_i tiles are loaded and
// stored once per 64 tokens (48 with 6-row AVX2 tiles) instead of once per register tile.
inline constexpr Index kBackwardPanelRows = 8 * kTileRows;
// Backward copies a panel's rows a group of blocks at a time, about this many bytes of each
// row, and prefetches the next group into L2 while the current one computes (measured on Zen 4:
// backward 19-23% faster at b = 32, out of place 18% at b = 64; in place at b = 64 and 128
// within the machine's noise). Row slices under two cache lines (b = 16 float, b = 32 bfloat16)
// stay one block at a time: grouping them measured 5-16% slower in one run and no different in
// another.
inline constexpr Index kBackwardGroupBytes = 1024;
inline constexpr Index kBackwardGroupMinSliceBytes = 128;
// Per-thread stack scratch (scalars); a panel that does not fit (a backward group, or a large
// b) uses the thread's kept heap buffer (detail/thread_scratch.hpp).
inline constexpr Index kStackScratch = 8192;
// Below this many flops the OpenMP fork costs more than it saves.
inline constexpr double kParallelFlops = 1 << 18;
// Outputs at least this large (bytes) are written with streaming stores when they are a
// separate buffer: far larger than the caches, so the data goes to memory anyway, and skipping
// the read for ownership saves a third of that stream's traffic. Smaller outputs stay in the
// cache for the consumer that reads them next.
inline constexpr double kStreamingBytes = 8.0 * (1 << 20);

// Scalar activations can be read where they are; bfloat16 ones are widened into a float
// slice first. Either way the kernel writes the outputs itself (bfloat16 rounded once, as
// stored).
template <class Act, class Scalar>
inline constexpr bool kDirect = std::is_same_v<Act, Scalar>;

/// Whether the kernel may write `out` (a separate buffer, not an input) with streaming stores.
template <class Scalar, class Act>
inline bool stream_output(const Params<Scalar>& p, const MatrixView<Act>& out) {
  if constexpr (!kDirect<Act, Scalar>) {
    // bfloat16: only DotProduct's kernel, whose two-packet rows are one cache line each.
    const double bytes =
        static_cast<double>(out.rows()) * static_cast<double>(out.cols()) * sizeof(Act);
    return p.dot_products && bytes >= kStreamingBytes &&
           rotate_streaming_allowed(bits(out.data()), out.stride(), p.spec.block_size);
  } else {
    const double bytes =
        static_cast<double>(out.rows()) * static_cast<double>(out.cols()) * sizeof(Act);
    return bytes >= kStreamingBytes &&
           streaming_allowed(out.data(), out.stride(), p.spec.block_size);
  }
}

/// Runs body(first_row, rows, scratch, thread) over panels of `rows_per_panel` rows, split
/// across threads in contiguous chunks; scratch holds `copies` panel slices of b columns.
template <class Scalar, class Body>
inline void for_each_panel(const Params<Scalar>& p, Index n, Index rows_per_panel, Index copies,
                           Body&& body) {
  const Index b = p.spec.block_size;
  const Index panels = (n + rows_per_panel - 1) / rows_per_panel;
  [[maybe_unused]] const double flops =
      2.0 * static_cast<double>(n) * static_cast<double>(p.spec.features() * b);
  const Index scratch_size = copies * rows_per_panel * b;
  const bool on_stack = scratch_size <= kStackScratch;
  OFT_OMP(parallel if (flops > kParallelFlops && panels > 1)) {
    alignas(64) Scalar stack_scratch[kStackScratch];
    // Larger scratch is this thread's kept buffer: no allocation once it has grown.
    Scalar* scratch =
        on_stack ? stack_scratch
                 : detail::thread_buffer<Scalar, detail::ScratchSlot::PanelScratch>(scratch_size);
    const int thread = detail::thread_id();
    OFT_OMP(for schedule(static))
    for (Index panel = 0; panel < panels; ++panel) {
      const Index first = panel * rows_per_panel;
      body(first, std::min(rows_per_panel, n - first), scratch, thread);
    }
  }
}

/// Copies rows x b activations starting at `from` (row stride `stride`) into contiguous
/// Scalar `to`, widening bfloat16 exactly.
template <class Act, class Scalar>
inline void copy_slice(const Act* from, Index stride, Index rows, Index b, Scalar* to) {
  for (Index t = 0; t < rows; ++t) convert_row(from + t * stride, b, to + t * b);
}

/// The inverse: contiguous rows x b Scalars to activations at row stride `stride`, rounding
/// to bfloat16 (nearest even) when Act is bfloat16.
template <class Scalar, class Act>
inline void store_slice(const Scalar* from, Index rows, Index b, Act* to, Index stride) {
  for (Index t = 0; t < rows; ++t) convert_row(from + t * b, b, to + t * stride);
}

/// Copies rows x b bfloat16 at row stride `stride` to `to` at row stride `to_stride`.
inline void copy_bf16_rows(const std::uint16_t* from, Index stride, Index rows, Index b,
                           std::uint16_t* to, Index to_stride) {
  for (Index t = 0; t < rows; ++t)
    std::memcpy(to + t * to_stride, from + t * stride, static_cast<size_t>(b) * 2);
}

}  // namespace oft::detail::cpu

#pragma once
/// \file cpu/backward_bf16.hpp
/// The CPU backward loop for bfloat16 activations with Bf16Arithmetic::DotProduct
/// (`vdpbf16ps`, cpu/bf16_dot.hpp): G from X's and dY's rows interleaved in pairs, dX_i =
/// dY_i + dY_i D_i^T. Builds without AVX512_BF16 compile it to nothing: the host class refuses
/// DotProduct there.

#include "panels.hpp"

namespace oft::detail::cpu {

/// Per panel of rows and block: X_i's and dY_i's rows interleaved in pairs into scratch (dY_i
/// also copied as it is), G_g += X_i^T dY_i from the pairs, dX_i = dY_i + dY_i D_i^T from the
/// copy (without dtheta: from dY's rows where they are, or a copy when dX is dY and one register
/// tile does not span the block). The next block's rows are prefetched into L2 while one
/// computes. Outputs as backward (cpu/backward.hpp): dX, and thread t's partial G in the
/// workspace's slab t; returns the number of slabs (threads).
template <class Scalar>
inline int backward_bf16_dot(const Params<Scalar>& p, const ConstMatrixView<bfloat16>& x,
                             const ConstMatrixView<bfloat16>& dy, const MatrixView<bfloat16>& dx,
                             Scalar* workspace, bool want_dx, bool want_dtheta) {
#if defined(OFT_HAVE_BF16_DOT)
  const Index b = p.spec.block_size, area = p.block_area(), words = pair_words(b);
  const Index slab = p.spec.generators() * area;
  const int threads = detail::max_threads();
  if (want_dtheta) std::fill(workspace, workspace + threads * slab, Scalar(0));
  const Index rows_per_panel = kBackwardPanelRows;
  const Index pair_slice = (rows_per_panel + 1) / 2 * b;  // words of one interleaved slice
  // dX is streamed only when it is neither input (in place, its lines are already cached).
  const bool streaming =
      want_dx && dx.data() != dy.data() && dx.data() != x.data() && stream_output(p, dx);
  // Scratch (two float slices): X's pairs, dY's pairs, then a bfloat16 copy of dY's slice.
  for_each_panel(
      p, x.rows(), rows_per_panel, 2, [&](Index first, Index rows, Scalar* scratch, int thread) {
        Scalar* partial = workspace + thread * slab;
        auto* x_pairs = reinterpret_cast<std::uint32_t*>(scratch);
        std::uint32_t* dy_pairs = x_pairs + pair_slice;
        auto* dy_copy = reinterpret_cast<std::uint16_t*>(dy_pairs + pair_slice);
        for (Index i = 0; i < p.spec.blocks; ++i) {
          // The next block of this panel, or the first of this thread's next panel. (Two blocks
          // ahead measured no different on Zen 4.)
          const Index next_first = i + 1 < p.spec.blocks ? first : first + rows;
          const Index next_i = i + 1 < p.spec.blocks ? i + 1 : 0;
          const Index next_rows = std::max<Index>(0, std::min(rows, x.rows() - next_first));
          if (next_rows > 0) {
            prefetch_rows(dy.row(next_first) + next_i * b, dy.stride(), 0, next_rows, b);
            if (want_dtheta)
              prefetch_rows(x.row(next_first) + next_i * b, x.stride(), 0, next_rows, b);
          }
          const bool active = p.is_active(i);
          const Index g = p.spec.generator_of(i);
          const std::uint16_t* block_dy = bits(dy.row(first) + i * b);
          // dX reads dY_i from a contiguous copy when there is one: rows d apart share an L1 set,
          // so the slice itself may be gone from L1 by then.
          const std::uint16_t* a = block_dy;
          Index a_row = dy.stride();
          if (want_dtheta && active) {
            interleave_rows(bits(x.row(first) + i * b), x.stride(), rows, b, x_pairs);
            interleave_rows(block_dy, dy.stride(), rows, b, dy_pairs, want_dx ? dy_copy : nullptr);
            gradient_pairs(b, (rows + 1) / 2, x_pairs, dy_pairs, partial + g * area);
            a = dy_copy, a_row = b;
          }
          if (!want_dx) continue;
          std::uint16_t* out = bits(dx.row(first) + i * b);
          if (!active) {
            if (out != block_dy) copy_bf16_rows(block_dy, dy.stride(), rows, b, out, dx.stride());
            continue;
          }
          if (a == block_dy && out == block_dy && !rotate_in_place(b)) {
            copy_bf16_rows(block_dy, dy.stride(), rows, b, dy_copy, b);
            a = dy_copy, a_row = b;
          }
          // (dX over X is safe: X_i was interleaved above, and no later block reads it.)
          rotate_rows(streaming, rows, b, a, a_row, p.pairs_t + g * words, out, dx.stride());
        }
        if (streaming) stream_fence();
      });
  return threads;
#else
  (void)p, (void)x, (void)dy, (void)dx, (void)workspace, (void)want_dx, (void)want_dtheta;
  return 0;  // unreachable: set_bf16_arithmetic refuses DotProduct
#endif
}

}  // namespace oft::detail::cpu

#pragma once
/// \file cpu/backward.hpp
/// The CPU backward loop: dX_i = dY_i R_i^T and the per-thread partial sums of
/// G_g = sum_i X_i^T dY_i in one fused pass over X and dY; the host class then sums the threads'
/// partials (sum_partial_gradients) and turns G into dtheta through the parameterization's
/// vector-Jacobian product. bfloat16 activations with Bf16Arithmetic::Float go through the same
/// loop (widened as they are copied, dX rounded once as stored); DotProduct's loop is
/// cpu/backward_bf16.hpp.

#include "panels.hpp"

namespace oft::detail::cpu {

/// Blocks that backward copies and prefetches together: enough for about kBackwardGroupBytes
/// of each row when a block's row slice is at least two cache lines, else one block.
template <class Act>
inline Index backward_group_blocks(Index block_size) {
  const Index slice_bytes = block_size * static_cast<Index>(sizeof(Act));
  if (slice_bytes < kBackwardGroupMinSliceBytes) return 1;
  return std::max<Index>(1, kBackwardGroupBytes / slice_bytes);
}

/// Copies blocks [i0, i0 + blocks) of rows [first, first + rows) of `from` into block-major
/// scratch: block j's rows x b slice starts at to + j * slice. Each row's segment is read in
/// order, whole.
template <class Act, class Scalar>
inline void copy_group(const ConstMatrixView<Act>& from, Index first, Index rows, Index i0,
                       Index blocks, Index b, Index slice, Scalar* to) {
  for (Index t = 0; t < rows; ++t) {
    const Act* row = from.row(first + t) + i0 * b;
    for (Index j = 0; j < blocks; ++j) convert_row(row + j * b, b, to + j * slice + t * b);
  }
}

/// dX = dY R^T (when want_dx) and, when want_dtheta, thread t's partial G in
/// workspace[t * generators * b^2, ...) (zeroed here first; max_threads() slabs). Checked by
/// the caller: shapes, overlaps, the workspace's size. Returns the number of partial slabs
/// (threads) for sum_partial_gradients.
template <class Scalar, class Act>
inline int backward(const Params<Scalar>& p, const ConstMatrixView<Act>& x,
                    const ConstMatrixView<Act>& dy, const MatrixView<Act>& dx, Scalar* workspace,
                    bool want_dx, bool want_dtheta) {
  const Index b = p.spec.block_size, area = p.block_area(), count = p.spec.generators();
  const Index slab = count * area;  // one thread's partial sums of G
  const int threads = detail::max_threads();
  if (want_dtheta) std::fill(workspace, workspace + threads * slab, Scalar(0));

  // Per panel of rows and group of blocks: copy the group's dY (and X) row segments into
  // block-major scratch, then per block G_g += X_i^T dY_i and dX_i = dY_i R_i^T. The copies make
  // dX == dY or dX == X safe: both are read before dX_i is written, and other panels and
  // groups are disjoint. While a group computes, the next group's rows are prefetched, a few
  // rows per block, so memory and arithmetic overlap.
  const Index group = backward_group_blocks<Act>(b);
  const Index rows_per_panel = kBackwardPanelRows;
  const Index slice = rows_per_panel * b;  // one block's copy
  // dX is streamed only when it is neither input (in place, its lines are already cached).
  const bool streaming =
      want_dx && dx.data() != dy.data() && dx.data() != x.data() && stream_output(p, dx);
  for_each_panel(
      p, x.rows(), rows_per_panel, 2 * group,
      [&](Index first, Index rows, Scalar* scratch, int thread) {
        Scalar* partial = workspace + thread * slab;
        Scalar* scratch_dy = scratch;
        Scalar* scratch_x = scratch + group * slice;
        for (Index i0 = 0; i0 < p.spec.blocks; i0 += group) {
          const Index blocks = std::min(group, p.spec.blocks - i0);
          // The group after this one: the next in this panel, or the first of this thread's next
          // panel (static schedule: a thread's panels are contiguous). Its rows are prefetched in
          // `blocks` parts, one before this group's copy and one before each later block.
          Index next_first = first, next_i0 = i0 + group;
          if (next_i0 >= p.spec.blocks) next_first = first + rows, next_i0 = 0;
          const Index next_rows = std::max<Index>(0, std::min(rows, x.rows() - next_first));
          const Index next_cols = std::min(group, p.spec.blocks - next_i0) * b;
          auto prefetch_part = [&](Index part) {
            if (next_rows == 0) return;
            const Index from = part * next_rows / blocks, to = (part + 1) * next_rows / blocks;
            prefetch_rows(dy.row(next_first) + next_i0 * b, dy.stride(), from, to, next_cols);
            if (want_dtheta)
              prefetch_rows(x.row(next_first) + next_i0 * b, x.stride(), from, to, next_cols);
          };
          prefetch_part(0);
          copy_group(dy, first, rows, i0, blocks, b, slice, scratch_dy);
          if (want_dtheta) copy_group(x, first, rows, i0, blocks, b, slice, scratch_x);
          for (Index j = 0; j < blocks; ++j) {
            if (j > 0) prefetch_part(j);
            const Index i = i0 + j;
            const bool active = p.is_active(i);
            const Index g = p.spec.generator_of(i);
            const Scalar* block_dy = scratch_dy + j * slice;
            Scalar* block_x = scratch_x + j * slice;
            if (want_dtheta && active)
              // A(k, n) = X_i(n, k): the kernel walks the copied X_i transposed.
              gemm_small(b, b, rows, block_x, 1, b, block_dy, b, partial + g * area, b, true);
            if (!want_dx) continue;
            Act* grad_out = dx.row(first) + i * b;
            if (!active) {
              store_slice(block_dy, rows, b, grad_out, dx.stride());
            } else {
              gemm_small_to(streaming, rows, b, b, block_dy, b, 1, p.rotations_t + g * area, b,
                            grad_out, dx.stride());
            }
          }
        }
        if (streaming) stream_fence();
      });
  return threads;
}

/// Sums the threads' partial G (slabs of generators x b^2 at the start of the workspace) into
/// the first slab.
template <class Scalar>
inline void sum_partial_gradients(const Params<Scalar>& p, Scalar* workspace, int threads) {
  const Index slab = p.spec.generators() * p.block_area();
  for (int t = 1; t < threads; ++t)
    for (Index e = 0; e < slab; ++e) workspace[e] += workspace[t * slab + e];
}

}  // namespace oft::detail::cpu

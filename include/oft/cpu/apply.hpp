#pragma once
/// \file cpu/apply.hpp
/// The CPU apply loop: Y = X * R (or X * R^T, given R^T's blocks), one panel of token rows and
/// one block at a time through the register-tile kernel (cpu/gemm_tile.hpp). Scalar
/// activations are read where they are; bfloat16 ones (Bf16Arithmetic::Float) are widened into
/// a float slice and rounded once as they are stored. DotProduct's loop is cpu/apply_bf16.hpp.

#include "panels.hpp"

namespace oft::detail::cpu {

/// Y = X * B with B = diag(blocks_g) (`blocks`: generators x b x b row-major, R or R^T).
/// Checked by the caller: shapes, and `y` the same view as `x` or disjoint from it.
template <class Scalar, class Act>
inline void apply(const Params<Scalar>& p, const ConstMatrixView<Act>& x, const MatrixView<Act>& y,
                  const Scalar* blocks) {
  const Index b = p.spec.block_size;
  const bool streaming = y.data() != x.data() && stream_output(p, y);
  for_each_panel(
      p, x.rows(), kApplyPanelRows, 1, [&](Index first, Index rows, Scalar* scratch, int) {
        // (Prefetching here measured no gain: the next block, and, on Zen 4 once backward's
        // prefetching was fixed, the next panel into L2, 4-11% slower.)
        for (Index i = 0; i < p.spec.blocks; ++i) {
          const Act* in = x.row(first) + i * b;
          Act* out = y.row(first) + i * b;
          if (!p.is_active(i)) {
            if (in != out)
              for (Index t = 0; t < rows; ++t)
                std::copy(in + t * x.stride(), in + t * x.stride() + b, out + t * y.stride());
            continue;
          }
          const Scalar* r = blocks + p.spec.generator_of(i) * p.block_area();
          if constexpr (kDirect<Act, Scalar>) {
            // In place at b = 32 floats with AVX2 (16 registers): the 3 x 4-packet tile of
            // gemm_small_wide spans the block, so the slice needs no copy (measured there).
            if (in == out && wide_register_tile<Scalar>(b)) {
              gemm_small_wide(rows, b, in, x.stride(), 1, r, b, out, y.stride());
              continue;
            }
            // The kernel reads X's rows where they are when Y is a separate buffer, or when one
            // register tile spans the block (it reads all of its rows before it stores any): no
            // copy (measured on Zen 4: apply 8-20% faster at b = 16 and 32, 19-24% at b = 8).
            // Otherwise the slice is copied first, so that in-place stores cannot clobber rows
            // still to be read.
            const Scalar* a = in;
            Index a_row = x.stride();
            if (in == out && !one_register_tile<Scalar>(b)) {
              copy_slice(in, x.stride(), rows, b, scratch);
              a = scratch, a_row = b;
            }
            gemm_small_to(streaming, rows, b, b, a, a_row, 1, r, b, out, y.stride());
          } else {
            // bfloat16: widened into scratch first; the kernel rounds Y as it stores it.
            copy_slice(in, x.stride(), rows, b, scratch);
            gemm_small(rows, b, b, scratch, b, 1, r, b, out, y.stride(), false);
          }
        }
        if (streaming) stream_fence();
      });
}

}  // namespace oft::detail::cpu

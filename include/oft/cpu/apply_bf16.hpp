#pragma once
/// \file cpu/apply_bf16.hpp
/// The CPU apply loop for bfloat16 activations with Bf16Arithmetic::DotProduct: Y_i = X_i +
/// X_i D_i per panel and block, D = R - I rounded to bfloat16 and packed in pairs for
/// `vdpbf16ps` (cpu/bf16_dot.hpp). Builds without AVX512_BF16 compile it to nothing: the host
/// class refuses DotProduct there.

#include "panels.hpp"

namespace oft::detail::cpu {

/// Y = X * (I + D) with D's blocks packed as `pairs` (generators x pair_words(b); D of R for
/// apply, of R^T for apply_transposed). Checked by the caller, as apply.
template <class Scalar>
inline void apply_bf16_dot(const Params<Scalar>& p, const ConstMatrixView<bfloat16>& x,
                           const MatrixView<bfloat16>& y, const std::uint32_t* pairs) {
#if defined(OFT_HAVE_BF16_DOT)
  const Index b = p.spec.block_size, words = pair_words(b);
  const bool streaming = y.data() != x.data() && stream_output(p, y);
  for_each_panel(p, x.rows(), kApplyPanelRows, 1,
                 [&](Index first, Index rows, Scalar* scratch, int) {
                   for (Index i = 0; i < p.spec.blocks; ++i) {
                     const std::uint16_t* in = bits(x.row(first) + i * b);
                     std::uint16_t* out = bits(y.row(first) + i * b);
                     if (!p.is_active(i)) {
                       if (in != out) copy_bf16_rows(in, x.stride(), rows, b, out, y.stride());
                       continue;
                     }
                     const std::uint16_t* a = in;
                     Index a_row = x.stride();
                     if (in == out && !rotate_in_place(b)) {
                       // In place with more than one register tile per row: the stores of one tile
                       // would clobber columns another tile still reads.
                       auto* copy = reinterpret_cast<std::uint16_t*>(scratch);
                       copy_bf16_rows(in, x.stride(), rows, b, copy, b);
                       a = copy, a_row = b;
                     }
                     rotate_rows(streaming, rows, b, a, a_row,
                                 pairs + p.spec.generator_of(i) * words, out, y.stride());
                   }
                   if (streaming) stream_fence();
                 });
#else
  (void)p, (void)x, (void)y, (void)pairs;  // unreachable: set_bf16_arithmetic refuses DotProduct
#endif
}

}  // namespace oft::detail::cpu

#pragma once
/// \file quant/fused_gemm.hpp
/// The two products of a linear layer over a quantized frozen base (quant/frozen_base.hpp),
/// without ever holding the whole dequantized W (n_out x d):
///
///   forward   Z = Y W^T   one output panel at a time: W's rows [p, p + P) are dequantized into
///                         a P x d panel, then Z[:, p:p+P] = Y Wp^T (depth d: each Z element is
///                         written once)
///   backward  dY = dZ W   one input panel at a time: W's columns [c, c + C) are dequantized
///                         into an n_out x C panel, then dY[:, c:c+C] = dZ Wp (depth n_out)
///
/// Each panel is dequantized once per call (OpenMP over its rows) and consumed by one GEMM
/// (Eigen's, or the BLAS behind it with EIGEN_USE_BLAS), which streams it into its own packed
/// buffers. The panel is caller-owned scratch: fused_panel_size(base) scalars, so a layer keeps
/// the quantized bytes plus O(panel). Dequantization costs n_out * d lookups per product, against
/// 2 N n_out d flops in the GEMM.
#include <Eigen/Core>
#include <algorithm>

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include "../parameterization.hpp"
#include "../view.hpp"

namespace oft::quant {

/// Rows of W per forward panel and columns per backward panel. The GEMM packs the token-side
/// operand (Y or dZ, N x d) again for every panel, so narrow panels cost passes over it: measured
/// at d = n_out = 4096, N = 2048 on 2 threads (bench_qoft, float panels, docs/quant.md), 128
/// made the two products 1.23-1.31x the single dense GEMMs, 256 1.08x, 512 1.0-1.06x. A 512-wide
/// panel of a d = 4096 layer is 8 MiB of scratch, shared by every layer that uses the workspace.
inline constexpr Index kFusedPanelWidth = 512;

/// Floats of panel scratch that dequant_gemm_nt and dequant_gemm_nn need for `base`.
template <class Base>
Index fused_panel_size(const Base& base) {
  const Index forward = std::min(kFusedPanelWidth, base.rows()) * base.cols();
  const Index backward = base.rows() * std::min(kFusedPanelWidth, base.cols());
  return std::max(forward, backward);
}

namespace detail {

template <class Base, class Scalar>
void dequantize_panel(const Base& base, Index row0, Index nrows, Index col0, Index ncols,
                      Scalar* out) {
  // One row per iteration; threads only when the panel is big enough to pay for the fork.
  OFT_OMP(parallel for schedule(static) if (nrows * ncols >= (Index(1) << 16)))
  for (Index i = 0; i < nrows; ++i)
    base.dequantize(row0 + i, 1, col0, ncols, out + i * ncols, ncols);
}

/// Blocks template deduction, so views convert (MatrixView<T> -> MatrixView<const T>) and the
/// scalar type comes from the panel pointer alone.
template <class T>
struct Same {
  using type = T;
};

template <class Scalar>
using PanelMap = Eigen::Map<const RowMatrix<Scalar>>;
template <class Scalar>
using StridedMap = Eigen::Map<RowMatrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

}  // namespace detail

/// Z = Y W^T, Y: N x d, Z: N x n_out (Z must not overlap Y). `panel`: fused_panel_size(base)
/// scalars. Shapes are the caller's to check (QoftLinear does). Scalar: float, or double (the
/// base's float values widened; references and FD checks).
template <class Base, class Scalar>
void dequant_gemm_nt(const Base& base, typename detail::Same<ConstMatrixView<Scalar>>::type y,
                     typename detail::Same<MatrixView<Scalar>>::type z, Scalar* panel) {
  const Index d = base.cols(), n_out = base.rows();
  if (y.rows() == 0) return;  // no tokens: nothing to write (and Z's data may be null)
  for (Index p = 0; p < n_out; p += kFusedPanelWidth) {
    const Index width = std::min(kFusedPanelWidth, n_out - p);
    detail::dequantize_panel(base, p, width, 0, d, panel);
    detail::StridedMap<Scalar>(z.data() + p, z.rows(), width, Eigen::OuterStride<>(z.stride()))
        .noalias() = y.map() * detail::PanelMap<Scalar>(panel, width, d).transpose();
  }
}

/// dY = dZ W, dZ: N x n_out, dY: N x d (dY must not overlap dZ). `panel`: fused_panel_size(base)
/// scalars.
template <class Base, class Scalar>
void dequant_gemm_nn(const Base& base, typename detail::Same<ConstMatrixView<Scalar>>::type dz,
                     typename detail::Same<MatrixView<Scalar>>::type dy, Scalar* panel) {
  const Index d = base.cols(), n_out = base.rows();
  if (dz.rows() == 0) return;  // no tokens: nothing to write (and dY's data may be null)
  for (Index c = 0; c < d; c += kFusedPanelWidth) {
    const Index width = std::min(kFusedPanelWidth, d - c);
    detail::dequantize_panel(base, 0, n_out, c, width, panel);
    detail::StridedMap<Scalar>(dy.data() + c, dy.rows(), width, Eigen::OuterStride<>(dy.stride()))
        .noalias() = dz.map() * detail::PanelMap<Scalar>(panel, n_out, width);
  }
}

}  // namespace oft::quant

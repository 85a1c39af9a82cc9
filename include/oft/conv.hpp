#pragma once
/// \file conv.hpp
/// oft's convolution OFT (Conv2d, Conv3d, and Conv1d as the case H = kh = 1; any groups): a
/// merge-exact definition.
/// docs/conventions.md section 14 has the derivation; in short:
///
/// The rotation acts on the flattened input of each patch, p in R^(C kh kw), in PyTorch's weight
/// layout order (c, i, j), with the block-diagonal operator of block_orthogonal.hpp (b divides
/// C kh kw). A convolution is z[n, o, y, x] = W_flat[o, :] . p(n, y, x) + bias[o], so with
/// the patches of a batch stacked as rows P (one row per output position):
///
///   unmerged:  Y = P R (BlockOrthogonal::apply), Z = Y W_flat^T + bias
///   merged:    W'_flat = W_flat R^T,             Z = P W'_flat^T + bias
///
/// and P R W_flat^T = P (W_flat R^T)^T: the two are the same map for every input size, padding,
/// stride, dilation and kernel shape, because the rotation is applied to each patch after it is
/// cut out of the image, never to the image itself (which is what makes PEFT's variant inexact:
/// it rotates overlapping patches and folds them back by summation; docs/dialects.md section 7).
///
/// Cost (rows = N Ho Wo output positions, K = C kh kw): the unmerged forward materializes P
/// (rows x K scalars, kh kw times the input) and costs 2 rows K b flops for the rotation on top of
/// the 2 rows K O of the convolution's GEMM; the weight-side path costs 2 O K b flops once per
/// step (or once for good at inference) and then runs the plain convolution. rows > O holds for
/// almost every convolution layer (a 64 x 64 latent has 4096 positions per image), so the
/// weight-side path (merge, or weight_side_backward for training) is the cheaper one; the
/// unmerged path here is the reference that proves the definition, written for clarity (plain
/// loops, im2col, no blocking), not speed.
///
/// Conv3d is the same with patches of C kd kh kw in (c, a, i, j) order (every function has a
/// (d, h, w) overload); Conv1d's weight [O, C, k] is a Conv2d's [O, C, 1, k] on inputs of
/// height 1 (ConvShape::conv1d). With groups = G, a patch is one group's C / G channels
/// (K = (C / G) kd kh kw, the width of W_flat), every group's patch is rotated by the same R,
/// and output channel o of group g = o / (O / G) reads group g's patch: W'_flat = W_flat R^T
/// still (docs/conventions.md section 14).
///
///   oft::conv::Conv2dShape s{/*in*/4, /*out*/8, /*kh*/3, /*kw*/5};
///   oft::RowMatrix<double> w_merged = oft::conv::merge(oft::view(w_flat), rot);
///   oft::conv::forward_unmerged(x.data(), n, h, w, s, oft::view(w_flat), bias, rot, z.data());

#include <algorithm>
#include <vector>

#include "block_orthogonal.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "skew.hpp"
#include "view.hpp"
#include "workspace.hpp"

namespace oft::conv {

namespace detail_conv {
// Keeps a parameter out of template deduction (a nullptr bias must not decide Scalar).
template <class T>
struct Same {
  using type = T;
};
}  // namespace detail_conv
template <class T>
using NonDeduced = typename detail_conv::Same<T>::type;

/// A convolution's geometry, PyTorch's meaning for every field: Conv2d's by default; a Conv3d
/// sets the depth fields too (they follow the 2-D ones so that a Conv2d reads
/// {C, O, kh, kw, ...}), a Conv1d is a Conv2d with kh = 1 on inputs of height 1 (conv1d());
/// `groups` last. Input [N, C, (D,) H, W] and output [N, O, (Do,) Ho, Wo], both contiguous;
/// weight [O, C / groups, (kd,) kh, kw] seen as W_flat [O, K], K = (C / groups) kd kh kw in
/// PyTorch's order (c, a, i, j).
struct ConvShape {
  Index in_channels = 0;
  Index out_channels = 0;
  Index kernel_h = 1;
  Index kernel_w = 1;
  Index stride_h = 1;
  Index stride_w = 1;
  Index pad_h = 0;
  Index pad_w = 0;
  Index dilation_h = 1;
  Index dilation_w = 1;
  Index kernel_d = 1;
  Index stride_d = 1;
  Index pad_d = 0;
  Index dilation_d = 1;
  Index groups = 1;

  /// nn.Conv1d(in, out, k, stride, padding, dilation): its weight [O, C, k] is [O, C, 1, k].
  static ConvShape conv1d(Index in, Index out, Index k, Index stride = 1, Index pad = 0,
                          Index dilation = 1) {
    return {in, out, 1, k, 1, stride, 0, pad, 1, dilation};
  }
  /// nn.Conv3d with one kernel, stride, padding and dilation per axis (d, h, w).
  static ConvShape conv3d(Index in, Index out, Index kd, Index kh, Index kw, Index stride = 1,
                          Index pad = 0, Index dilation = 1) {
    return {in,  out,      kh,       kw, stride, stride, pad,
            pad, dilation, dilation, kd, stride, pad,    dilation};
  }

  /// K = (C / groups) kd kh kw, the length of a patch vector (what the rotation acts on, and
  /// W_flat's width).
  Index patch() const {
    return in_channels / std::max<Index>(groups, 1) * kernel_d * kernel_h * kernel_w;
  }
  /// The width of im2col's rows: every group's patch side by side, C kd kh kw.
  Index patch_row() const { return groups * patch(); }
  /// Do, Ho, Wo for an input of depth d, height h, width w (PyTorch's floor formula).
  Index out_d(Index d) const {
    return (d + 2 * pad_d - dilation_d * (kernel_d - 1) - 1) / stride_d + 1;
  }
  Index out_h(Index h) const {
    return (h + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h + 1;
  }
  Index out_w(Index w) const {
    return (w + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) / stride_w + 1;
  }

  /// Throws std::invalid_argument unless groups is >= 1 and divides both channel counts.
  void check_groups() const {
    detail::require(groups >= 1 && in_channels % groups == 0 && out_channels % groups == 0,
                    "convolution: groups ", groups, " must be >= 1 and divide the channels ",
                    in_channels, " -> ", out_channels);
  }

  /// Throws std::invalid_argument naming the field at fault, or when an input of d x h x w
  /// leaves no output position.
  void check(Index d, Index h, Index w) const {
    detail::require(
        in_channels >= 1 && out_channels >= 1 && kernel_d >= 1 && kernel_h >= 1 && kernel_w >= 1,
        "convolution: channels ", in_channels, " -> ", out_channels, " and kernel ", kernel_d, "x",
        kernel_h, "x", kernel_w, " must be positive");
    detail::require(stride_d >= 1 && stride_h >= 1 && stride_w >= 1 && dilation_d >= 1 &&
                        dilation_h >= 1 && dilation_w >= 1 && pad_d >= 0 && pad_h >= 0 &&
                        pad_w >= 0,
                    "convolution: stride ", stride_d, "x", stride_h, "x", stride_w, ", dilation ",
                    dilation_d, "x", dilation_h, "x", dilation_w, " must be >= 1 and padding ",
                    pad_d, "x", pad_h, "x", pad_w, " >= 0");
    check_groups();
    detail::require(d >= 1 && h >= 1 && w >= 1 && out_d(d) >= 1 && out_h(h) >= 1 && out_w(w) >= 1,
                    "convolution: input ", d, "x", h, "x", w, " with kernel ", kernel_d, "x",
                    kernel_h, "x", kernel_w, " leaves no output");
  }
};

/// The name of the common case; every function below has a 2-D overload (h, w) and a 3-D one
/// (d, h, w).
using Conv2dShape = ConvShape;

namespace detail_conv {
// Calls f(row, k, pixel) for every patch entry k of output row `row` that reads input pixel
// `pixel` (offsets into [n, C, d, h, w]); padding entries are skipped. Rows are (img, z, y, x),
// patch entries (c, a, i, j): PyTorch's weight order.
template <class F>
void for_each_patch_entry(Index n, Index d, Index h, Index w, const ConvShape& s, F&& f) {
  s.check(d, h, w);
  const Index dout = s.out_d(d), hout = s.out_h(h), wout = s.out_w(w);
  for (Index img = 0; img < n; ++img)
    for (Index zo = 0; zo < dout; ++zo)
      for (Index yo = 0; yo < hout; ++yo)
        for (Index xo = 0; xo < wout; ++xo) {
          const Index row = ((img * dout + zo) * hout + yo) * wout + xo;
          for (Index c = 0; c < s.in_channels; ++c)
            for (Index a = 0; a < s.kernel_d; ++a) {
              const Index zi = zo * s.stride_d + a * s.dilation_d - s.pad_d;
              if (zi < 0 || zi >= d) continue;
              for (Index i = 0; i < s.kernel_h; ++i) {
                const Index yi = yo * s.stride_h + i * s.dilation_h - s.pad_h;
                if (yi < 0 || yi >= h) continue;
                for (Index j = 0; j < s.kernel_w; ++j) {
                  const Index xi = xo * s.stride_w + j * s.dilation_w - s.pad_w;
                  if (xi < 0 || xi >= w) continue;
                  f(row, ((c * s.kernel_d + a) * s.kernel_h + i) * s.kernel_w + j,
                    (((img * s.in_channels + c) * d + zi) * h + yi) * w + xi);
                }
              }
            }
        }
}
}  // namespace detail_conv

/// The patches of x [n, C, d, h, w] as rows: row (img, z, y, x) in that order, column
/// (c, a, i, j) in PyTorch's weight order over all C channels (s.patch_row() columns: with
/// groups, group g's patch is columns [g K, (g + 1) K), so the row-major matrix is also the
/// [rows * groups, K] matrix of single patches); padded positions read as zero.
template <class Scalar>
RowMatrix<Scalar> im2col(const Scalar* x, Index n, Index d, Index h, Index w, const ConvShape& s) {
  s.check(d, h, w);
  RowMatrix<Scalar> p =
      RowMatrix<Scalar>::Zero(n * s.out_d(d) * s.out_h(h) * s.out_w(w), s.patch_row());
  detail_conv::for_each_patch_entry(n, d, h, w, s,
                                    [&](Index row, Index k, Index pixel) { p(row, k) = x[pixel]; });
  return p;
}
/// im2col of x [n, C, h, w] (a Conv2d, or a Conv1d with h = 1).
template <class Scalar>
RowMatrix<Scalar> im2col(const Scalar* x, Index n, Index h, Index w, const ConvShape& s) {
  return im2col(x, n, 1, h, w, s);
}

/// The adjoint of im2col: dx [n, C, d, h, w] = the sum of each patch row's entries back into
/// the pixels they were read from (padding entries dropped). Overwrites dx.
template <class Scalar>
void col2im(ConstMatrixView<Scalar> cols, Index n, Index d, Index h, Index w, const ConvShape& s,
            Scalar* dx) {
  s.check(d, h, w);
  detail::require_shape(cols, n * s.out_d(d) * s.out_h(h) * s.out_w(w), s.patch_row(),
                        "convolution patch gradients");
  std::fill(dx, dx + n * s.in_channels * d * h * w, Scalar(0));
  detail_conv::for_each_patch_entry(
      n, d, h, w, s, [&](Index row, Index k, Index pixel) { dx[pixel] += cols(row, k); });
}
/// col2im into dx [n, C, h, w].
template <class Scalar>
void col2im(ConstMatrixView<Scalar> cols, Index n, Index h, Index w, const ConvShape& s,
            Scalar* dx) {
  col2im(cols, n, 1, h, w, s, dx);
}

/// The plain convolution z [n, O, (do,) ho, wo] = conv(x, W) + bias by direct summation over
/// the kernel, output by output, with its own index arithmetic (not im2col's: an independent
/// reference for the tests). `bias`: O values or nullptr.
template <class Scalar>
void conv_direct(const Scalar* x, Index n, Index d, Index h, Index w, const ConvShape& s,
                 ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                 Scalar* z) {
  s.check(d, h, w);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "convolution weight [O, K]");
  const Index dout = s.out_d(d), hout = s.out_h(h), wout = s.out_w(w);
  const Index kd = s.kernel_d, kh = s.kernel_h, kw = s.kernel_w, chans = s.in_channels;
  const Index group_in = chans / s.groups, group_out = s.out_channels / s.groups;
  for (Index img = 0; img < n; ++img)
    for (Index o = 0; o < s.out_channels; ++o) {
      const Index first = o / group_out * group_in;  // the group's first input channel
      for (Index zo = 0; zo < dout; ++zo)
        for (Index yo = 0; yo < hout; ++yo)
          for (Index xo = 0; xo < wout; ++xo) {
            Scalar acc = bias != nullptr ? bias[o] : Scalar(0);
            for (Index c = 0; c < group_in; ++c)
              for (Index a = 0; a < kd; ++a)
                for (Index i = 0; i < kh; ++i)
                  for (Index j = 0; j < kw; ++j) {
                    const Index zi = zo * s.stride_d + a * s.dilation_d - s.pad_d;
                    const Index yi = yo * s.stride_h + i * s.dilation_h - s.pad_h;
                    const Index xi = xo * s.stride_w + j * s.dilation_w - s.pad_w;
                    if (zi < 0 || zi >= d || yi < 0 || yi >= h || xi < 0 || xi >= w) continue;
                    acc += w_flat(o, c * kd * kh * kw + a * kh * kw + i * kw + j) *
                           x[img * chans * d * h * w + (first + c) * d * h * w + zi * h * w +
                             yi * w + xi];
                  }
            z[(((img * s.out_channels + o) * dout + zo) * hout + yo) * wout + xo] = acc;
          }
    }
}
/// conv_direct of x [n, C, h, w].
template <class Scalar>
void conv_direct(const Scalar* x, Index n, Index h, Index w, const ConvShape& s,
                 ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                 Scalar* z) {
  conv_direct(x, n, 1, h, w, s, w_flat, bias, z);
}

namespace detail_conv {
template <class Scalar, class P>
void check_operator(const BlockOrthogonal<Scalar, P>& rot, const ConvShape& s) {
  s.check_groups();
  detail::require(rot.features() == s.patch(), "convolution OFT: the operator rotates ",
                  rot.features(), " features, but a patch of (C/groups)*kd*kh*kw = ",
                  s.in_channels, "/", s.groups, "*", s.kernel_d, "*", s.kernel_h, "*",
                  s.kernel_w, " has ", s.patch(), " (b must divide it)");
}

// The im2col matrix [rows, G K] as the [rows G, K] matrix of single patches (the same memory).
template <class Scalar>
MatrixView<Scalar> single_patches(RowMatrix<Scalar>& cols, Index groups) {
  return MatrixView<Scalar>(cols.data(), cols.rows() * groups, cols.cols() / groups);
}
template <class Scalar>
ConstMatrixView<Scalar> single_patches(const RowMatrix<Scalar>& cols, Index groups) {
  return ConstMatrixView<Scalar>(cols.data(), cols.rows() * groups, cols.cols() / groups);
}

// Z_rows [rows, O] = each group's patches times its output channels' rows of W_flat.
template <class Scalar>
RowMatrix<Scalar> grouped_product(const RowMatrix<Scalar>& y, ConstMatrixView<Scalar> w_flat,
                                  const ConvShape& s) {
  const Index k = s.patch(), group_out = s.out_channels / s.groups;
  RowMatrix<Scalar> rows(y.rows(), s.out_channels);
  for (Index g = 0; g < s.groups; ++g)
    rows.middleCols(g * group_out, group_out).noalias() =
        y.middleCols(g * k, k) * w_flat.map().middleRows(g * group_out, group_out).transpose();
  return rows;
}

// Rows (img, position) x O  <->  [n, O, positions].
template <class Scalar>
void rows_to_nchw(const RowMatrix<Scalar>& rows, Index n, Index hw, Index o, Scalar* z) {
  for (Index img = 0; img < n; ++img)
    for (Index c = 0; c < o; ++c)
      for (Index q = 0; q < hw; ++q) z[(img * o + c) * hw + q] = rows(img * hw + q, c);
}
template <class Scalar>
RowMatrix<Scalar> nchw_to_rows(const Scalar* z, Index n, Index hw, Index o) {
  RowMatrix<Scalar> rows(n * hw, o);
  for (Index img = 0; img < n; ++img)
    for (Index c = 0; c < o; ++c)
      for (Index q = 0; q < hw; ++q) rows(img * hw + q, c) = z[(img * o + c) * hw + q];
  return rows;
}
}  // namespace detail_conv

/// The merged weight W'_flat = W_flat R^T ([O, K]; reshape to [O, C, (kd,) kh, kw]).
template <class Scalar, class P>
RowMatrix<Scalar> merge(ConstMatrixView<NonDeduced<Scalar>> w_flat,
                        const BlockOrthogonal<Scalar, P>& rot) {
  detail::require(w_flat.cols() == rot.features(), "convolution OFT merge: the weight has ",
                  w_flat.cols(), " flattened input features, the operator rotates ", rot.features(),
                  " (b must divide C*kd*kh*kw)");
  RowMatrix<Scalar> out(w_flat.rows(), w_flat.cols());
  rot.apply_transposed(w_flat, view(out));
  return out;
}

/// The unmerged forward: z [n, O, (do,) ho, wo] = (im2col(x) R) W_flat^T + bias, x
/// [n, C, d, h, w]. `bias`: O values or nullptr. Equal to conv_direct with merge(w_flat, rot)
/// up to rounding (the definition).
template <class Scalar, class P>
void forward_unmerged(const Scalar* x, Index n, Index d, Index h, Index w, const ConvShape& s,
                      ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                      const BlockOrthogonal<Scalar, P>& rot, Scalar* z) {
  detail_conv::check_operator(rot, s);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "convolution weight [O, K]");
  RowMatrix<Scalar> p = im2col(x, n, d, h, w, s);
  const MatrixView<Scalar> patches = detail_conv::single_patches(p, s.groups);
  rot.apply(patches, patches);
  RowMatrix<Scalar> rows = detail_conv::grouped_product(p, w_flat, s);
  if (bias != nullptr)
    for (Index o = 0; o < s.out_channels; ++o) rows.col(o).array() += bias[o];
  detail_conv::rows_to_nchw(rows, n, s.out_d(d) * s.out_h(h) * s.out_w(w), s.out_channels, z);
}
/// forward_unmerged of x [n, C, h, w].
template <class Scalar, class P>
void forward_unmerged(const Scalar* x, Index n, Index h, Index w, const ConvShape& s,
                      ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                      const BlockOrthogonal<Scalar, P>& rot, Scalar* z) {
  forward_unmerged(x, n, 1, h, w, s, w_flat, bias, rot, z);
}

/// The vector-Jacobian product of forward_unmerged for dz [n, O, (do,) ho, wo]: dx
/// [n, C, d, h, w] (nullptr to skip) through dY = dZ W_flat (group by group), dP = dY R^T and
/// col2im; dtheta (empty view to skip) through BlockOrthogonal::backward on (P, dY), every
/// group's patches as rows of one call. The frozen W_flat and bias get none.
template <class Scalar, class P>
void backward_unmerged(const Scalar* x, const Scalar* dz, Index n, Index d, Index h, Index w,
                       const ConvShape& s, ConstMatrixView<NonDeduced<Scalar>> w_flat,
                       const BlockOrthogonal<Scalar, P>& rot, NonDeduced<Scalar>* dx,
                       GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) {
  detail_conv::check_operator(rot, s);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "convolution weight [O, K]");
  const RowMatrix<Scalar> p = im2col(x, n, d, h, w, s);
  const RowMatrix<Scalar> dzr =
      detail_conv::nchw_to_rows(dz, n, s.out_d(d) * s.out_h(h) * s.out_w(w), s.out_channels);
  const Index k = s.patch(), group_out = s.out_channels / s.groups;
  RowMatrix<Scalar> dy(dzr.rows(), s.patch_row());
  for (Index g = 0; g < s.groups; ++g)
    dy.middleCols(g * k, k).noalias() = dzr.middleCols(g * group_out, group_out) *
                                        w_flat.map().middleRows(g * group_out, group_out);
  RowMatrix<Scalar> dp(dy.rows(), dy.cols());
  rot.backward(detail_conv::single_patches(p, s.groups),
               detail_conv::single_patches(dy, s.groups),
               dx != nullptr ? detail_conv::single_patches(dp, s.groups) : MatrixView<Scalar>{},
               dtheta, workspace);
  if (dx != nullptr) col2im(ConstMatrixView<Scalar>(view(dp)), n, d, h, w, s, dx);
}
/// backward_unmerged for x [n, C, h, w].
template <class Scalar, class P>
void backward_unmerged(const Scalar* x, const Scalar* dz, Index n, Index h, Index w,
                       const ConvShape& s, ConstMatrixView<NonDeduced<Scalar>> w_flat,
                       const BlockOrthogonal<Scalar, P>& rot, NonDeduced<Scalar>* dx,
                       GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) {
  backward_unmerged(x, dz, n, 1, h, w, s, w_flat, rot, dx, dtheta, workspace);
}

/// dtheta by the weight side, from the gradient dW' = dL/dW'_flat of the merged weight
/// ([O, K]; for a convolution it is dZ_rows^T P (group by group), what autograd gives a conv
/// weight):
/// W' = W_flat R^T, so dL/dR_i = dW'_i^T W_i per block of columns, handed to
/// BlockOrthogonal::backward_from_block_gradients. The same dtheta as backward_unmerged
/// (tests/conv checks it) at 2 O K b flops instead of 2 N Ho Wo K b.
template <class Scalar, class P>
void weight_side_backward(ConstMatrixView<NonDeduced<Scalar>> w_flat,
                          ConstMatrixView<NonDeduced<Scalar>> d_merged,
                          const BlockOrthogonal<Scalar, P>& rot, GeneratorView<Scalar> dtheta) {
  detail::require(w_flat.cols() == rot.features(), "Conv2d OFT: the weight has ", w_flat.cols(),
                  " flattened input features, the operator rotates ", rot.features());
  detail::require_shape(d_merged, w_flat.rows(), w_flat.cols(), "dL/dW'");
  const Index b = rot.spec().block_size, blocks = rot.spec().blocks;
  RowMatrix<Scalar> g(blocks * b, b);
  for (Index i = 0; i < blocks; ++i)
    g.block(i * b, 0, b, b) =
        d_merged.map().middleCols(i * b, b).transpose() * w_flat.map().middleCols(i * b, b);
  rot.backward_from_block_gradients(view(g), dtheta);
}

/// OneTrainer's Conv2d OFT (onetrainer.hpp) merges W_flat + s W_flat (R - I): at s = 1 it is
/// W_flat R, the same flattened input and order as here, with R where oft has R^T. Every R the
/// loader can build is a function of Q that commutes with transposition (Neumann polynomial,
/// CANS polar factor of (I + Q) squared, spectral clip, the 1 / (2 sqrt(b - 1)) scale), and
/// R(Q)^T = R(-Q) for each, so oft's generators are OneTrainer's negated: this maps one to
/// the other in place, both ways. Exact for the merged weight at s = 1; OneTrainer's s != 1 is
/// a linear blend, which no rotation reproduces.
template <class Scalar>
void negate_generators(GeneratorView<Scalar> theta) {
  for (Index g = 0; g < theta.count(); ++g)
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = -theta.row(g)[k];
}

}  // namespace oft::conv

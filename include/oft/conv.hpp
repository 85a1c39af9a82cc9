#pragma once
/// \file conv.hpp
/// oft's convolution OFT (Conv2d; Conv1d is the case H = kh = 1): a merge-exact definition.
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

/// A Conv2d's geometry (groups = 1), PyTorch's meaning for every field. Input [N, C, H, W] and
/// output [N, O, Ho, Wo], both contiguous; weight [O, C, kh, kw] seen as W_flat [O, C kh kw].
struct Conv2dShape {
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

  /// K = C kh kw, the length of a patch vector (what the rotation acts on).
  Index patch() const { return in_channels * kernel_h * kernel_w; }
  /// Ho for an input of height h (PyTorch's floor formula).
  Index out_h(Index h) const {
    return (h + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h + 1;
  }
  Index out_w(Index w) const {
    return (w + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) / stride_w + 1;
  }

  /// Throws std::invalid_argument naming the field at fault, or when an input of h x w leaves
  /// no output position.
  void check(Index h, Index w) const {
    detail::require(in_channels >= 1 && out_channels >= 1 && kernel_h >= 1 && kernel_w >= 1,
                    "Conv2d: channels ", in_channels, " -> ", out_channels, " and kernel ",
                    kernel_h, "x", kernel_w, " must be positive");
    detail::require(stride_h >= 1 && stride_w >= 1 && dilation_h >= 1 && dilation_w >= 1 &&
                        pad_h >= 0 && pad_w >= 0,
                    "Conv2d: stride ", stride_h, "x", stride_w, ", dilation ", dilation_h, "x",
                    dilation_w, " must be >= 1 and padding ", pad_h, "x", pad_w, " >= 0");
    detail::require(h >= 1 && w >= 1 && out_h(h) >= 1 && out_w(w) >= 1, "Conv2d: input ", h, "x", w,
                    " with kernel ", kernel_h, "x", kernel_w, " leaves no output");
  }
};

/// The patches of x [n, C, h, w] as rows: row (img, y, x) in that order, column (c, i, j) in
/// PyTorch's weight order; padded positions read as zero.
template <class Scalar>
RowMatrix<Scalar> im2col(const Scalar* x, Index n, Index h, Index w, const Conv2dShape& s) {
  s.check(h, w);
  const Index ho = s.out_h(h), wo = s.out_w(w);
  RowMatrix<Scalar> p = RowMatrix<Scalar>::Zero(n * ho * wo, s.patch());
  for (Index img = 0; img < n; ++img)
    for (Index y = 0; y < ho; ++y)
      for (Index xo = 0; xo < wo; ++xo) {
        Scalar* row = p.row((img * ho + y) * wo + xo).data();
        for (Index c = 0; c < s.in_channels; ++c)
          for (Index i = 0; i < s.kernel_h; ++i) {
            const Index yi = y * s.stride_h + i * s.dilation_h - s.pad_h;
            if (yi < 0 || yi >= h) continue;
            for (Index j = 0; j < s.kernel_w; ++j) {
              const Index xi = xo * s.stride_w + j * s.dilation_w - s.pad_w;
              if (xi < 0 || xi >= w) continue;
              row[(c * s.kernel_h + i) * s.kernel_w + j] =
                  x[((img * s.in_channels + c) * h + yi) * w + xi];
            }
          }
      }
  return p;
}

/// The adjoint of im2col: dx [n, C, h, w] = the sum of each patch row's entries back into the
/// pixels they were read from (padding entries dropped). Overwrites dx.
template <class Scalar>
void col2im(ConstMatrixView<Scalar> cols, Index n, Index h, Index w, const Conv2dShape& s,
            Scalar* dx) {
  s.check(h, w);
  const Index ho = s.out_h(h), wo = s.out_w(w);
  detail::require_shape(cols, n * ho * wo, s.patch(), "Conv2d patch gradients");
  std::fill(dx, dx + n * s.in_channels * h * w, Scalar(0));
  for (Index img = 0; img < n; ++img)
    for (Index y = 0; y < ho; ++y)
      for (Index xo = 0; xo < wo; ++xo) {
        const Index r = (img * ho + y) * wo + xo;
        for (Index c = 0; c < s.in_channels; ++c)
          for (Index i = 0; i < s.kernel_h; ++i) {
            const Index yi = y * s.stride_h + i * s.dilation_h - s.pad_h;
            if (yi < 0 || yi >= h) continue;
            for (Index j = 0; j < s.kernel_w; ++j) {
              const Index xi = xo * s.stride_w + j * s.dilation_w - s.pad_w;
              if (xi < 0 || xi >= w) continue;
              dx[((img * s.in_channels + c) * h + yi) * w + xi] +=
                  cols(r, (c * s.kernel_h + i) * s.kernel_w + j);
            }
          }
      }
}

/// The plain convolution z [n, O, ho, wo] = conv(x, W) + bias by direct summation over the
/// kernel (no im2col: an independent reference for the tests). `bias`: O values or nullptr.
template <class Scalar>
void conv2d_direct(const Scalar* x, Index n, Index h, Index w, const Conv2dShape& s,
                   ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                   Scalar* z) {
  s.check(h, w);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "Conv2d weight [O, C*kh*kw]");
  const Index ho = s.out_h(h), wo = s.out_w(w);
  for (Index img = 0; img < n; ++img)
    for (Index o = 0; o < s.out_channels; ++o)
      for (Index y = 0; y < ho; ++y)
        for (Index xo = 0; xo < wo; ++xo) {
          Scalar acc = bias != nullptr ? bias[o] : Scalar(0);
          for (Index c = 0; c < s.in_channels; ++c)
            for (Index i = 0; i < s.kernel_h; ++i)
              for (Index j = 0; j < s.kernel_w; ++j) {
                const Index yi = y * s.stride_h + i * s.dilation_h - s.pad_h;
                const Index xi = xo * s.stride_w + j * s.dilation_w - s.pad_w;
                if (yi < 0 || yi >= h || xi < 0 || xi >= w) continue;
                acc += w_flat(o, (c * s.kernel_h + i) * s.kernel_w + j) *
                       x[((img * s.in_channels + c) * h + yi) * w + xi];
              }
          z[((img * s.out_channels + o) * ho + y) * wo + xo] = acc;
        }
}

namespace detail_conv {
template <class Scalar, class P>
void check_operator(const BlockOrthogonal<Scalar, P>& rot, const Conv2dShape& s) {
  detail::require(rot.features() == s.patch(), "Conv2d OFT: the operator rotates ", rot.features(),
                  " features, but a patch of C*kh*kw = ", s.in_channels, "*", s.kernel_h, "*",
                  s.kernel_w, " has ", s.patch(), " (b must divide C*kh*kw)");
}

// Rows (img, y, x) x O  <->  NCHW [n, O, ho, wo].
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

/// The merged weight W'_flat = W_flat R^T ([O, C kh kw]; reshape to [O, C, kh, kw]).
template <class Scalar, class P>
RowMatrix<Scalar> merge(ConstMatrixView<NonDeduced<Scalar>> w_flat,
                        const BlockOrthogonal<Scalar, P>& rot) {
  detail::require(w_flat.cols() == rot.features(), "Conv2d OFT merge: the weight has ",
                  w_flat.cols(), " flattened input features, the operator rotates ", rot.features(),
                  " (b must divide C*kh*kw)");
  RowMatrix<Scalar> out(w_flat.rows(), w_flat.cols());
  rot.apply_transposed(w_flat, view(out));
  return out;
}

/// The unmerged forward: z [n, O, ho, wo] = (im2col(x) R) W_flat^T + bias. `bias`: O values or
/// nullptr. Equal to conv2d_direct with merge(w_flat, rot) up to rounding (the definition).
template <class Scalar, class P>
void forward_unmerged(const Scalar* x, Index n, Index h, Index w, const Conv2dShape& s,
                      ConstMatrixView<NonDeduced<Scalar>> w_flat, const NonDeduced<Scalar>* bias,
                      const BlockOrthogonal<Scalar, P>& rot, Scalar* z) {
  detail_conv::check_operator(rot, s);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "Conv2d weight [O, C*kh*kw]");
  RowMatrix<Scalar> p = im2col(x, n, h, w, s);
  rot.apply(view(p), view(p));
  RowMatrix<Scalar> rows = p * w_flat.map().transpose();
  if (bias != nullptr)
    for (Index o = 0; o < s.out_channels; ++o) rows.col(o).array() += bias[o];
  detail_conv::rows_to_nchw(rows, n, s.out_h(h) * s.out_w(w), s.out_channels, z);
}

/// The vector-Jacobian product of forward_unmerged for dz [n, O, ho, wo]: dx [n, C, h, w]
/// (nullptr to skip) through dY = dZ W_flat, dP = dY R^T and col2im; dtheta (empty view to
/// skip) through BlockOrthogonal::backward on (P, dY). The frozen W_flat and bias get none.
template <class Scalar, class P>
void backward_unmerged(const Scalar* x, const Scalar* dz, Index n, Index h, Index w,
                       const Conv2dShape& s, ConstMatrixView<NonDeduced<Scalar>> w_flat,
                       const BlockOrthogonal<Scalar, P>& rot, NonDeduced<Scalar>* dx,
                       GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) {
  detail_conv::check_operator(rot, s);
  detail::require_shape(w_flat, s.out_channels, s.patch(), "Conv2d weight [O, C*kh*kw]");
  const RowMatrix<Scalar> p = im2col(x, n, h, w, s);
  const RowMatrix<Scalar> dzr =
      detail_conv::nchw_to_rows(dz, n, s.out_h(h) * s.out_w(w), s.out_channels);
  const RowMatrix<Scalar> dy = dzr * w_flat.map();
  RowMatrix<Scalar> dp(dy.rows(), dy.cols());
  rot.backward(view(p), view(dy), dx != nullptr ? view(dp) : MatrixView<Scalar>{}, dtheta,
               workspace);
  if (dx != nullptr) col2im(ConstMatrixView<Scalar>(view(dp)), n, h, w, s, dx);
}

/// dtheta by the weight side, from the gradient dW' = dL/dW'_flat of the merged weight
/// ([O, C kh kw]; for a convolution it is dZ_rows^T P, what autograd gives a conv weight):
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

#pragma once
/// \file cpu/butterfly.hpp
/// The CPU butterfly operator (BOFT): M = B_{m-1} ... B_0, B_i = P_i D_i P_i^T, applied to the
/// rows of X as m block-diagonal passes, each one of this backend's BlockOrthogonal operators,
/// with the features permuted between passes (butterfly_spec.hpp has the layout). The d x d
/// matrix is never formed.
///
/// A permutation moves runs of h = b/2 contiguous features (every butterfly order keeps such
/// runs together). apply and apply_transposed take X a tile of rows at a time through a
/// per-thread buffer (2^16 scalars), where the tile goes through every factor and permutation
/// in cache: X is read and Y written once, and no N x d workspace is needed. backward recomputes
/// the forward pass the same way and keeps the input of each factor, m N d scalars of the
/// caller's workspace, so that each factor's exact backward runs on its own input; nothing is
/// stored between calls.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "../butterfly_spec.hpp"
#include "../detail/thread_scratch.hpp"
#include "../errors.hpp"
#include "../index.hpp"
#include "../skew.hpp"
#include "../view.hpp"
#include "../workspace.hpp"
#include "bf16.hpp"
#include "block_orthogonal.hpp"

namespace oft {

template <class Scalar_, class Parameterization_>
class Butterfly<Scalar_, Parameterization_, cpu> {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Factor = BlockOrthogonal<Scalar, Parameterization, cpu>;

  /// Operator for `spec` (validated) with identity blocks until set_generators is called.
  explicit Butterfly(const ButterflySpec& spec, Parameterization parameterization = {})
      : spec_(checked(spec)),
        factors_(make_factors(spec, parameterization)),
        staged_(factors_) {
    for (Index i = 0; i < spec_.factors; ++i) positions_.push_back(spec_.positions(i));
  }

  const ButterflySpec& spec() const { return spec_; }
  Index features() const { return spec_.features(); }
  /// Factor i's block-diagonal operator D_i (blocks in its gathered order).
  const Factor& factor(Index i) const {
    detail::require(i >= 0 && i < spec_.factors, "butterfly factor ", i, " out of range [0, ",
                    spec_.factors, ")");
    return factors_[static_cast<std::size_t>(i)];
  }

  /// theta: m N packed generators (rows i N .. i N + N - 1 are factor i's blocks, PEFT's
  /// boft_R[i, g] order). Validates shape and finiteness first; a refusal by a factor leaves the
  /// operator unchanged.
  void set_generators(GeneratorView<const Scalar> theta) {
    check_generators(theta, "theta");
    theta.require_finite("theta");
    for (Index i = 0; i < spec_.factors; ++i)
      staged_[static_cast<std::size_t>(i)].set_generators(factor_rows(theta, i));
    // Each factor's set_generators overwrites all its blocks, so the staging copy needs no
    // refresh: after the swap it holds the previous generators, all of which the next call
    // replaces.
    std::swap(factors_, staged_);
  }

  /// Y = X M (N x d, row-major, any row stride >= d). `y` may be `x` (in place); partial overlap
  /// is refused.
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const { apply_with(x, y); }

  /// Y = X M^T = X B_0^T ... B_{m-1}^T: the inverse of apply (M is orthogonal when every block
  /// is). W0 M^T, the merged weight, is apply_transposed of W0's rows.
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const { apply_transposed_with(x, y); }

  /// bfloat16 activations (float operators only): each tile of X is widened exactly to float
  /// as it is gathered, goes through every factor in float, and each output is rounded once
  /// (nearest even) as it is scattered, with one factor too (the block operator's own bfloat16
  /// path may use vdpbf16ps, which rounds R - I to bfloat16; docs/bf16.md).
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const { apply_with(x, y); }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    apply_transposed_with(x, y);
  }

  /// Y = X M^-1 (M^-T when `transposed`), exact also when the blocks are not orthogonal (a
  /// truncated Neumann R): each factor's apply_inverse, an LU solve per block and call, for
  /// merging and unmerging rather than training loops.
  void apply_inverse(ConstMatrixView<Scalar> x, MatrixView<Scalar> y, bool transposed = false) const {
    if (!transposed) {
      walk_backwards(x, y, [](const Factor& f, MatrixView<Scalar> v) { f.apply_inverse(v, v); });
      return;
    }
    // X M^-T = X B_{m-1}^-T ... B_0^-T: the order of apply. Whole matrices, not tiles: each
    // factor's apply_inverse factorizes its blocks once per call.
    check_apply(x, y);
    const Index last = spec_.factors - 1;
    permute(x, kNatural, y, last);
    for (Index i = last; i >= 0; --i) {
      factors_[static_cast<std::size_t>(i)].apply_inverse(y, y, true);
      if (i > 0) permute(y, i, y, i - 1);
    }
  }

  /// Scalars of workspace backward needs for N = `rows` tokens: the m factor inputs and the
  /// running gradient ((m + 1) N d) and the factors' generator-gradient scratch.
  Index workspace_size(Index rows) const {
    return (spec_.factors + 1) * rows * spec_.features() + factors_.front().workspace_size();
  }

  /// Vector-Jacobian product of Y = X M(theta) for the upstream dY: dX = dY M^T and
  /// dtheta = dL/dtheta (m N packed rows, overwritten). Pass {} to skip either. dX may be dY or
  /// X (in place). dtheta and the workspace must not overlap X, dY, dX or each other.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    const Index count = workspace_size(x.rows());
    backward_with(x, dy, dx, dtheta, workspace.reserve(count), count);
  }

  /// Same with a raw workspace of `workspace_count` >= workspace_size(N) scalars (only used,
  /// and so only checked, when dtheta is wanted).
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    backward_with(x, dy, dx, dtheta, workspace, workspace_count);
  }

  /// backward with bfloat16 activations X, dY, dX (float operators only): the factor inputs
  /// and the running gradient are kept in float in the workspace, dX is rounded once.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    const Index count = workspace_size(x.rows());
    backward_with(x, dy, dx, dtheta, workspace.reserve(count), count);
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    backward_with(x, dy, dx, dtheta, workspace, workspace_count);
  }

  /// R_{i,g}, block g of factor i (b x b).
  SquareMatrix<Scalar> block(Index i, Index g) const { return factor(i).block(g); }

  /// The whole d x d matrix M (a slow reference: M = I M, row by row).
  RowMatrix<Scalar> dense() const {
    RowMatrix<Scalar> m = RowMatrix<Scalar>::Identity(features(), features());
    apply(view(m), view(m));
    return m;
  }

  /// The largest ||R^T R - I|| over every block of every factor (Spectral or Frobenius).
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    double worst = 0;
    for (const Factor& f : factors_) worst = std::max(worst, f.orthogonality_error(norm));
    return worst;
  }

  /// Throws std::invalid_argument unless `theta` has m N rows of b(b-1)/2.
  void check_generators(GeneratorView<const Scalar> theta, const char* name) const {
    detail::require(theta.block_size() == spec_.block_size && theta.count() == spec_.generators(),
                    name, " has ", theta.count(), " generators of block size ", theta.block_size(),
                    ", expected m N = ", spec_.factors, " x ", spec_.blocks, " = ",
                    spec_.generators(), " of b=", spec_.block_size);
  }

 private:
  template <class Act>
  void apply_with(ConstMatrixView<Act> x, MatrixView<Act> y) const {
    check_apply(x, y);
    if constexpr (std::is_same_v<Act, Scalar>) {
      if (spec_.factors == 1) {  // plain OFT: no permutation, so no copy of X either
        factors_.front().apply(x, y);
        return;
      }
    }
    // Factor m-1 first: X M = X B_{m-1} ... B_0.
    through_tiles(x, y, /*descending=*/true, [](const Factor& f, MatrixView<Scalar> v) { f.apply(v, v); });
  }

  template <class Act>
  void apply_transposed_with(ConstMatrixView<Act> x, MatrixView<Act> y) const {
    check_apply(x, y);
    through_tiles(x, y, /*descending=*/false,
                  [](const Factor& f, MatrixView<Scalar> v) { f.apply_transposed(v, v); });
  }

  template <class Act>
  void backward_with(ConstMatrixView<Act> x, ConstMatrixView<Act> dy, MatrixView<Act> dx,
                     GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    const Index rows = x.rows(), d = spec_.features();
    const bool want_dx = detail::require_backward_activations(x, dy, dx, d);
    if (dtheta.data() == nullptr) {  // dX alone: dY M^T
      if (want_dx) apply_transposed_with(dy, dx);
      return;
    }
    check_generators(GeneratorView<const Scalar>(dtheta), "dtheta");
    detail::require(workspace != nullptr && workspace_count >= workspace_size(rows),
                    "butterfly backward workspace has ", workspace_count, " scalars, needs ",
                    workspace_size(rows), " for N=", rows);
    const Index plane = rows * d, m = spec_.factors;
    const auto input = [&](Index i) { return MatrixView<Scalar>(workspace + i * plane, rows, d, d); };
    const MatrixView<Scalar> g(workspace + m * plane, rows, d, d);  // the running gradient
    Scalar* scratch = workspace + (m + 1) * plane;
    const Index scratch_count = workspace_count - (m + 1) * plane;
    // The forward pass, keeping each factor's input in its own gathered order. Tile by tile,
    // so that each input is written once and read back from cache.
    const Index tile_rows = rows_per_tile();
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index start = 0; start < rows; start += tile_rows) {
      const Index n = std::min(tile_rows, rows - start);
      Scalar* buffer = detail::thread_buffer<Scalar, detail::ScratchSlot::ButterflyTile>(tile_rows * d);
      const MatrixView<Scalar> tile(buffer, n, d, d);
      const auto rows_of = [&](Index i) { return MatrixView<Scalar>(input(i).row(start), n, d, d); };
      permute_rows(x.row(start), x.stride(), n, kNatural, rows_of(m - 1).data(), d, m - 1);
      for (Index i = m - 1; i > 0; --i) {
        factors_[static_cast<std::size_t>(i)].apply(rows_of(i), tile);
        permute_rows(buffer, d, n, i, rows_of(i - 1).data(), d, i - 1);
      }
    }
    // Back through the factors in the reverse of their application, factor 0 first, each on its
    // own input; the gradient moves from factor i's order to factor i + 1's, and at the end to
    // the natural order, in dX.
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index n = 0; n < rows; ++n) detail::cpu::convert_row(dy.row(n), d, g.row(n));
    for (Index i = 0; i < m; ++i) {
      factors_[static_cast<std::size_t>(i)].backward(input(i), g, g, factor_rows(dtheta, i),
                                                   scratch, scratch_count);
      if (i + 1 < m) permute(g, i, g, i + 1);
    }
    if (want_dx) {
      OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
      for (Index n = 0; n < rows; ++n) permute_rows(g.row(n), d, 1, m - 1, dx.row(n), d, kNatural);
    }
  }

  /// The natural feature order (factor 0's order is the natural one too).
  static constexpr Index kNatural = 0;

  static const ButterflySpec& checked(const ButterflySpec& spec) {
    spec.validate();
    return spec;
  }

  static std::vector<Factor> make_factors(const ButterflySpec& spec, const Parameterization& p) {
    const BlockSpec blocks = BlockSpec::from_features(spec.features(), spec.block_size);
    return std::vector<Factor>(static_cast<std::size_t>(spec.factors), Factor(blocks, p));
  }

  template <class Element>
  GeneratorView<Element> factor_rows(const GeneratorView<Element>& theta, Index i) const {
    return GeneratorView<Element>(theta.row(i * spec_.blocks), spec_.blocks, spec_.block_size,
                                  theta.stride());
  }

  template <class Act>
  void check_apply(const ConstMatrixView<Act>& x, const MatrixView<Act>& y) const {
    detail::require(x.cols() == spec_.features(), "X has ", x.cols(), " columns, expected d=",
                    spec_.features(), " (m=", spec_.factors, " factors of N=", spec_.blocks,
                    " blocks of b=", spec_.block_size, ")");
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
  }

  /// Y = X B_0^-1 ... B_{m-1}^-1 through whole matrices (each factor's apply_inverse factorizes
  /// its blocks once per call, so tiles would repeat that work): factor 0 first, in the natural
  /// order, ending back in it.
  template <class Step>
  void walk_backwards(ConstMatrixView<Scalar> x, MatrixView<Scalar> y, Step step) const {
    check_apply(x, y);
    const Index m = spec_.factors;
    if (!detail::same_memory(x, y)) copy(x, y);
    for (Index i = 0; i < m; ++i) {
      step(factors_[static_cast<std::size_t>(i)], y);
      permute(y, i, y, i + 1 < m ? i + 1 : kNatural);
    }
  }

  /// Y = X with `step` applied for every factor, m-1 down to 0 (`descending`) or 0 up to m-1,
  /// each in its own gathered order. A tile of rows is gathered from X into a per-thread buffer,
  /// goes through every factor and permutation in cache, and is scattered into Y: X is read
  /// and Y written once, whatever m is. Y may be X (each tile is read before it is written).
  template <class Act, class Step>
  void through_tiles(ConstMatrixView<Act> x, MatrixView<Act> y, bool descending, Step step) const {
    const Index rows = x.rows(), d = spec_.features(), m = spec_.factors, tile_rows = rows_per_tile();
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index start = 0; start < rows; start += tile_rows) {
      const Index n = std::min(tile_rows, rows - start);
      Scalar* buffer = detail::thread_buffer<Scalar, detail::ScratchSlot::ButterflyTile>(2 * tile_rows * d);
      Scalar* other = buffer + tile_rows * d;
      Index order = descending ? m - 1 : 0;
      permute_rows(x.row(start), x.stride(), n, kNatural, buffer, d, order);
      for (Index k = 0; k < m; ++k) {
        step(factors_[static_cast<std::size_t>(order)], MatrixView<Scalar>(buffer, n, d, d));
        const Index next = descending ? order - 1 : order + 1;
        if (next < 0 || next >= m) {
          permute_rows(buffer, d, n, order, y.row(start), y.stride(), kNatural);
        } else {
          permute_rows(buffer, d, n, order, other, d, next);
          std::swap(buffer, other);
          order = next;
        }
      }
    }
  }

  /// Rows per tile: 2^16 scalars (256 KiB of floats), at least one row.
  Index rows_per_tile() const { return std::max<Index>(1, kParallelElements / spec_.features()); }

  /// `rows` rows from `src` (row stride `src_stride`, features in factor `from`'s order) to `dst`
  /// (stride `dst_stride`, factor `to`'s order); src and dst must not overlap.
  /// Converts float <-> bfloat16 on the way when the two element types differ.
  template <class In, class Out>
  void permute_rows(const In* src, Index src_stride, Index rows, Index from, Out* dst, Index dst_stride,
                    Index to) const {
    const Index d = spec_.features(), run = spec_.block_size / 2;
    if (from == to) {
      for (Index n = 0; n < rows; ++n) detail::cpu::convert_row(src + n * src_stride, d, dst + n * dst_stride);
      return;
    }
    const Index* from_position = positions_[static_cast<std::size_t>(from)].data();
    const Index* to_position = positions_[static_cast<std::size_t>(to)].data();
    for (Index n = 0; n < rows; ++n) {
      const In* in = src + n * src_stride;
      Out* out = dst + n * dst_stride;
      for (Index f = 0; f < d; f += run)
        detail::cpu::convert_row(in + from_position[f], run, out + to_position[f]);
    }
  }

  /// dst = src with the features moved from factor `from`'s gathered order to factor `to`'s
  /// (kNatural = 0 is the natural order). dst may be src (in place, through a row buffer).
  void permute(ConstMatrixView<Scalar> src, Index from, MatrixView<Scalar> dst, Index to) const {
    if (from == to) {
      if (!detail::same_memory(src, dst)) copy(src, dst);
      return;
    }
    const Index d = spec_.features(), rows = src.rows();
    const bool in_place = detail::same_memory(src, dst);
    OFT_OMP(parallel for schedule(static) if (rows * d >= kParallelElements))
    for (Index n = 0; n < rows; ++n) {
      const Scalar* in = src.row(n);
      if (in_place) {
        Scalar* buffer = detail::thread_buffer<Scalar, detail::ScratchSlot::ButterflyRow>(d);
        std::copy(in, in + d, buffer);
        in = buffer;
      }
      permute_rows(in, d, 1, from, dst.row(n), d, to);
    }
  }

  static void copy(ConstMatrixView<Scalar> src, MatrixView<Scalar> dst) {
    for (Index n = 0; n < src.rows(); ++n) std::copy(src.row(n), src.row(n) + src.cols(), dst.row(n));
  }

  /// Below this many elements a permutation runs on one thread (the copy is memory-bound).
  static constexpr Index kParallelElements = Index{1} << 16;

  ButterflySpec spec_;
  std::vector<Factor> factors_;
  std::vector<Factor> staged_;
  std::vector<std::vector<Index>> positions_;  // positions_[i][f]: where factor i's order puts f
};

}  // namespace oft

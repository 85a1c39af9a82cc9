#pragma once
/// \file block_orthogonal.hpp
/// Block-diagonal orthogonal operator R = diag(R_1, ..., R_r), each R_i = f(Q_i) for a
/// parameterization f (cayley.hpp, cayley_neumann.hpp, exponential.hpp), applied to
/// activations without ever forming the d x d matrix (OFTv2's input-centric form).
///
/// Orientation (SPEC section 2, PEFT's): `apply` computes Y = X * R, i.e. for block i the N x b
/// slice X_i becomes X_i * R_i (a column vector x becomes R^T x).
///
///   BlockOrthogonal<float, CayleyNeumann> rot(BlockSpec::from_features(4096, 32), CayleyNeumann{4});
///   rot.set_generators(theta);                 // theta -> R_i, once per step
///   rot.apply(x, y);                           // y = x R     (y may be x itself)
///   rot.backward(x, dy, dx, dtheta, workspace);// dx = dy R^T, dtheta = d<dy, x R>/dtheta
///
/// Backward (SPEC section 3): dX_i = dY_i R_i^T and G_i = X_i^T dY_i summed over tokens in one
/// fused pass over X and dY, then dQ_i from the parameterization's vector-Jacobian product, packed as
/// dtheta(p,q) = dQ(p,q) - dQ(q,p) (summed over blocks when they share a generator).
/// Extra memory: threads x generators x b^2 scalars of caller-owned workspace.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Eigenvalues>
#include <Eigen/LU>

#include "backend.hpp"
#include "cpu/bf16.hpp"
#include "cpu/gemm_tile.hpp"
#include "detail/thread_scratch.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "parameterization.hpp"
#include "skew.hpp"
#include "view.hpp"
#include "workspace.hpp"

namespace oft {

/// Matrix norm of the orthogonality defect R^T R - I reported by orthogonality_error(s).
enum class OrthogonalityNorm {
  Spectral,   ///< ||.||_2, the largest singular value (what SPEC's bounds are stated in)
  Frobenius,  ///< ||.||_F, the root of the sum of squares (cheap, <= sqrt(b) * spectral)
};

/// ||R^T R - I|| of one square matrix, computed in double; +infinity when R has a non-finite
/// entry (a NaN R is never reported as orthogonal).
template <class Derived>
double orthogonality_error(const Eigen::MatrixBase<Derived>& r,
                           OrthogonalityNorm norm = OrthogonalityNorm::Spectral) {
  detail::require(r.rows() == r.cols(), "orthogonality_error needs a square matrix, got ",
                  r.rows(), "x", r.cols());
  const SquareMatrix<double> rd = r.template cast<double>();
  if (!rd.allFinite()) return std::numeric_limits<double>::infinity();
  const Index b = rd.rows();
  const SquareMatrix<double> defect = rd.transpose() * rd - SquareMatrix<double>::Identity(b, b);
  if (norm == OrthogonalityNorm::Frobenius) return defect.norm();
  if (b == 0) return 0.0;
  Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig(defect, Eigen::EigenvaluesOnly);
  return eig.eigenvalues().cwiseAbs().maxCoeff();
}

template <class Scalar_, class Parameterization_>
class BlockOrthogonal<Scalar_, Parameterization_, cpu> {
 public:
  using Scalar = Scalar_;
  using Parameterization = Parameterization_;
  using Plan = typename Parameterization::Plan;
  static_assert(std::is_floating_point_v<Scalar>, "oft::BlockOrthogonal needs float or double");

  /// Operator for `spec` (validated) with identity blocks until set_generators is called.
  explicit BlockOrthogonal(const BlockSpec& spec, Parameterization parameterization = {})
      : spec_(checked(spec)),
        parameterization_(parameterization),
        theta_(spec.generators(), spec.block_size),
        plans_(static_cast<size_t>(spec.generators())),
        staged_plans_(plans_.size()),
        rotations_(static_cast<size_t>(spec.generators() * block_area())),
        rotations_t_(rotations_.size()),
        staged_rotations_(rotations_.size()),
        active_(static_cast<size_t>(spec.blocks), 1) {
    if constexpr (std::is_same_v<Scalar, float>) {
      // D = R - I = 0 for the identity blocks.
      const auto words =
          static_cast<size_t>(spec.generators() * detail::cpu::pair_words(spec.block_size));
      pairs_.assign(words, 0u);
      pairs_t_.assign(words, 0u);
    }
    for (Index g = 0; g < spec_.generators(); ++g) {
      Eigen::Map<RowMatrix<Scalar>>(rotation(g), spec_.block_size, spec_.block_size).setIdentity();
      Eigen::Map<RowMatrix<Scalar>>(rotation_t(g), spec_.block_size, spec_.block_size)
          .setIdentity();
    }
  }

  const BlockSpec& spec() const { return spec_; }
  const Parameterization& parameterization() const { return parameterization_; }
  Index features() const { return spec_.features(); }

  /// theta -> R_i for every generator (theta: generators() x b(b-1)/2). Throws
  /// std::invalid_argument on a shape mismatch and std::domain_error for non-finite theta, a
  /// parameterization refusal (e.g. a divergent series in tolerance mode) or an R_i with a non-finite entry
  /// (finite theta too large for the parameterization and the type, e.g. a Neumann series overflowing
  /// float); the operator is unchanged then.
  void set_generators(GeneratorView<const Scalar> theta) {
    check_generators(theta, "theta");
    theta.require_finite();
    const Index b = spec_.block_size, count = spec_.generators();
    // Plans and blocks go to staging first: a refusal must leave the operator untouched. The
    // b x b matrices are this thread's scratch, so a steady-state call allocates nothing.
    using detail::ScratchSlot;
    for (Index g = 0; g < count; ++g) {
      SquareMatrix<Scalar>& q = detail::thread_matrix<Scalar, ScratchSlot::GeneratorQ>(b, b);
      unpack_skew(theta.row(g), b, q);
      staged_plans_[static_cast<size_t>(g)] = parameterization_.plan(q);
    }
    OFT_OMP(parallel for schedule(dynamic) if (parallel_generators()))
    for (Index g = 0; g < count; ++g) {
      SquareMatrix<Scalar>& q = detail::thread_matrix<Scalar, ScratchSlot::GeneratorQ>(b, b);
      SquareMatrix<Scalar>& r = detail::thread_matrix<Scalar, ScratchSlot::GeneratorR>(b, b);
      unpack_skew(theta.row(g), b, q);
      parameterization_.rotation(q, staged_plans_[static_cast<size_t>(g)], r);
      Eigen::Map<RowMatrix<Scalar>>(staged_rotations_.data() + g * block_area(), b, b) = r;
    }
    require_finite_rotations(staged_rotations_, staged_plans_);
    plans_.swap(staged_plans_);
    rotations_.swap(staged_rotations_);
    for (Index g = 0; g < count; ++g) {
      std::copy(theta.row(g), theta.row(g) + spec_.packed(), theta_.row(g));
      Eigen::Map<RowMatrix<Scalar>>(rotation_t(g), b, b) =
          Eigen::Map<const RowMatrix<Scalar>>(rotation(g), b, b).transpose();
      if constexpr (std::is_same_v<Scalar, float>) {
        detail::cpu::pack_pairs(rotation(g), b, pairs_.data() + g * detail::cpu::pair_words(b));
        detail::cpu::pack_pairs(rotation_t(g), b, pairs_t_.data() + g * detail::cpu::pair_words(b));
      }
    }
  }

  /// Chooses how bfloat16 activations are computed (float operators): Bf16Arithmetic::Float
  /// (bitwise the rounded float path) or Bf16Arithmetic::DotProduct (`vdpbf16ps`, the default
  /// where the build has AVX512_BF16; see docs/bf16.md). Throws std::invalid_argument for
  /// DotProduct in a build without it.
  void set_bf16_arithmetic(Bf16Arithmetic arithmetic) {
    detail::require(arithmetic == Bf16Arithmetic::Float || detail::cpu::kHasBf16Dot,
                    "Bf16Arithmetic::DotProduct needs a build with AVX512_BF16, AVX512BW and "
                    "AVX512VL (e.g. -march=native on a CPU that has them); this build has not");
    bf16_arithmetic_ = arithmetic;
  }
  /// How bfloat16 activations are computed now.
  Bf16Arithmetic bf16_arithmetic() const { return bf16_arithmetic_; }

  /// Blocks whose flag is 0 act as the identity (multiplicative dropout, see dropout.hpp) in
  /// apply, apply_transposed and backward; pass an empty vector to re-activate all.
  void set_active_blocks(const std::vector<unsigned char>& active) {
    detail::require(active.empty() || static_cast<Index>(active.size()) == spec_.blocks,
                    "active-block mask has ", active.size(), " entries, expected r=",
                    spec_.blocks);
    if (active.empty())
      std::fill(active_.begin(), active_.end(), 1);
    else
      active_ = active;
  }
  /// Whether block i is active (throws std::invalid_argument unless 0 <= i < r).
  bool block_active(Index i) const {
    check_block_index(i);
    return is_active(i);
  }

  /// Y = X * R (N x d, row-major with any row stride). `y` may be the same view as `x`
  /// (in place); partial overlap is refused.
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    check_apply(x, y);
    apply_impl(x, y, rotations_.data());
  }

  /// Y = X * R^T: the inverse of apply when R is orthogonal.
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    check_apply(x, y);
    apply_impl(x, y, rotations_t_.data());
  }

  /// bfloat16 activations (float operators only): Y = X * R with X and Y in bfloat16, R and the
  /// accumulation in float. With Bf16Arithmetic::Float each output is bitwise
  /// round_bf16(apply on the widened X); with DotProduct (vdpbf16ps, Y = X + X (R - I) with
  /// R - I in bfloat16) it is within the bound in docs/bf16.md.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    check_apply(x, y);
    if (dot_products())
      apply_dot(x, y, pairs_.data());
    else
      apply_impl(x, y, rotations_.data());
  }

  /// Y = X * R^T with bfloat16 activations (float operators only).
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    check_apply(x, y);
    if (dot_products())
      apply_dot(x, y, pairs_t_.data());
    else
      apply_impl(x, y, rotations_t_.data());
  }

  /// Y = X * R^-1, or X * R^-T when `transposed`: the true inverse of apply (apply_transposed),
  /// also when R is not exactly orthogonal (a truncated Neumann R, where R^T is not R^-1). Each
  /// block is factored by full-pivoting LU on every call: meant for merging and unmerging weights,
  /// not for a training loop. Throws std::domain_error naming the first singular block before
  /// writing y. `y` may be the same view as `x`; partial overlap is refused.
  void apply_inverse(ConstMatrixView<Scalar> x, MatrixView<Scalar> y, bool transposed = false) const {
    check_apply(x, y);
    // Factor and solve in double also for float: a merge is rounded once, at the end.
    using Wide = std::conditional_t<(sizeof(Scalar) < sizeof(double)), double, Scalar>;
    const Index b = spec_.block_size;
    std::vector<Eigen::FullPivLU<SquareMatrix<Wide>>> factors;
    factors.reserve(static_cast<std::size_t>(spec_.blocks));
    for (Index i = 0; i < spec_.blocks; ++i) {
      factors.emplace_back(SquareMatrix<Wide>(block(i).template cast<Wide>()));
      detail::require_domain(factors.back().isInvertible(), "cannot invert R: block ", i, " of ", spec_.blocks,
                             " is singular (rank ", factors.back().rank(), " of ", b, ")");
    }
    using Strided = Eigen::Map<RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;
    using ConstStrided = Eigen::Map<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;
    for (Index i = 0; i < spec_.blocks; ++i) {
      const ConstStrided xi(x.data() + i * b, x.rows(), b, Eigen::OuterStride<>(x.stride()));
      Strided yi(y.data() + i * b, y.rows(), b, Eigen::OuterStride<>(y.stride()));
      // Y_i R_i = X_i  <=>  R_i^T Y_i^T = X_i^T;  Y_i R_i^T = X_i  <=>  R_i Y_i^T = X_i^T.
      const auto& lu = factors[static_cast<std::size_t>(i)];
      const SquareMatrix<Wide> rhs = xi.transpose().template cast<Wide>();
      const SquareMatrix<Wide> solved = transposed ? SquareMatrix<Wide>(lu.solve(rhs))
                                                   : SquareMatrix<Wide>(lu.transpose().solve(rhs));
      yi = solved.transpose().template cast<Scalar>();
    }
  }

  /// Scalars of workspace that backward needs with the current OpenMP thread count.
  Index workspace_size() const {
    return static_cast<Index>(detail::max_threads()) * spec_.generators() * block_area();
  }

  /// Vector-Jacobian product of Y = X * R(theta) for the upstream gradient dY:
  /// dX = dY * R^T and dtheta = dL/dtheta. Pass an empty view ({}) to skip either output.
  /// dX may be the same view as dY or X (in place). dtheta is overwritten, not accumulated.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    backward(x, dy, dx, dtheta, workspace.reserve(workspace_size()), workspace_size());
  }

  /// Same, with a raw workspace of `workspace_count` >= workspace_size() scalars (only used,
  /// and so only checked, when dtheta is wanted). dtheta and the workspace must not overlap X,
  /// dY, dX or each other.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    backward_checked(x, dy, dx, dtheta, workspace, workspace_count);
  }

  /// backward with bfloat16 activations X, dY, dX (float operators only); dtheta, R and every
  /// accumulation stay float. With Bf16Arithmetic::Float, dX is round_bf16 of the float dX of
  /// the widened inputs and dtheta the float path's, bitwise (same thread count); with
  /// DotProduct both are within the bounds in docs/bf16.md.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy,
                MatrixView<bfloat16> dx, GeneratorView<Scalar> dtheta,
                Workspace<Scalar>& workspace) const {
    backward_checked(x, dy, dx, dtheta, workspace.reserve(workspace_size()), workspace_size());
  }

  /// The same with a raw workspace of `workspace_count` >= workspace_size() scalars.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy,
                MatrixView<bfloat16> dx, GeneratorView<Scalar> dtheta, Scalar* workspace,
                Index workspace_count) const {
    backward_checked(x, dy, dx, dtheta, workspace, workspace_count);
  }

  /// dtheta from per-block gradients G_i = dL/dR_i, stacked as an (r*b) x b row-major matrix
  /// (block i in rows [i*b, (i+1)*b)). Blocks sharing a generator are summed; inactive blocks
  /// contribute nothing. Used by the weight-centric path, where G_i = dW'_i^T W0_i.
  void backward_from_block_gradients(ConstMatrixView<Scalar> block_gradients,
                                     GeneratorView<Scalar> dtheta) const {
    const Index b = spec_.block_size;
    detail::require_shape(block_gradients, spec_.blocks * b, b, "block gradients");
    check_generators(dtheta, "dtheta");
    detail::require_disjoint(dtheta.matrix(), block_gradients, "dtheta", "block gradients");
    std::vector<Scalar> summed(static_cast<size_t>(spec_.generators() * block_area()), Scalar(0));
    for (Index i = 0; i < spec_.blocks; ++i) {
      if (!is_active(i)) continue;
      Eigen::Map<RowMatrix<Scalar>>(summed.data() + spec_.generator_of(i) * block_area(), b, b) +=
          block_gradients.block(i * b, 0, b, b).map();
    }
    generator_gradients(summed.data(), dtheta);
  }

  /// R_i (b x b) of block i (the identity when the block is inactive).
  RowMatrix<Scalar> block(Index i) const {
    check_block_index(i);
    const Index b = spec_.block_size;
    if (!is_active(i)) return RowMatrix<Scalar>::Identity(b, b);
    return Eigen::Map<const RowMatrix<Scalar>>(rotation(spec_.generator_of(i)), b, b);
  }

  /// The whole d x d block-diagonal R (a slow reference; O(d^2) memory).
  RowMatrix<Scalar> dense() const {
    const Index b = spec_.block_size, d = spec_.features();
    RowMatrix<Scalar> out = RowMatrix<Scalar>::Zero(d, d);
    for (Index i = 0; i < spec_.blocks; ++i) out.block(i * b, i * b, b, b) = block(i);
    return out;
  }

  /// ||R_i^T R_i - I|| for every block i (r numbers, in block order), computed in double, in
  /// the spectral norm (default) or the Frobenius norm. These are the stored blocks: the
  /// active-block mask (dropout) is not applied. A block with a non-finite entry reports
  /// +infinity, never 0.
  std::vector<double> orthogonality_errors(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    std::vector<double> per_generator(static_cast<size_t>(spec_.generators()));
    for (Index g = 0; g < spec_.generators(); ++g)
      per_generator[static_cast<size_t>(g)] = block_orthogonality_error(rotation(g), norm);
    std::vector<double> per_block(static_cast<size_t>(spec_.blocks));
    for (Index i = 0; i < spec_.blocks; ++i)
      per_block[static_cast<size_t>(i)] = per_generator[static_cast<size_t>(spec_.generator_of(i))];
    return per_block;
  }

  /// max_i ||R_i^T R_i - I|| over the blocks (spectral norm by default), computed in double;
  /// +infinity when any block has a non-finite entry.
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    double worst = 0.0;
    for (Index g = 0; g < spec_.generators(); ++g)
      worst = std::max(worst, block_orthogonality_error(rotation(g), norm));
    return worst;
  }

  /// The parameterization's decision for generator g (e.g. the k chosen in tolerance mode). Throws
  /// std::invalid_argument unless 0 <= g < generators().
  PlanSummary plan(Index g) const {
    detail::require(g >= 0 && g < spec_.generators(), "generator index ", g, " outside [0, ",
                    spec_.generators(), ")");
    return parameterization_.summary(plans_[static_cast<size_t>(g)]);
  }
  /// Throws std::invalid_argument naming both shapes unless `theta` holds spec().generators()
  /// generators of block size b (`name` says which argument it is).
  template <class Element>
  void check_generators(const GeneratorView<Element>& theta, const char* name) const {
    detail::require(theta.count() == spec_.generators() && theta.block_size() == spec_.block_size,
                    name, " holds ", theta.count(), " generators of block size ",
                    theta.block_size(), ", expected ", spec_.generators(), " of block size ",
                    spec_.block_size, " (", theta.count(), "x", theta.packed(), " vs ",
                    spec_.generators(), "x", spec_.packed(), ")");
  }

  /// The packed generators last given to set_generators.
  const Generators<Scalar>& generators() const { return theta_; }

 private:
  // Rows per work item of apply: one register tile, so few rows stream at once (friendly to the
  // hardware prefetchers; X rows d apart alias to the same L1 sets) and the copy stays in L1.
  static constexpr Index kApplyPanelRows = detail::cpu::kTileRows;
  // Rows per work item of backward: deep enough that the G_i = X_i^T dY_i tiles are loaded and
  // stored once per 64 tokens (48 with 6-row AVX2 tiles) instead of once per register tile.
  static constexpr Index kBackwardPanelRows = 8 * detail::cpu::kTileRows;
  // Backward copies a panel's rows a group of blocks at a time, about this many bytes of each
  // row, and prefetches the next group into L2 while the current one computes (issue 11,
  // measured on Zen 4: backward 19-23% faster at b = 32, out of place 18% at b = 64; in place
  // at b = 64 and 128 within the machine's noise). Row slices under two cache lines (b = 16
  // float, b = 32 bfloat16) stay one block at a time: grouping them measured 5-16% slower in
  // one run and no different in another.
  static constexpr Index kBackwardGroupBytes = 1024;
  static constexpr Index kBackwardGroupMinSliceBytes = 128;
  // Per-thread stack scratch (scalars); a panel that does not fit (a backward group, or a large
  // b) uses the thread's kept heap buffer (detail/thread_scratch.hpp).
  static constexpr Index kStackScratch = 8192;
  // Below this many flops the OpenMP fork costs more than it saves.
  static constexpr double kParallelFlops = 1 << 18;
  // Outputs at least this large (bytes) are written with streaming stores when they are a
  // separate buffer: far larger than the caches, so the data goes to memory anyway, and skipping
  // the read for ownership saves a third of that stream's traffic. Smaller outputs stay in the
  // cache for the consumer that reads them next.
  static constexpr double kStreamingBytes = 8.0 * (1 << 20);

  /// Whether the kernel may write `out` (a separate buffer, not an input) with streaming stores.
  template <class Act>
  bool stream_output(const MatrixView<Act>& out) const {
    if constexpr (!kDirect<Act>) {
      // bfloat16: only DotProduct's kernel, whose two-packet rows are one cache line each.
      const double bytes = static_cast<double>(out.rows()) *
                           static_cast<double>(out.cols()) * sizeof(Act);
      return dot_products() && bytes >= kStreamingBytes &&
             detail::cpu::rotate_streaming_allowed(detail::cpu::bits(out.data()), out.stride(),
                                                  spec_.block_size);
    } else {
      const double bytes = static_cast<double>(out.rows()) *
                           static_cast<double>(out.cols()) * sizeof(Act);
      return bytes >= kStreamingBytes &&
             detail::cpu::streaming_allowed(out.data(), out.stride(), spec_.block_size);
    }
  }

  // Below this much theta -> R work (generators x b^3 flops) the generator loops run serially.
  static constexpr double kParallelGeneratorFlops = 1 << 20;

  bool parallel_generators() const {
    const double b = static_cast<double>(spec_.block_size);
#if defined(EIGEN_USE_BLAS)
    // With Eigen's products and solves going to BLAS (oft::blas), a serial loop hands each b x b
    // LU, solve and product to OpenBLAS, and an OpenMP build of OpenBLAS forks its own team for
    // each call when it runs outside a parallel region (it follows omp_get_max_threads()).
    // Inside an active region it runs single-threaded, so one fork for the whole loop is far
    // cheaper: measured at d = 1024, b = 32, N = 2048, 2 threads, the backward took 13-16 ms
    // with the serial loop and 3.3 ms without BLAS.
    (void)b;
    return spec_.generators() > 1;
#else
    return spec_.generators() > 1 && static_cast<double>(spec_.generators()) * b * b * b >
                                         kParallelGeneratorFlops;
#endif
  }

  bool is_active(Index i) const { return active_[static_cast<size_t>(i)] != 0; }

  void check_block_index(Index i) const {
    detail::require(i >= 0 && i < spec_.blocks, "block index ", i, " outside [0, ", spec_.blocks,
                    ")");
  }

  /// ||R^T R - I|| of one stored b x b row-major block (see oft::orthogonality_error).
  double block_orthogonality_error(const Scalar* block_data, OrthogonalityNorm norm) const {
    const Index b = spec_.block_size;
    return oft::orthogonality_error(Eigen::Map<const RowMatrix<Scalar>>(block_data, b, b), norm);
  }

  /// Throws std::domain_error naming the first generator whose staged R has a non-finite entry.
  void require_finite_rotations(const std::vector<Scalar>& blocks,
                                const std::vector<Plan>& plans) const {
    const Index area = block_area();
    for (Index g = 0; g < spec_.generators(); ++g) {
      const Scalar* first = blocks.data() + g * area;
      const bool finite = std::all_of(first, first + area, [](Scalar v) { return std::isfinite(v); });
      if (finite) continue;
      const PlanSummary summary = parameterization_.summary(plans[static_cast<size_t>(g)]);
      detail::require_domain(false, "theta -> R gave a non-finite entry in generator ", g,
                             " (policy ", Parameterization::name,
                             summary.exact ? std::string(", exact")
                                           : detail::message(", k=", summary.terms),
                             ", b=", spec_.block_size,
                             "): theta is too large for this policy in this floating-point type");
    }
  }

  static const BlockSpec& checked(const BlockSpec& spec) {
    spec.validate();
    return spec;
  }
  Index block_area() const { return spec_.block_size * spec_.block_size; }
  Scalar* rotation(Index g) { return rotations_.data() + g * block_area(); }
  const Scalar* rotation(Index g) const { return rotations_.data() + g * block_area(); }
  Scalar* rotation_t(Index g) { return rotations_t_.data() + g * block_area(); }

  /// backward's argument checks (all before anything is written), then the kernel; Act is the
  /// activation type (Scalar, or bfloat16 for a float operator).
  template <class Act>
  void backward_checked(const ConstMatrixView<Act>& x, const ConstMatrixView<Act>& dy,
                        const MatrixView<Act>& dx, const GeneratorView<Scalar>& dtheta,
                        Scalar* workspace, Index workspace_count) const {
    const Index d = spec_.features();
    const bool want_dx = dx.data() != nullptr, want_dtheta = dtheta.data() != nullptr;
    detail::require(x.cols() == d, "X has ", x.cols(), " columns, expected d=", d);
    detail::require_shape(dy, x.rows(), d, "dY");
    if (want_dx) {
      detail::require_shape(dx, x.rows(), d, "dX");
      detail::require_in_place_or_disjoint(dx, dy, "dX", "dY");
      detail::require_in_place_or_disjoint(dx, x, "dX", "X");
    }
    if (want_dtheta) {
      check_generators(dtheta, "dtheta");
      detail::require(workspace_count >= workspace_size(), "backward workspace has ",
                      workspace_count, " scalars, needs ", workspace_size());
      detail::require(workspace != nullptr, "backward workspace is a null pointer with ",
                      workspace_count, " scalars");
      const ConstMatrixView<Scalar> scratch(workspace, 1, workspace_size());
      const MatrixView<Scalar>& gradient = dtheta.matrix();
      detail::require_disjoint(gradient, x, "dtheta", "X");
      detail::require_disjoint(gradient, dy, "dtheta", "dY");
      detail::require_disjoint(scratch, x, "backward workspace", "X");
      detail::require_disjoint(scratch, dy, "backward workspace", "dY");
      detail::require_disjoint(scratch, gradient, "backward workspace", "dtheta");
      if (want_dx) {
        detail::require_disjoint(gradient, dx, "dtheta", "dX");
        detail::require_disjoint(scratch, dx, "backward workspace", "dX");
      }
    }
    if constexpr (!kDirect<Act>) {
      if (dot_products()) {
        backward_dot(x, dy, dx, dtheta, workspace, want_dx, want_dtheta);
        return;
      }
    }
    backward_impl(x, dy, dx, dtheta, workspace, want_dx, want_dtheta);
  }

  template <class Act>
  void check_apply(const ConstMatrixView<Act>& x, const MatrixView<Act>& y) const {
    detail::require(x.cols() == spec_.features(), "X has ", x.cols(), " columns, expected d=",
                    spec_.features(), " (r=", spec_.blocks, " blocks of b=", spec_.block_size,
                    ")");
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
  }

  /// Runs body(first_row, rows, scratch, thread) over panels of `rows_per_panel` rows, split
  /// across threads in contiguous chunks; scratch holds `copies` panel slices of b columns.
  template <class Body>
  void for_each_panel(Index n, Index rows_per_panel, Index copies, Body&& body) const {
    const Index b = spec_.block_size;
    const Index panels = (n + rows_per_panel - 1) / rows_per_panel;
    [[maybe_unused]] const double flops =
        2.0 * static_cast<double>(n) * static_cast<double>(spec_.features() * b);
    const Index scratch_size = copies * rows_per_panel * b;
    const bool on_stack = scratch_size <= kStackScratch;
    OFT_OMP(parallel if (flops > kParallelFlops && panels > 1))
    {
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
  template <class Act>
  static void copy_slice(const Act* from, Index stride, Index rows, Index b, Scalar* to) {
    for (Index t = 0; t < rows; ++t) detail::cpu::convert_row(from + t * stride, b, to + t * b);
  }

  /// The inverse: contiguous rows x b Scalars to activations at row stride `stride`, rounding
  /// to bfloat16 (nearest even) when Act is bfloat16.
  template <class Act>
  static void store_slice(const Scalar* from, Index rows, Index b, Act* to, Index stride) {
    for (Index t = 0; t < rows; ++t) detail::cpu::convert_row(from + t * b, b, to + t * stride);
  }

  /// Blocks that backward copies and prefetches together: enough for about kBackwardGroupBytes
  /// of each row when a block's row slice is at least two cache lines, else one block.
  template <class Act>
  Index backward_group_blocks() const {
    const Index slice_bytes = spec_.block_size * static_cast<Index>(sizeof(Act));
    if (slice_bytes < kBackwardGroupMinSliceBytes) return 1;
    return std::max<Index>(1, kBackwardGroupBytes / slice_bytes);
  }

  /// Copies blocks [i0, i0 + blocks) of rows [first, first + rows) of `from` into block-major
  /// scratch: block j's rows x b slice starts at to + j * slice. Each row's segment is read in
  /// order, whole.
  template <class Act>
  static void copy_group(const ConstMatrixView<Act>& from, Index first, Index rows, Index i0,
                         Index blocks, Index b, Index slice, Scalar* to) {
    for (Index t = 0; t < rows; ++t) {
      const Act* row = from.row(first + t) + i0 * b;
      for (Index j = 0; j < blocks; ++j)
        detail::cpu::convert_row(row + j * b, b, to + j * slice + t * b);
    }
  }

  // Scalar activations can be read where they are; bfloat16 ones are widened into a float
  // slice first. Either way the kernel writes the outputs itself (bfloat16 rounded once, as
  // stored).
  template <class Act>
  static constexpr bool kDirect = std::is_same_v<Act, Scalar>;

  template <class Act>
  void apply_impl(const ConstMatrixView<Act>& x, const MatrixView<Act>& y,
                  const Scalar* blocks) const {
    const Index b = spec_.block_size;
    const bool streaming = y.data() != x.data() && stream_output(y);
    for_each_panel(x.rows(), kApplyPanelRows, 1, [&](Index first, Index rows, Scalar* scratch,
                                                      int) {
      // (Prefetching here measured no gain: the next block, and, on Zen 4 after the prefetch
      // fix of issue 11, the next panel into L2, 4-11% slower.)
      for (Index i = 0; i < spec_.blocks; ++i) {
        const Act* in = x.row(first) + i * b;
        Act* out = y.row(first) + i * b;
        if (!is_active(i)) {
          if (in != out)
            for (Index t = 0; t < rows; ++t)
              std::copy(in + t * x.stride(), in + t * x.stride() + b, out + t * y.stride());
          continue;
        }
        const Scalar* r = blocks + spec_.generator_of(i) * block_area();
        if constexpr (kDirect<Act>) {
          // The kernel reads X's rows where they are when Y is a separate buffer, or when one
          // register tile spans the block (it reads all of its rows before it stores any): no
          // copy (issue 11, measured on Zen 4: apply 8-20% faster at b = 16 and 32, 19-24% at
          // b = 8). Otherwise the slice is copied first, so that in-place stores cannot clobber
          // rows still to be read.
          const Scalar* a = in;
          Index a_row = x.stride();
          if (in == out && !detail::cpu::one_register_tile<Scalar>(b)) {
            copy_slice(in, x.stride(), rows, b, scratch);
            a = scratch, a_row = b;
          }
          detail::cpu::gemm_small_to(streaming, rows, b, b, a, a_row, 1, r, b, out, y.stride());
        } else {
          // bfloat16: widened into scratch first; the kernel rounds Y as it stores it.
          copy_slice(in, x.stride(), rows, b, scratch);
          detail::cpu::gemm_small(rows, b, b, scratch, b, 1, r, b, out, y.stride(), false);
        }
      }
      if (streaming) detail::cpu::stream_fence();
    });
  }

  template <class Act>
  void backward_impl(const ConstMatrixView<Act>& x, const ConstMatrixView<Act>& dy,
                     const MatrixView<Act>& dx, const GeneratorView<Scalar>& dtheta,
                     Scalar* workspace, bool want_dx, bool want_dtheta) const {
    const Index b = spec_.block_size, area = block_area(), count = spec_.generators();
    const Index slab = count * area;  // one thread's partial sums of G
    const int threads = detail::max_threads();
    if (want_dtheta) std::fill(workspace, workspace + threads * slab, Scalar(0));

    // Per panel of rows and group of blocks: copy the group's dY (and X) row segments into
    // block-major scratch, then per block G_g += X_i^T dY_i and dX_i = dY_i R_i^T. The copies make
    // dX == dY or dX == X safe: both are read before dX_i is written, and other panels and
    // groups are disjoint. While a group computes, the next group's rows are prefetched, a few
    // rows per block, so memory and arithmetic overlap.
    const Index group = backward_group_blocks<Act>();
    const Index rows_per_panel = kBackwardPanelRows;
    const Index slice = rows_per_panel * b;  // one block's copy
    // dX is streamed only when it is neither input (in place, its lines are already cached).
    const bool streaming =
        want_dx && dx.data() != dy.data() && dx.data() != x.data() && stream_output(dx);
    for_each_panel(x.rows(), rows_per_panel, 2 * group,
                   [&](Index first, Index rows, Scalar* scratch, int thread) {
      Scalar* partial = workspace + thread * slab;
      Scalar* scratch_dy = scratch;
      Scalar* scratch_x = scratch + group * slice;
      for (Index i0 = 0; i0 < spec_.blocks; i0 += group) {
        const Index blocks = std::min(group, spec_.blocks - i0);
        // The group after this one: the next in this panel, or the first of this thread's next
        // panel (static schedule: a thread's panels are contiguous). Its rows are prefetched in
        // `blocks` parts, one before this group's copy and one before each later block.
        Index next_first = first, next_i0 = i0 + group;
        if (next_i0 >= spec_.blocks) next_first = first + rows, next_i0 = 0;
        const Index next_rows = std::max<Index>(0, std::min(rows, x.rows() - next_first));
        const Index next_cols = std::min(group, spec_.blocks - next_i0) * b;
        auto prefetch_part = [&](Index part) {
          if (next_rows == 0) return;
          const Index from = part * next_rows / blocks, to = (part + 1) * next_rows / blocks;
          detail::cpu::prefetch_rows(dy.row(next_first) + next_i0 * b, dy.stride(), from, to,
                                    next_cols);
          if (want_dtheta)
            detail::cpu::prefetch_rows(x.row(next_first) + next_i0 * b, x.stride(), from, to,
                                      next_cols);
        };
        prefetch_part(0);
        copy_group(dy, first, rows, i0, blocks, b, slice, scratch_dy);
        if (want_dtheta) copy_group(x, first, rows, i0, blocks, b, slice, scratch_x);
        for (Index j = 0; j < blocks; ++j) {
          if (j > 0) prefetch_part(j);
          const Index i = i0 + j;
          const bool active = is_active(i);
          const Index g = spec_.generator_of(i);
          const Scalar* block_dy = scratch_dy + j * slice;
          Scalar* block_x = scratch_x + j * slice;
          if (want_dtheta && active)
            // A(k, n) = X_i(n, k): the kernel walks the copied X_i transposed.
            detail::cpu::gemm_small(b, b, rows, block_x, 1, b, block_dy, b, partial + g * area, b,
                                   true);
          if (!want_dx) continue;
          Act* grad_out = dx.row(first) + i * b;
          if (!active) {
            store_slice(block_dy, rows, b, grad_out, dx.stride());
          } else {
            detail::cpu::gemm_small_to(streaming, rows, b, b, block_dy, b, 1,
                                      rotations_t_.data() + g * area, b, grad_out, dx.stride());
          }
        }
      }
      if (streaming) detail::cpu::stream_fence();
    });
    if (want_dtheta) finish_generator_gradients(workspace, threads, dtheta);
  }

  /// Sums the threads' partial G (slabs of generators x b^2 at the start of the workspace) into
  /// the first slab and turns it into dtheta.
  void finish_generator_gradients(Scalar* workspace, int threads,
                                  const GeneratorView<Scalar>& dtheta) const {
    const Index slab = spec_.generators() * block_area();
    for (int t = 1; t < threads; ++t)
      for (Index e = 0; e < slab; ++e) workspace[e] += workspace[t * slab + e];
    generator_gradients(workspace, dtheta);
  }

  bool dot_products() const { return bf16_arithmetic_ == Bf16Arithmetic::DotProduct; }

  /// Copies rows x b bfloat16 at row stride `stride` to `to` at row stride `to_stride`.
  static void copy_bf16_rows(const std::uint16_t* from, Index stride, Index rows, Index b,
                             std::uint16_t* to, Index to_stride) {
    for (Index t = 0; t < rows; ++t)
      std::memcpy(to + t * to_stride, from + t * stride, static_cast<size_t>(b) * 2);
  }

  /// apply with Bf16Arithmetic::DotProduct: Y_i = X_i + X_i D_i per panel and block
  /// (cpu/bf16_dot.hpp); `pairs` is pairs_ (apply) or pairs_t_ (apply_transposed).
  void apply_dot(const ConstMatrixView<bfloat16>& x, const MatrixView<bfloat16>& y,
                 const std::uint32_t* pairs) const {
#if defined(OFT_HAVE_BF16_DOT)
    const Index b = spec_.block_size, words = detail::cpu::pair_words(b);
    const bool streaming = y.data() != x.data() && stream_output(y);
    for_each_panel(x.rows(), kApplyPanelRows, 1, [&](Index first, Index rows, Scalar* scratch,
                                                      int) {
      for (Index i = 0; i < spec_.blocks; ++i) {
        const std::uint16_t* in = detail::cpu::bits(x.row(first) + i * b);
        std::uint16_t* out = detail::cpu::bits(y.row(first) + i * b);
        if (!is_active(i)) {
          if (in != out) copy_bf16_rows(in, x.stride(), rows, b, out, y.stride());
          continue;
        }
        const std::uint16_t* a = in;
        Index a_row = x.stride();
        if (in == out && !detail::cpu::rotate_in_place(b)) {
          // In place with more than one register tile per row: the stores of one tile would
          // clobber columns another tile still reads.
          auto* copy = reinterpret_cast<std::uint16_t*>(scratch);
          copy_bf16_rows(in, x.stride(), rows, b, copy, b);
          a = copy, a_row = b;
        }
        detail::cpu::rotate_rows(streaming, rows, b, a, a_row,
                                pairs + spec_.generator_of(i) * words, out, y.stride());
      }
      if (streaming) detail::cpu::stream_fence();
    });
#else
    (void)x, (void)y, (void)pairs;  // unreachable: set_bf16_arithmetic refuses DotProduct
#endif
  }

  /// backward with Bf16Arithmetic::DotProduct. Per panel of rows and block: X_i's and dY_i's
  /// rows interleaved in pairs into scratch (dY_i also copied as it is), G_g += X_i^T dY_i from
  /// the pairs, dX_i = dY_i + dY_i D_i^T from the copy (without dtheta: from dY's rows where
  /// they are, or a copy when dX is dY and one register tile does not span the block). The next
  /// block's rows are prefetched into L2 while one computes.
  void backward_dot(const ConstMatrixView<bfloat16>& x, const ConstMatrixView<bfloat16>& dy,
                    const MatrixView<bfloat16>& dx, const GeneratorView<Scalar>& dtheta,
                    Scalar* workspace, bool want_dx, bool want_dtheta) const {
#if defined(OFT_HAVE_BF16_DOT)
    const Index b = spec_.block_size, area = block_area(), words = detail::cpu::pair_words(b);
    const Index slab = spec_.generators() * area;
    const int threads = detail::max_threads();
    if (want_dtheta) std::fill(workspace, workspace + threads * slab, Scalar(0));
    const Index rows_per_panel = kBackwardPanelRows;
    const Index pair_slice = (rows_per_panel + 1) / 2 * b;  // words of one interleaved slice
    // dX is streamed only when it is neither input (in place, its lines are already cached).
    const bool streaming =
        want_dx && dx.data() != dy.data() && dx.data() != x.data() && stream_output(dx);
    // Scratch (two float slices): X's pairs, dY's pairs, then a bfloat16 copy of dY's slice.
    for_each_panel(x.rows(), rows_per_panel, 2, [&](Index first, Index rows, Scalar* scratch,
                                                     int thread) {
      Scalar* partial = workspace + thread * slab;
      auto* x_pairs = reinterpret_cast<std::uint32_t*>(scratch);
      std::uint32_t* dy_pairs = x_pairs + pair_slice;
      auto* dy_copy = reinterpret_cast<std::uint16_t*>(dy_pairs + pair_slice);
      for (Index i = 0; i < spec_.blocks; ++i) {
        // The next block of this panel, or the first of this thread's next panel. (Two blocks
        // ahead measured no different on Zen 4.)
        const Index next_first = i + 1 < spec_.blocks ? first : first + rows;
        const Index next_i = i + 1 < spec_.blocks ? i + 1 : 0;
        const Index next_rows = std::max<Index>(0, std::min(rows, x.rows() - next_first));
        if (next_rows > 0) {
          detail::cpu::prefetch_rows(dy.row(next_first) + next_i * b, dy.stride(), 0, next_rows, b);
          if (want_dtheta)
            detail::cpu::prefetch_rows(x.row(next_first) + next_i * b, x.stride(), 0, next_rows, b);
        }
        const bool active = is_active(i);
        const Index g = spec_.generator_of(i);
        const std::uint16_t* block_dy = detail::cpu::bits(dy.row(first) + i * b);
        // dX reads dY_i from a contiguous copy when there is one: rows d apart share an L1 set,
        // so the slice itself may be gone from L1 by then.
        const std::uint16_t* a = block_dy;
        Index a_row = dy.stride();
        if (want_dtheta && active) {
          detail::cpu::interleave_rows(detail::cpu::bits(x.row(first) + i * b), x.stride(), rows, b,
                                      x_pairs);
          detail::cpu::interleave_rows(block_dy, dy.stride(), rows, b, dy_pairs,
                                      want_dx ? dy_copy : nullptr);
          detail::cpu::gradient_pairs(b, (rows + 1) / 2, x_pairs, dy_pairs, partial + g * area);
          a = dy_copy, a_row = b;
        }
        if (!want_dx) continue;
        std::uint16_t* out = detail::cpu::bits(dx.row(first) + i * b);
        if (!active) {
          if (out != block_dy) copy_bf16_rows(block_dy, dy.stride(), rows, b, out, dx.stride());
          continue;
        }
        if (a == block_dy && out == block_dy && !detail::cpu::rotate_in_place(b)) {
          copy_bf16_rows(block_dy, dy.stride(), rows, b, dy_copy, b);
          a = dy_copy, a_row = b;
        }
        // (dX over X is safe: X_i was interleaved above, and no later block reads it.)
        detail::cpu::rotate_rows(streaming, rows, b, a, a_row, pairs_t_.data() + g * words, out,
                                dx.stride());
      }
      if (streaming) detail::cpu::stream_fence();
    });
    if (want_dtheta) finish_generator_gradients(workspace, threads, dtheta);
#else
    (void)x, (void)dy, (void)dx, (void)dtheta, (void)workspace, (void)want_dx, (void)want_dtheta;
#endif
  }

  void generator_gradients(const Scalar* block_gradients, const GeneratorView<Scalar>& dtheta) const {
    const Index b = spec_.block_size, area = block_area(), count = spec_.generators();
    OFT_OMP(parallel for schedule(dynamic) if (parallel_generators()))
    for (Index g = 0; g < count; ++g) {
      // This thread's scratch (detail/thread_scratch.hpp): no allocation in steady state.
      using detail::ScratchSlot;
      SquareMatrix<Scalar>& q = detail::thread_matrix<Scalar, ScratchSlot::GeneratorQ>(b, b);
      SquareMatrix<Scalar>& r = detail::thread_matrix<Scalar, ScratchSlot::GeneratorR>(b, b);
      SquareMatrix<Scalar>& grad = detail::thread_matrix<Scalar, ScratchSlot::GeneratorGrad>(b, b);
      SquareMatrix<Scalar>& dq = detail::thread_matrix<Scalar, ScratchSlot::GeneratorDq>(b, b);
      unpack_skew(theta_.row(g), b, q);
      r = Eigen::Map<const RowMatrix<Scalar>>(rotation(g), b, b);
      grad = Eigen::Map<const RowMatrix<Scalar>>(block_gradients + g * area, b, b);
      parameterization_.rotation_vjp(q, r, plans_[static_cast<size_t>(g)], grad, dq);
      pack_skew_gradient(dq, dtheta.row(g));
    }
  }

  BlockSpec spec_;
  Parameterization parameterization_;
  Generators<Scalar> theta_;
  std::vector<Plan> plans_;
  std::vector<Plan> staged_plans_;  // set_generators plans here, swaps in on success
  std::vector<Scalar> rotations_;    // R_g, row-major, generators x b x b
  std::vector<Scalar> rotations_t_;  // R_g^T, for dX = dY R^T and apply_transposed
  std::vector<Scalar> staged_rotations_;  // set_generators computes here, swaps in on success
  std::vector<unsigned char> active_;
  // D = R - I and D^T = R^T - I rounded to bfloat16, packed for vdpbf16ps (float operators).
  std::vector<std::uint32_t> pairs_, pairs_t_;
  Bf16Arithmetic bf16_arithmetic_ =
      detail::cpu::kHasBf16Dot ? Bf16Arithmetic::DotProduct : Bf16Arithmetic::Float;
};

}  // namespace oft

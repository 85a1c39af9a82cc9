#pragma once
/// \file cpu/block_orthogonal.hpp
/// BlockOrthogonal<Scalar, P, cpu>: the CPU backend's host class (public API documented in
/// <oft/block_orthogonal.hpp> and docs/api.md). It owns the generators, the plans and the
/// blocks R_g, R_g^T (and their bfloat16 pair packings), checks every argument before anything
/// is written, computes theta -> R and dR -> dtheta through the parameterization, and hands the
/// activations to the panel loops: cpu/apply.hpp, cpu/backward.hpp and their bfloat16
/// DotProduct twins, free functions over detail::cpu::Params (as cuda/block_orthogonal.hpp
/// launches the kernels of cuda/kernels_*.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Eigenvalues>
#include <Eigen/LU>

#include "../backend.hpp"
#include "../detail/thread_scratch.hpp"
#include "../errors.hpp"
#include "../index.hpp"
#include "../orthogonality.hpp"
#include "../parameterization.hpp"
#include "../skew.hpp"
#include "../view.hpp"
#include "../workspace.hpp"
#include "apply.hpp"
#include "apply_bf16.hpp"
#include "backward.hpp"
#include "backward_bf16.hpp"
#include "bf16.hpp"
#include "gemm_tile.hpp"

namespace oft {

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
    detail::cpu::apply(params(), x, y, rotations_.data());
  }

  /// Y = X * R^T: the inverse of apply when R is orthogonal.
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    check_apply(x, y);
    detail::cpu::apply(params(), x, y, rotations_t_.data());
  }

  /// bfloat16 activations (float operators only): Y = X * R with X and Y in bfloat16, R and the
  /// accumulation in float. With Bf16Arithmetic::Float each output is bitwise
  /// round_bf16(apply on the widened X); with DotProduct (vdpbf16ps, Y = X + X (R - I) with
  /// R - I in bfloat16) it is within the bound in docs/bf16.md.
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    check_apply(x, y);
    if (dot_products())
      detail::cpu::apply_bf16_dot(params(), x, y, pairs_.data());
    else
      detail::cpu::apply(params(), x, y, rotations_.data());
  }

  /// Y = X * R^T with bfloat16 activations (float operators only).
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    check_apply(x, y);
    if (dot_products())
      detail::cpu::apply_bf16_dot(params(), x, y, pairs_t_.data());
    else
      detail::cpu::apply(params(), x, y, rotations_t_.data());
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
  /// The state the panel loops read (cpu/panels.hpp).
  detail::cpu::Params<Scalar> params() const {
    return detail::cpu::Params<Scalar>{spec_, active_.data(), rotations_t_.data(),
                                       pairs_t_.data(),
                                       dot_products()};
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
    int threads = 0;
    if constexpr (!std::is_same_v<Act, Scalar>) {
      if (dot_products())
        threads = detail::cpu::backward_bf16_dot(params(), x, dy, dx, workspace, want_dx,
                                                 want_dtheta);
      else
        threads = detail::cpu::backward(params(), x, dy, dx, workspace, want_dx, want_dtheta);
    } else {
      threads = detail::cpu::backward(params(), x, dy, dx, workspace, want_dx, want_dtheta);
    }
    if (want_dtheta) {
      detail::cpu::sum_partial_gradients(params(), workspace, threads);
      generator_gradients(workspace, dtheta);
    }
  }

  template <class Act>
  void check_apply(const ConstMatrixView<Act>& x, const MatrixView<Act>& y) const {
    detail::require(x.cols() == spec_.features(), "X has ", x.cols(), " columns, expected d=",
                    spec_.features(), " (r=", spec_.blocks, " blocks of b=", spec_.block_size,
                    ")");
    detail::require_shape(y, x.rows(), x.cols(), "Y");
    detail::require_in_place_or_disjoint(y, x, "Y", "X");
  }

  bool dot_products() const { return bf16_arithmetic_ == Bf16Arithmetic::DotProduct; }

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

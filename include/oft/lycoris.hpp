#pragma once
/// \file lycoris.hpp
/// LyCORIS's diag-OFT (algo "diag-oft"), exactly as lycoris-lora computes it, on oft's
/// block-diagonal Cayley operator. Read from lycoris-lora 4.1.3 (PyPI),
/// `lycoris/modules/diag_oft.py` (DiagOFTModule: get_r, make_weight, _bypass_forward) and
/// `lycoris/functional/diag_oft.py` (get_r, _diff_weight, _bypass_diff); docs/dialects.md has
/// the whole convention and what differs from oft's own (SPEC sections 2 and 8).
///
/// A module stores dense blocks B = `oft_blocks` [k, b, b] over the layer's k*b OUTPUT channels,
/// a scalar `alpha` and, optionally, `rescale` [out, 1, ...]. LyCORIS computes, in float32:
///
///   Q_i = B_i - B_i^T                       (no 1/2, unlike PEFT's BOFT)
///   n   = ||Q||_F + 1e-8                    over all k blocks together
///   c   = alpha * out                       (out = k*b; alpha <= 0 means no constraint)
///   if c > 0 and n > c:  Q <- Q * c / n     (the same factor for every block)
///   R_i = (I + Q_i)(I - Q_i)^-1             (oft's ExactCayley of theta_i(p,q) = Q_i(p,q))
///   M_i = s R_i + (1 - s) I                 the "multiplier" s, a LINEAR blend: not orthogonal
///                                           unless s is 0 or 1 (oft's own strength, SPEC 8, is
///                                           R(sQ), which stays orthogonal)
///   merge:    W' = diag(rescale) blockdiag(M)^T W, along W's dim 0 (the output channels; the
///             weight's other dims, e.g. a conv kernel's, are flattened into columns)
///   forward:  X W'^T + bias (the default mode: the bias is neither rotated nor rescaled)
///   bypass:   rescale * ((X W^T + bias) M) (bypass_mode: the layer's output, bias included)
///
/// Both forwards are the output-side rotation Z -> diag(rescale)-scaled Z M of the layer's output
/// Z, which is BlockOrthogonal::apply on Z (Y = Z R per block) blended with Z; the merge is the
/// same map on W^T (W'^T = W^T M diag(rescale)). So nothing here needs a kernel of its own.
///
///   oft::lycoris::DiagOft<float> m(k, b, oft_blocks.data(), alpha, rescale, /*multiplier=*/1.0);
///   oft::RowMatrix<float> merged = m.merge(oft::view(w));      // what LyCORIS's merge_to writes
///
/// Rounding: LyCORIS's float32 path forms (I - Q)^-1 explicitly and, at s = 1, computes
/// W + rescale (R - I)^T W + (rescale - 1) W; oft solves by LU and computes rescale (M^T W). The
/// two agree within float rounding (tests/dialects states and checks the bound); they are not
/// bitwise equal.
///
/// kohya sd-scripts' OFT (`networks/oft.py`, github kohya-ss/sd-scripts, last changed in commit
/// 2d8ee3c28007393386528cfeec0a9b714dafd85b; not on PyPI) stores the same tensors (no rescale)
/// and computes the same map but for its constraint rule, ConstraintRule::Kohya:
///   n = ||Q||_F;  Q <- Q (min(n, c) + 1e-8) / (n + 1e-8), applied always,
/// which agrees with LyCORIS's to about 1e-8 relative for alpha > 0, but for alpha = 0 scales Q to
/// ~0 (R ~ I: the adapter does nothing) where LyCORIS reads alpha = 0 as "no constraint", and
/// for alpha < 0 flips Q's sign. Its multiplier, s (R - I) + I, is LyCORIS's blend.
///
/// Gradients (training through the dialect): DiagOft::backward_output and backward_merge give
/// dL/d oft_blocks, dL/d rescale and dL/dZ (or dL/dW) through everything LyCORIS's autograd
/// sees: the rescale, the blend, the Cayley transform (BlockOrthogonal::backward), the norm
/// constraint where it is active (theta_c = f theta with f = c / (n + 1e-8), or kohya's
/// (c + 1e-8) / (n + 1e-8), n = ||Q||_F: d theta = f d theta_c - f'(n) <theta, d theta_c>
/// 2 theta / n), and Q = B - B^T (dB = dQ - dQ^T: dB(p, q) = d theta(p, q) = -dB(q, p)).
///
/// LyCORIS BOFT (algo "boft"): Boft below (merge, forward, backward_merge), with its own comment.
///
/// Not here (docs/dialects.md lists them): LyCORIS's bypass mode for BOFT, its rank dropout and
/// module dropout (training only).

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "block_orthogonal.hpp"
#include "cayley.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "orthogonality.hpp"
#include "skew.hpp"
#include "view.hpp"

namespace oft::lycoris {

/// oft's packed generators of LyCORIS's Q_i = B_i - B_i^T for `count` dense row-major b x b
/// blocks at `blocks` (oft_blocks [count, b, b]): theta_i(p, q) = B_i(p, q) - B_i(q, p), p < q,
/// one float subtraction each, as LyCORIS's. Throws std::invalid_argument for count < 1 or b
/// outside [1, kMaxBlockSize].
template <class Scalar>
Generators<Scalar> skew_from_blocks(const Scalar* blocks, Index count, Index b) {
  detail::require(count >= 1 && b >= 1, "LyCORIS oft_blocks [", count, ", ", b, ", ", b,
                  "]: needs at least one block of size b >= 1");
  detail::require_block_size(b, "LyCORIS block size");
  Generators<Scalar> theta(count, b);
  for (Index i = 0; i < count; ++i) {
    const Scalar* block = blocks + i * b * b;
    Scalar* row = theta.row(i);
    for (Index p = 0; p < b; ++p)
      for (Index q = p + 1; q < b; ++q) row[packed_index(p, q, b)] = block[p * b + q] - block[q * b + p];
  }
  return theta;
}

/// Whose norm-constraint rule a module follows (the file's owner decides; see the file comment).
enum class ConstraintRule {
  Lycoris,  ///< lycoris-lora: n = ||Q||_F + 1e-8; if c > 0 and n > c then Q <- (Q c) / n
  Kohya,    ///< kohya sd-scripts: n = ||Q||_F; Q <- Q ((min(n, c) + 1e-8) / (n + 1e-8)), always
};

/// A module's norm constraint, as its owner decides it.
template <class Scalar>
struct Constraint {
  double radius = 0.0;  ///< c = alpha * out (a Python float in both trainers: double here too)
  Scalar norm = 0;      ///< LyCORIS: ||Q||_F + 1e-8; kohya: ||Q||_F; all blocks together
  bool active = false;  ///< Q was scaled: LyCORIS c > 0 and n > c; kohya n > c (so c <= 0 too)
  Scalar factor = 1;    ///< what Q was multiplied by (1 when inactive)
};

/// Applies a module's norm constraint to packed generators in place and says what it did.
/// `alpha` is the module's saved alpha, `out` its output channels (k*b). ||Q||_F =
/// sqrt(2 sum theta^2) (Q's diagonal is exactly zero), summed in double and rounded once to
/// Scalar (torch reduces float32 in float: the two differ by a few ulps, far below any threshold
/// a fixture sits near). The radius is rounded to Scalar before use, as torch does with a Python
/// float against a float32 tensor. LyCORIS: theta <- (theta * c) / n; kohya: theta <- theta *
/// ((min(n, c) + 1e-8) / (n + 1e-8)), the factor rounded first, as each computes it.
template <class Scalar>
Constraint<Scalar> apply_constraint(GeneratorView<Scalar> theta, double alpha, Index out,
                                    ConstraintRule rule = ConstraintRule::Lycoris) {
  Constraint<Scalar> result;
  result.radius = alpha * static_cast<double>(out);
  double sum = 0.0;
  for (Index g = 0; g < theta.count(); ++g)
    for (Index k = 0; k < theta.packed(); ++k) {
      const double v = static_cast<double>(theta.row(g)[k]);
      sum += v * v;
    }
  const auto norm = static_cast<Scalar>(std::sqrt(2.0 * sum));
  const auto radius = static_cast<Scalar>(result.radius);
  const auto tiny = static_cast<Scalar>(1e-8);
  if (rule == ConstraintRule::Lycoris) {
    result.norm = norm + tiny;
    result.active = result.radius > 0.0 && result.norm > radius;
    if (result.active) {
      result.factor = radius / result.norm;
      for (Index g = 0; g < theta.count(); ++g)
        for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = (theta.row(g)[k] * radius) / result.norm;
    }
    return result;
  }
  result.norm = norm;
  result.active = norm > radius;
  result.factor = (std::min(norm, radius) + tiny) / (norm + tiny);
  for (Index g = 0; g < theta.count(); ++g)
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] *= result.factor;
  return result;
}

/// The argument checks both module kinds share: `module` names the kind in the messages
/// ("LyCORIS", "LyCORIS BOFT"), `shape` its blocks ("k=4 blocks of b=8"). Throws
/// std::invalid_argument for a null `oft_blocks` or a rescale that is neither empty nor one
/// factor per output channel, std::domain_error for a non-finite alpha or rescale factor.
template <class Scalar>
void check_module_arguments(const char* module, const std::string& shape, const Scalar* oft_blocks,
                            double alpha, const std::vector<Scalar>& rescale, Index out) {
  detail::require(oft_blocks != nullptr, module, " oft_blocks: null pointer");
  detail::require_domain(std::isfinite(alpha), module, " alpha ", alpha, " is not finite");
  detail::require(rescale.empty() || static_cast<Index>(rescale.size()) == out, module,
                  " rescale has ", rescale.size(), " factors, but the module has out=", out,
                  " channels (", shape, ")");
  for (const Scalar v : rescale)
    detail::require_domain(std::isfinite(static_cast<double>(v)), module, " rescale holds ", v);
}

/// d theta_c -> d theta through the constraint theta_c = f(theta) theta (in place), theta the
/// raw generators (B - B^T) before it: d theta = f d theta_c + f'(n) <theta, d theta_c> dn/dtheta,
/// n = ||Q||_F = sqrt(2 sum theta^2). LyCORIS: f = c / (n + 1e-8); kohya: f = (c + 1e-8) /
/// (n + 1e-8) where it binds. Inactive: f = 1 (kohya's is (n + 1e-8) / (n + 1e-8) there), nothing
/// to do.
template <class Scalar>
void constraint_backward(const Constraint<Scalar>& constraint, ConstraintRule rule,
                         const Generators<Scalar>& raw_theta, Generators<Scalar>& dtheta) {
  if (!constraint.active) return;
  double sum = 0.0, dot = 0.0;
  for (Index g = 0; g < dtheta.count(); ++g)
    for (Index k = 0; k < dtheta.packed(); ++k) {
      const double t = static_cast<double>(raw_theta.row(g)[k]);
      sum += t * t;
      dot += t * static_cast<double>(dtheta.row(g)[k]);
    }
  const double norm = std::sqrt(2.0 * sum);  // ||Q||_F
  // The radius and 1e-8 as the forward used them: rounded to Scalar.
  const double tiny = static_cast<double>(static_cast<Scalar>(1e-8));
  const double radius = static_cast<double>(static_cast<Scalar>(constraint.radius));
  const double numerator = rule == ConstraintRule::Kohya ? radius + tiny : radius;
  const double df_dnorm = -numerator / ((norm + tiny) * (norm + tiny));
  const double f = static_cast<double>(constraint.factor);
  // f'(n) <theta, d theta_c> dn/dtheta_k = f'(n) dot 2 theta_k / n; at Q = 0 (theta = 0) the
  // term vanishes with theta.
  const double along = norm == 0.0 ? 0.0 : df_dnorm * dot * 2.0 / norm;
  for (Index g = 0; g < dtheta.count(); ++g)
    for (Index k = 0; k < dtheta.packed(); ++k) {
      const double t = static_cast<double>(raw_theta.row(g)[k]);
      dtheta.row(g)[k] = static_cast<Scalar>(f * static_cast<double>(dtheta.row(g)[k]) + along * t);
    }
}

/// dL/dB for each dense block B (b x b, row-major, one per generator of `dtheta`) from the
/// packed dL/dtheta of Q = B - B^T: theta_(p,q) = B_pq - B_qp, so dL/dB_pq = dtheta_(p,q) and
/// dL/dB_qp = -dtheta_(p,q) above the diagonal, and the diagonal (which Q never sees) gets 0.
template <class Scalar>
void dense_block_gradients(const Generators<Scalar>& dtheta, Index b, Scalar* d_blocks) {
  for (Index g = 0; g < dtheta.count(); ++g) {
    Scalar* block = d_blocks + g * b * b;
    for (Index p = 0; p < b; ++p) {
      block[p * b + p] = 0;
      for (Index q = p + 1; q < b; ++q) {
        const Scalar v = dtheta.row(g)[packed_index(p, q, b)];
        block[p * b + q] = v;
        block[q * b + p] = -v;
      }
    }
  }
}

/// One LyCORIS diag-OFT module: R from its dense blocks and alpha, with its rescale and
/// multiplier, over `blocks * block_size` output channels. Float or double (LyCORIS computes in
/// float32; double is for references and gradient checks).
template <class Scalar_>
class DiagOft {
 public:
  using Scalar = Scalar_;
  static_assert(std::is_floating_point_v<Scalar>, "oft::lycoris::DiagOft needs float or double");

  /// `oft_blocks`: blocks x b x b scalars, row-major (LyCORIS's [k, b, b]); `alpha`: the saved
  /// constraint (<= 0: none for LyCORIS); `rescale`: empty or one factor per output channel;
  /// `multiplier`: LyCORIS's s; `rule`: whose constraint rule (ConstraintRule::Kohya for kohya
  /// sd-scripts' files). Throws std::invalid_argument for a bad shape or a rescale of another length,
  /// std::domain_error for non-finite blocks, alpha, rescale or multiplier.
  DiagOft(Index blocks, Index block_size, const Scalar* oft_blocks, double alpha,
          std::vector<Scalar> rescale = {}, double multiplier = 1.0,
          ConstraintRule rule = ConstraintRule::Lycoris)
      : spec_(checked_spec(blocks, block_size)),
        rotation_(spec_, ExactCayley{}),
        alpha_(alpha),
        rule_(rule),
        rescale_(std::move(rescale)) {
    check_module_arguments("LyCORIS", detail::message("k=", blocks, " blocks of b=", block_size),
                           oft_blocks, alpha, rescale_, out_features());
    theta_ = skew_from_blocks(oft_blocks, blocks, block_size);
    raw_theta_ = theta_;
    constraint_ = apply_constraint(theta_.view(), alpha_, out_features(), rule_);
    rotation_.set_generators(theta_);
    set_multiplier(multiplier);
  }

  Index out_features() const { return spec_.features(); }
  const BlockSpec& spec() const { return spec_; }
  double alpha() const { return alpha_; }
  ConstraintRule constraint_rule() const { return rule_; }
  const std::vector<Scalar>& rescale() const { return rescale_; }
  bool rescaled() const { return !rescale_.empty(); }
  const Constraint<Scalar>& constraint() const { return constraint_; }
  /// oft's generators of the constrained Q (what R is computed from).
  const Generators<Scalar>& generators() const { return theta_; }
  /// R = blockdiag(R_i), s = 1, no rescale: oft's operator (apply gives Z R).
  const BlockOrthogonal<Scalar, ExactCayley>& rotation() const { return rotation_; }

  double multiplier() const { return multiplier_; }
  /// LyCORIS's multiplier s (M = s R + (1 - s) I). Throws std::domain_error unless finite.
  void set_multiplier(double s) {
    detail::require_domain(std::isfinite(s), "LyCORIS multiplier ", s, " is not finite");
    multiplier_ = s;
  }

  /// M_i = s R_i + (1 - s) I (b x b), block i: the dense reference of what apply_output uses.
  RowMatrix<Scalar> block(Index i) const {
    RowMatrix<Scalar> m = rotation_.block(i) * static_cast<Scalar>(multiplier_);
    m.diagonal().array() += static_cast<Scalar>(1.0 - multiplier_);
    return m;
  }

  /// max_i ||M_i^T M_i - I||_2 (in double): 0 up to rounding for s in {0, 1}, and growing with
  /// |s (1 - s)| otherwise (the blend is not a rotation); rescale not included.
  double orthogonality_error() const {
    double worst = 0.0;
    for (Index i = 0; i < spec_.blocks; ++i) worst = std::max(worst, oft::orthogonality_error(block(i)));
    return worst;
  }

  /// The output-side map of the layer output Z (N x out, any row stride):
  /// out = (s (Z R) + (1 - s) Z) diag(rescale), i.e. each token's channel block z_i -> z_i M_i,
  /// then channel j times rescale_j. `out` may not overlap `z`; allocates one N x out temporary
  /// when s != 1 (meant for merging and checking, not for a training loop).
  void apply_output(ConstMatrixView<Scalar> z, MatrixView<Scalar> out) const {
    detail::require(z.cols() == out_features() && out.rows() == z.rows() && out.cols() == z.cols(),
                    "LyCORIS diag-OFT apply_output: Z is ", z.rows(), "x", z.cols(), " and out ",
                    out.rows(), "x", out.cols(), ", both must be N x out with out=", out_features());
    const auto s = static_cast<Scalar>(multiplier_);
    if (multiplier_ == 1.0) {
      rotation_.apply(z, out);
    } else {
      RowMatrix<Scalar> rotated(z.rows(), z.cols());
      rotation_.apply(z, view(rotated));
      out.map() = rotated * s + z.map() * static_cast<Scalar>(1.0 - multiplier_);
    }
    if (rescaled())
      for (Index t = 0; t < out.rows(); ++t)
        for (Index j = 0; j < out.cols(); ++j) out(t, j) *= rescale_[static_cast<std::size_t>(j)];
  }

  /// Vector-Jacobian product of apply_output for the upstream gradient `d_out` (N x out) at the
  /// layer output `z`: writes d_z = dL/dZ (skipped for an empty view; may not overlap the
  /// inputs), d_blocks = dL/d oft_blocks (blocks * b * b scalars, row-major as the file's; the
  /// diagonals are 0; skipped when null), d_rescale = dL/d rescale (out scalars; skipped when
  /// null; requires a rescaled module). Everything is overwritten, not accumulated. Allocates
  /// its temporaries (a training step of a LyCORIS module, not a hot loop). Throws
  /// std::invalid_argument on a shape mismatch or a d_rescale without rescale.
  void backward_output(ConstMatrixView<Scalar> z, ConstMatrixView<Scalar> d_out, MatrixView<Scalar> d_z,
                       Scalar* d_blocks, Scalar* d_rescale) const {
    const Index out = out_features(), n = z.rows(), b = spec_.block_size;
    detail::require(z.cols() == out && d_out.rows() == n && d_out.cols() == out &&
                        (d_z.empty() || (d_z.rows() == n && d_z.cols() == out)),
                    "LyCORIS diag-OFT backward: Z is ", z.rows(), "x", z.cols(), ", dOut ", d_out.rows(),
                    "x", d_out.cols(), ", dZ ", d_z.rows(), "x", d_z.cols(), "; all must be N x out, out=", out);
    detail::require(d_rescale == nullptr || rescaled(),
                    "LyCORIS diag-OFT backward: d_rescale asked of a module without rescale");
    const auto s = static_cast<Scalar>(multiplier_);
    const auto blend = static_cast<Scalar>(1.0 - multiplier_);
    if (d_rescale != nullptr) {  // d rescale_j = sum_t (s (Z R) + (1 - s) Z)(t, j) dOut(t, j)
      RowMatrix<Scalar> rotated(n, out);
      rotation_.apply(z, view(rotated));
      for (Index j = 0; j < out; ++j) {
        Scalar sum = 0;
        for (Index t = 0; t < n; ++t) sum += (rotated(t, j) * s + z(t, j) * blend) * d_out(t, j);
        d_rescale[j] = sum;
      }
    }
    RowMatrix<Scalar> g = d_out.map();  // dL/d(s Z R + (1 - s) Z)
    if (rescaled())
      for (Index j = 0; j < out; ++j) g.col(j) *= rescale_[static_cast<std::size_t>(j)];
    const RowMatrix<Scalar> g_rotated = g * s;  // dL/d(Z R)
    RowMatrix<Scalar> dz_rotated(d_z.empty() ? 0 : n, d_z.empty() ? 0 : out);
    Generators<Scalar> dtheta(spec_.blocks, b);
    std::vector<Scalar> workspace(static_cast<std::size_t>(rotation_.workspace_size()));
    rotation_.backward(z, view(g_rotated), d_z.empty() ? MatrixView<Scalar>{} : view(dz_rotated),
                       d_blocks == nullptr ? GeneratorView<Scalar>{} : dtheta.view(), workspace.data(),
                       rotation_.workspace_size());
    if (!d_z.empty()) d_z.map() = dz_rotated + g * blend;
    if (d_blocks == nullptr) return;
    constraint_backward(constraint_, rule_, raw_theta_, dtheta);
    dense_block_gradients(dtheta, b, d_blocks);
  }

  /// The gradients of a loss of the merged weight, given d_merged = dL/dW' (out x cols): returns
  /// dL/dW of the base, and writes d_blocks and d_rescale as backward_output (W'^T is
  /// apply_output of W^T).
  RowMatrix<Scalar> backward_merge(ConstMatrixView<Scalar> weight, ConstMatrixView<Scalar> d_merged,
                                   Scalar* d_blocks, Scalar* d_rescale) const {
    require_base(weight.rows(), weight.cols(), "backward_merge");
    detail::require(d_merged.rows() == weight.rows() && d_merged.cols() == weight.cols(),
                    "LyCORIS diag-OFT backward_merge: dW' is ", d_merged.rows(), "x", d_merged.cols(),
                    " but the weight is ", weight.rows(), "x", weight.cols());
    const RowMatrix<Scalar> z = weight.map().transpose();
    const RowMatrix<Scalar> d_out = d_merged.map().transpose();
    RowMatrix<Scalar> d_z(z.rows(), z.cols());
    backward_output(view(z), view(d_out), view(d_z), d_blocks, d_rescale);
    return d_z.transpose();
  }

  /// LyCORIS's merged weight W' = diag(rescale) M^T W for a base weight `weight` of out rows
  /// (a Linear's [out, in]; a conv kernel flattened to [out, in * kh * kw]). Throws
  /// std::invalid_argument naming both shapes when the rows are not the module's out channels.
  RowMatrix<Scalar> merge(ConstMatrixView<Scalar> weight) const {
    require_base(weight.rows(), weight.cols(), "merge");
    // Block i of output channels at a time, W'_i = diag(rescale_i) M_i^T W_i: W is read and W'
    // written once. (Going through apply_output on W^T would transpose the whole weight twice,
    // which was most of a diffusion checkpoint merge's time.)
    const Index b = spec_.block_size, blocks = spec_.blocks;
    RowMatrix<Scalar> merged(weight.rows(), weight.cols());
    OFT_OMP(parallel for schedule(static) if (weight.rows() * weight.cols() >= Index{1} << 16))
    for (Index i = 0; i < blocks; ++i) {
      auto rows = merged.middleRows(i * b, b);
      rows.noalias() = block(i).transpose() * weight.map().middleRows(i * b, b);
      if (rescaled())
        for (Index p = 0; p < b; ++p) rows.row(p) *= rescale_[static_cast<std::size_t>(i * b + p)];
    }
    return merged;
  }

  /// LyCORIS's default forward of a Linear layer: X W'^T + bias, computed as the output-side map
  /// of X W^T plus the bias (which LyCORIS neither rotates nor rescales). `bias` is null or out
  /// values. Throws std::invalid_argument on a shape mismatch.
  RowMatrix<Scalar> forward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> weight,
                            const Scalar* bias = nullptr) const {
    RowMatrix<Scalar> z = base_output(x, weight, nullptr);
    RowMatrix<Scalar> out(z.rows(), z.cols());
    apply_output(view(std::as_const(z)), view(out));
    if (bias != nullptr)
      for (Index t = 0; t < out.rows(); ++t)
        for (Index j = 0; j < out.cols(); ++j) out(t, j) += bias[j];
    return out;
  }

  /// LyCORIS's bypass_mode forward of a Linear layer: the output-side map of the whole layer
  /// output, X W^T + bias (so the bias is rotated and rescaled, unlike forward() and the merged
  /// weight). lycoris-lora 4.1.3 computes this at s = 1; at other s its bypass path raises on a
  /// 2-D input and, with rescale, adds (rescale - 1) Z instead of scaling (docs/dialects.md): the
  /// formula here is the consistent one at every s.
  RowMatrix<Scalar> forward_bypass(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> weight,
                                   const Scalar* bias = nullptr) const {
    RowMatrix<Scalar> z = base_output(x, weight, bias);
    RowMatrix<Scalar> out(z.rows(), z.cols());
    apply_output(view(std::as_const(z)), view(out));
    return out;
  }

 private:
  static BlockSpec checked_spec(Index blocks, Index block_size) {
    detail::require(blocks >= 1 && block_size >= 1, "LyCORIS oft_blocks [", blocks, ", ",
                    block_size, ", ", block_size, "]: needs at least one block of size b >= 1");
    BlockSpec spec{blocks, block_size, false};
    spec.validate();
    return spec;
  }

  void require_base(Index rows, Index cols, const char* what) const {
    detail::require(rows == out_features() && cols >= 1, "LyCORIS diag-OFT ", what,
                    ": base weight is ", rows, "x", cols, ", but the module rotates out=",
                    out_features(), " output channels (k=", spec_.blocks, " blocks of b=",
                    spec_.block_size, ")");
  }

  RowMatrix<Scalar> base_output(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> weight,
                                const Scalar* bias) const {
    require_base(weight.rows(), weight.cols(), "forward");
    detail::require(x.cols() == weight.cols(), "LyCORIS diag-OFT forward: X is ", x.rows(), "x",
                    x.cols(), " but the weight is ", weight.rows(), "x", weight.cols());
    RowMatrix<Scalar> z = x.map() * weight.map().transpose();
    if (bias != nullptr)
      for (Index t = 0; t < z.rows(); ++t)
        for (Index j = 0; j < z.cols(); ++j) z(t, j) += bias[j];
    return z;
  }

  BlockSpec spec_;
  BlockOrthogonal<Scalar, ExactCayley> rotation_;
  double alpha_;
  ConstraintRule rule_;
  std::vector<Scalar> rescale_;
  Generators<Scalar> theta_;      // after the constraint: what R is computed from
  Generators<Scalar> raw_theta_;  // B - B^T before it (the constraint's gradient needs it)
  Constraint<Scalar> constraint_;
  double multiplier_ = 1.0;
};

/// LyCORIS's butterfly permutation for BOFT stage `stage` over blocks of `block_size` (even)
/// channels: the original channel that sits at `position` once the stage has gathered its
/// blocks. Stage i works in groups of 2k = 2^i b consecutive channels, k = 2^i b / 2; a group's
/// channel g k + j (half g in {0, 1}, j < k) moves to position 2 j + g of the group, so each
/// b-block of the gathered order pairs channels j and k + j of its group, b/2 pairs per block
/// (lycoris/functional/boft.py, _diff_weight: unflatten(0, (-1, 2, k)).transpose(1, 2)).
inline Index boft_source_channel(Index position, Index stage, Index block_size) {
  const Index half = (Index{1} << stage) * (block_size / 2);  // k
  const Index group = position / (2 * half), within = position % (2 * half);
  return group * 2 * half + (within % 2) * half + within / 2;
}

/// One LyCORIS BOFT module (algo "boft"), exactly as lycoris-lora 4.1.3 computes it: read from
/// `lycoris/modules/boft.py` (ButterflyOFTModule: __init__, make_weight, forward) and
/// `lycoris/functional/boft.py` (_diff_weight, the CPU path of diff_weight) with
/// `lycoris/functional/diag_oft.py` (get_r). A module stores `oft_blocks` [m, N, b, b]: m
/// butterfly stages of N dense b x b blocks over the layer's out = N b OUTPUT channels (LyCORIS
/// makes b even and N a power of two, m = log2(N) + 1), a scalar `alpha` and optionally
/// `rescale` [out, 1, ...]. In float32:
///
///   Q_{i,d} = B_{i,d} - B_{i,d}^T           (no 1/2)
///   n = ||Q||_F + 1e-8 over ALL m N blocks; c = alpha * out; if c > 0 and n > c: Q <- Q c / n
///   R_{i,d} = (I + Q_{i,d})(I - Q_{i,d})^-1
///   M_{i,d} = s R_{i,d} + (1 - s) I         the multiplier s blends EVERY STAGE (not the product)
///   T_i = P_i^T blockdiag_d(M_{i,d}) P_i    P_i gathers channel boft_source_channel(p, i, b) to p
///   merge:   W' = diag(rescale) T_{m-1} ... T_1 T_0 W   along W's dim 0 (LyCORIS multiplies each
///            gathered block of rows by R from the LEFT, einsum "b i j, b j ... -> b i ...":
///            R, where its diag-OFT takes R^T), stage 0 first
///   forward: X W'^T + bias (the default mode; the bias is neither rotated nor rescaled)
///
/// In oft's output-side terms a token's output row z goes to z T_0^T ... T_{m-1}^T diag(rescale).
/// Stage i needs out to be a multiple of 2^i b, so N must be a multiple of 2^(m-1): a block count
/// that does not factor so is refused, as is an odd b (LyCORIS's pairing needs b/2 pairs).
///
///   oft::lycoris::Boft<float> m(stages, blocks, b, oft_blocks.data(), alpha, rescale, 1.0);
///   oft::RowMatrix<float> merged = m.merge(oft::view(w));  // what LyCORIS's merge_to writes
///
/// Rounding: LyCORIS forms (I - Q)^-1 explicitly and computes W + (rescale T W - W); oft solves
/// by LU and scales T W: the two agree within float rounding (tests/dialects states the bound).
///
/// Gradients: backward_merge gives dL/dW, dL/d oft_blocks and dL/d rescale of a loss of the
/// merged weight, through everything LyCORIS's autograd sees (checked against it and against
/// finite differences in tests/dialects).
template <class Scalar_>
class Boft {
 public:
  using Scalar = Scalar_;
  static_assert(std::is_floating_point_v<Scalar>, "oft::lycoris::Boft needs float or double");

  /// `oft_blocks`: stages x blocks x b x b scalars, row-major (LyCORIS's [m, N, b, b]);
  /// `alpha`, `rescale`, `multiplier` as DiagOft's. Throws std::invalid_argument for a shape
  /// that is not a butterfly (m, N, b >= 1, b even, N a multiple of 2^(m-1)) or a rescale of
  /// another length, std::domain_error for non-finite values.
  Boft(Index stages, Index blocks, Index block_size, const Scalar* oft_blocks, double alpha,
       std::vector<Scalar> rescale = {}, double multiplier = 1.0)
      : stages_(check_shape(stages, blocks, block_size)),
        spec_{blocks, block_size, false},
        alpha_(alpha),
        rescale_(std::move(rescale)) {
    check_module_arguments("LyCORIS BOFT", detail::message("N=", blocks, " blocks of b=", block_size),
                           oft_blocks, alpha, rescale_, out_features());
    for (Index i = 0; i < stages * blocks * block_size * block_size; ++i)
      detail::require_domain(std::isfinite(static_cast<double>(oft_blocks[i])), "LyCORIS BOFT oft_blocks[",
                             i, "] is ", oft_blocks[i]);
    theta_ = skew_from_blocks(oft_blocks, stages * blocks, block_size);
    raw_theta_ = theta_;
    constraint_ = apply_constraint(theta_.view(), alpha_, out_features());
    for (Index i = 0; i < stages; ++i) {
      Generators<Scalar> stage_theta(blocks, block_size);
      for (Index d = 0; d < blocks; ++d)
        std::copy(theta_.row(i * blocks + d), theta_.row(i * blocks + d) + theta_.packed(), stage_theta.row(d));
      rotations_.emplace_back(spec_, ExactCayley{});
      rotations_.back().set_generators(stage_theta);
    }
    set_multiplier(multiplier);
  }

  Index stages() const { return stages_; }                   ///< m
  Index blocks() const { return spec_.blocks; }              ///< N, per stage
  Index block_size() const { return spec_.block_size; }      ///< b
  Index out_features() const { return spec_.features(); }    ///< N b
  double alpha() const { return alpha_; }
  const std::vector<Scalar>& rescale() const { return rescale_; }
  bool rescaled() const { return !rescale_.empty(); }
  const Constraint<Scalar>& constraint() const { return constraint_; }
  /// oft's generators of the constrained Q, m N rows (stage i's block d at row i N + d).
  const Generators<Scalar>& generators() const { return theta_; }

  double multiplier() const { return multiplier_; }
  /// LyCORIS's multiplier s (each stage's M = s R + (1 - s) I). Throws std::domain_error
  /// unless finite.
  void set_multiplier(double s) {
    detail::require_domain(std::isfinite(s), "LyCORIS BOFT multiplier ", s, " is not finite");
    multiplier_ = s;
  }

  /// R_{i,d} (b x b) of stage i, block d: LyCORIS's (I + Q)(I - Q)^-1, s = 1.
  RowMatrix<Scalar> rotation(Index stage, Index block) const {
    check_index(stage, block);
    return rotations_[static_cast<std::size_t>(stage)].block(block);
  }

  /// M_{i,d} = s R_{i,d} + (1 - s) I: what stage i multiplies its gathered block d by (left).
  RowMatrix<Scalar> block(Index stage, Index block) const {
    RowMatrix<Scalar> m = rotation(stage, block) * static_cast<Scalar>(multiplier_);
    m.diagonal().array() += static_cast<Scalar>(1.0 - multiplier_);
    return m;
  }

  /// max over stages and blocks of ||M^T M - I||_2 (in double): 0 up to rounding for s in
  /// {0, 1}, the blend's error otherwise; rescale not included.
  double orthogonality_error() const {
    double worst = 0.0;
    for (Index i = 0; i < stages_; ++i)
      for (Index d = 0; d < spec_.blocks; ++d) worst = std::max(worst, oft::orthogonality_error(block(i, d)));
    return worst;
  }

  /// In place on `rows` (out x cols, any row stride): rows <- diag(rescale) T_{m-1} ... T_0 rows.
  /// Allocates one out x cols temporary.
  void apply_rows(MatrixView<Scalar> rows) const {
    detail::require(rows.rows() == out_features(), "LyCORIS BOFT: ", rows.rows(), "x", rows.cols(),
                    " rows given, but the module rotates out=", out_features(), " channels");
    const Index b = spec_.block_size, out = out_features();
    RowMatrix<Scalar> gathered(out, rows.cols());
    for (Index i = 0; i < stages_; ++i) {
      for (Index p = 0; p < out; ++p) gathered.row(p) = rows.map().row(boft_source_channel(p, i, b));
      for (Index d = 0; d < spec_.blocks; ++d) {
        const RowMatrix<Scalar> m = block(i, d);
        gathered.middleRows(d * b, b) = (m * gathered.middleRows(d * b, b)).eval();
      }
      for (Index p = 0; p < out; ++p) rows.map().row(boft_source_channel(p, i, b)) = gathered.row(p);
    }
    if (rescaled())
      for (Index j = 0; j < out; ++j) rows.map().row(j) *= rescale_[static_cast<std::size_t>(j)];
  }

  /// LyCORIS's merged weight diag(rescale) T W for a base weight of out rows (a Linear's
  /// [out, in]; a conv kernel flattened to [out, in * kh * kw]). Throws std::invalid_argument
  /// naming both shapes when the rows are not the module's out channels.
  RowMatrix<Scalar> merge(ConstMatrixView<Scalar> weight) const {
    require_base(weight.rows(), weight.cols(), "merge");
    RowMatrix<Scalar> merged = weight.map();
    apply_rows(view(merged));
    return merged;
  }

  /// The gradients of a loss of the merged weight, given d_merged = dL/dW' (out x cols, as the
  /// weight): returns dL/dW of the base, and writes d_blocks = dL/d oft_blocks (m N b b scalars,
  /// row-major as the file's; diagonals 0; skipped when null) and d_rescale (out scalars;
  /// skipped when null; needs a rescaled module), overwritten. Through everything LyCORIS's
  /// autograd sees: the rescale, each stage's blend and permutation (stage i's input X_i gives
  /// dM = dY X_gathered^T, dX = P^T M^T dY), the Cayley transform (dQ = (I + R)^T dR (I - Q)^-T),
  /// the constraint over all blocks where active, and Q = B - B^T. Allocates (m + 1) out x cols
  /// temporaries. Throws std::invalid_argument on a shape mismatch.
  RowMatrix<Scalar> backward_merge(ConstMatrixView<Scalar> weight, ConstMatrixView<Scalar> d_merged,
                                   Scalar* d_blocks, Scalar* d_rescale) const {
    require_base(weight.rows(), weight.cols(), "backward_merge");
    detail::require(d_merged.rows() == weight.rows() && d_merged.cols() == weight.cols(),
                    "LyCORIS BOFT backward_merge: dW' is ", d_merged.rows(), "x", d_merged.cols(),
                    " but the weight is ", weight.rows(), "x", weight.cols());
    detail::require(d_rescale == nullptr || rescaled(),
                    "LyCORIS BOFT backward_merge: d_rescale asked of a module without rescale");
    const Index b = spec_.block_size, out = out_features(), cols = weight.cols(), n = spec_.blocks;
    // Forward again, keeping each stage's gathered input.
    std::vector<RowMatrix<Scalar>> gathered(static_cast<std::size_t>(stages_), RowMatrix<Scalar>(out, cols));
    RowMatrix<Scalar> x = weight.map();
    for (Index i = 0; i < stages_; ++i) {
      RowMatrix<Scalar>& g = gathered[static_cast<std::size_t>(i)];
      for (Index p = 0; p < out; ++p) g.row(p) = x.row(boft_source_channel(p, i, b));
      for (Index d = 0; d < n; ++d) {
        const RowMatrix<Scalar> y = block(i, d) * g.middleRows(d * b, b);
        for (Index r = 0; r < b; ++r) x.row(boft_source_channel(d * b + r, i, b)) = y.row(r);
      }
    }
    RowMatrix<Scalar> dx = d_merged.map();
    if (rescaled())
      for (Index j = 0; j < out; ++j) {
        const auto r = rescale_[static_cast<std::size_t>(j)];
        if (d_rescale != nullptr) d_rescale[j] = x.row(j).dot(dx.row(j));
        dx.row(j) *= r;
      }
    Generators<Scalar> dtheta(stages_ * n, b);
    SquareMatrix<Scalar> q(b, b), r(b, b), dr(b, b), dq(b, b);
    const auto s = static_cast<Scalar>(multiplier_);
    RowMatrix<Scalar> dy(out, cols);
    for (Index i = stages_ - 1; i >= 0; --i) {
      const RowMatrix<Scalar>& g = gathered[static_cast<std::size_t>(i)];
      for (Index p = 0; p < out; ++p) dy.row(p) = dx.row(boft_source_channel(p, i, b));
      for (Index d = 0; d < n; ++d) {
        const auto dy_block = dy.middleRows(d * b, b);
        const RowMatrix<Scalar> dg = block(i, d).transpose() * dy_block;
        for (Index row = 0; row < b; ++row) dx.row(boft_source_channel(d * b + row, i, b)) = dg.row(row);
        if (d_blocks == nullptr) continue;
        dr = (dy_block * g.middleRows(d * b, b).transpose()) * s;  // dL/dR = s dL/dM
        unpack_skew(theta_.row(i * n + d), b, q);
        r = rotation(i, d);
        detail::ParameterizationOps<ExactCayley, SquareMatrix<Scalar>>::rotation_vjp(q, r, dr, dq);
        Scalar* packed = dtheta.row(i * n + d);
        for (Index p = 0; p < b; ++p)
          for (Index c = p + 1; c < b; ++c) packed[packed_index(p, c, b)] = dq(p, c) - dq(c, p);
      }
    }
    if (d_blocks != nullptr) {
      constraint_backward(constraint_, ConstraintRule::Lycoris, raw_theta_, dtheta);
      dense_block_gradients(dtheta, b, d_blocks);
    }
    return dx;
  }

  /// LyCORIS's default forward of a Linear layer, X W'^T + bias, computed as the output-side map
  /// of Z = X W^T (each token's row z -> z T^T diag(rescale)) plus the bias, which LyCORIS
  /// neither rotates nor rescales. `bias` is null or out values.
  RowMatrix<Scalar> forward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> weight,
                            const Scalar* bias = nullptr) const {
    require_base(weight.rows(), weight.cols(), "forward");
    detail::require(x.cols() == weight.cols(), "LyCORIS BOFT forward: X is ", x.rows(), "x", x.cols(),
                    " but the weight is ", weight.rows(), "x", weight.cols());
    RowMatrix<Scalar> zt = weight.map() * x.map().transpose();  // Z^T: out x N
    apply_rows(view(zt));
    RowMatrix<Scalar> out = zt.transpose();
    if (bias != nullptr)
      for (Index t = 0; t < out.rows(); ++t)
        for (Index j = 0; j < out.cols(); ++j) out(t, j) += bias[j];
    return out;
  }

 private:
  static Index check_shape(Index stages, Index blocks, Index block_size) {
    detail::require(stages >= 1 && blocks >= 1 && block_size >= 2 && block_size % 2 == 0,
                    "LyCORIS BOFT oft_blocks [", stages, ", ", blocks, ", ", block_size, ", ", block_size,
                    "]: needs m >= 1 stages of N >= 1 blocks of an even size b >= 2");
    detail::require_block_size(block_size, "LyCORIS BOFT block size");
    detail::require(stages <= 62 && blocks % (Index{1} << (stages - 1)) == 0, "LyCORIS BOFT oft_blocks [",
                    stages, ", ", blocks, ", ", block_size, ", ", block_size, "]: N=", blocks,
                    " blocks do not factor into m=", stages, " butterfly stages (stage i pairs channels across ",
                    "2^i b; N must be a multiple of 2^(m-1))");
    detail::require(blocks <= std::numeric_limits<Index>::max() / block_size / block_size / stages,
                    "LyCORIS BOFT oft_blocks: too many values");
    return stages;
  }

  void check_index(Index stage, Index block) const {
    detail::require(stage >= 0 && stage < stages_ && block >= 0 && block < spec_.blocks,
                    "LyCORIS BOFT: no block (", stage, ", ", block, ") in [", stages_, ", ", spec_.blocks, "]");
  }

  void require_base(Index rows, Index cols, const char* what) const {
    detail::require(rows == out_features() && cols >= 1, "LyCORIS BOFT ", what, ": base weight is ", rows,
                    "x", cols, ", but the module rotates out=", out_features(), " output channels (N=",
                    spec_.blocks, " blocks of b=", spec_.block_size, ")");
  }

  Index stages_;
  BlockSpec spec_;
  double alpha_;
  std::vector<Scalar> rescale_;
  Generators<Scalar> theta_;      // after the constraint: what R is computed from
  Generators<Scalar> raw_theta_;  // B - B^T before it (the constraint's gradient needs it)
  Constraint<Scalar> constraint_;
  std::vector<BlockOrthogonal<Scalar, ExactCayley>> rotations_;
  double multiplier_ = 1.0;
};

}  // namespace oft::lycoris

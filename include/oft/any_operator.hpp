#pragma once
/// \file any_operator.hpp
/// Operators whose parameterization is chosen at run time (from an adapter's config, a command
/// line, a Python argument) without a switch over template parameterizations in user code:
///
///   oft::AnyPolicy parameterization = oft::CayleyNeumann{3};              // or read from a config
///   oft::AnyBlockOrthogonal<float> rot(spec, parameterization);
///   rot.set_generators(theta);  rot.apply(x, y);  rot.backward(x, dy, dx, dtheta, ws);
///
/// Each object holds one BlockOrthogonal<Scalar, P> (or OftLinear<Scalar, P>, Butterfly<Scalar, P>)
/// in a std::variant and forwards every call with one std::visit: the dispatch costs one indirect
/// branch per call, never per element, so the templated hot path runs unchanged (the results are
/// bit-identical to the templated operator's; the tests check it). any_orthogonal.hpp goes one
/// step further and chooses the family (block-diagonal, butterfly, Householder, Givens) at run time.

#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "block_orthogonal.hpp"
#include "butterfly.hpp"
#include "cayley.hpp"
#include "cayley_neumann.hpp"
#include "exponential.hpp"
#include "linear.hpp"
#include "peft_polynomial.hpp"

namespace oft {

/// Every CPU parameterization, as one value type (PEFT's polynomial included, so an adapter's
/// config maps to one value).
using AnyPolicy = std::variant<ExactCayley, CayleyNeumann, CayleyNeumannTolerance, MatrixExponential,
                               peft::NeumannBranch>;

/// The parameterization's `name` ("cayley", "cayley_neumann", ...).
inline std::string policy_name(const AnyPolicy& parameterization) {
  return std::visit([](const auto& p) { return std::string(std::decay_t<decltype(p)>::name); },
                    parameterization);
}

namespace detail {
/// std::variant<Operator<Scalar, P>...> for the parameterizations P of AnyPolicy.
template <template <class, class, class> class Operator, class Scalar, class Parameterizations>
struct OperatorVariant;
template <template <class, class, class> class Operator, class Scalar, class... Parameterizations>
struct OperatorVariant<Operator, Scalar, std::variant<Parameterizations...>> {
  using type = std::variant<Operator<Scalar, Parameterizations, oft::cpu>...>;
};
}  // namespace detail

/// BlockOrthogonal<Scalar, P> for a parameterization P chosen at run time. Same members, same semantics,
/// same exceptions as BlockOrthogonal (see block_orthogonal.hpp).
template <class Scalar>
class AnyBlockOrthogonal {
 public:
  using Variant = typename detail::OperatorVariant<BlockOrthogonal, Scalar, AnyPolicy>::type;

  AnyBlockOrthogonal(const BlockSpec& spec, const AnyPolicy& parameterization)
      : operator_(std::visit(
            [&](const auto& p) -> Variant {
              using P = std::decay_t<decltype(p)>;
              return Variant(std::in_place_type<BlockOrthogonal<Scalar, P, cpu>>, spec, p);
            },
            parameterization)) {}

  AnyPolicy policy() const {
    return visit([](const auto& op) { return AnyPolicy(op.parameterization()); });
  }
  const BlockSpec& spec() const { return visit([](const auto& op) -> const BlockSpec& { return op.spec(); }); }
  Index features() const { return spec().features(); }

  void set_generators(GeneratorView<const Scalar> theta) {
    visit([&](auto& op) { op.set_generators(theta); });
  }
  void set_active_blocks(const std::vector<unsigned char>& active) {
    visit([&](auto& op) { op.set_active_blocks(active); });
  }
  bool block_active(Index i) const { return visit([&](const auto& op) { return op.block_active(i); }); }

  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply(x, y); });
  }
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply_transposed(x, y); });
  }
  void apply_inverse(ConstMatrixView<Scalar> x, MatrixView<Scalar> y, bool transposed = false) const {
    visit([&](const auto& op) { op.apply_inverse(x, y, transposed); });
  }
  Index workspace_size() const { return visit([](const auto& op) { return op.workspace_size(); }); }

  /// bfloat16 activations (float operators only), as BlockOrthogonal's overloads.
  void set_bf16_arithmetic(Bf16Arithmetic arithmetic) {
    visit([&](auto& op) { op.set_bf16_arithmetic(arithmetic); });
  }
  Bf16Arithmetic bf16_arithmetic() const {
    return visit([](const auto& op) { return op.bf16_arithmetic(); });
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    visit([&](const auto& op) { op.apply(x, y); });
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void apply_transposed(ConstMatrixView<bfloat16> x, MatrixView<bfloat16> y) const {
    visit([&](const auto& op) { op.apply_transposed(x, y); });
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace); });
  }
  template <class S = Scalar, class = std::enable_if_t<std::is_same_v<S, float>>>
  void backward(ConstMatrixView<bfloat16> x, ConstMatrixView<bfloat16> dy, MatrixView<bfloat16> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace, workspace_count); });
  }

  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace); });
  }
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace, workspace_count); });
  }
  void backward_from_block_gradients(ConstMatrixView<Scalar> block_gradients,
                                     GeneratorView<Scalar> dtheta) const {
    visit([&](const auto& op) { op.backward_from_block_gradients(block_gradients, dtheta); });
  }

  RowMatrix<Scalar> block(Index i) const { return visit([&](const auto& op) { return op.block(i); }); }
  RowMatrix<Scalar> dense() const { return visit([](const auto& op) { return op.dense(); }); }
  std::vector<double> orthogonality_errors(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    return visit([&](const auto& op) { return op.orthogonality_errors(norm); });
  }
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    return visit([&](const auto& op) { return op.orthogonality_error(norm); });
  }
  PlanSummary plan(Index g) const { return visit([&](const auto& op) { return op.plan(g); }); }
  const Generators<Scalar>& generators() const {
    return visit([](const auto& op) -> const Generators<Scalar>& { return op.generators(); });
  }

  /// The underlying templated operator, for code that wants it (throws std::bad_variant_access
  /// when P is not the held parameterization).
  template <class P>
  BlockOrthogonal<Scalar, P, cpu>& as() { return std::get<BlockOrthogonal<Scalar, P, cpu>>(operator_); }
  template <class P>
  const BlockOrthogonal<Scalar, P, cpu>& as() const {
    return std::get<BlockOrthogonal<Scalar, P, cpu>>(operator_);
  }

 private:
  template <class F>
  decltype(auto) visit(F&& f) { return std::visit(std::forward<F>(f), operator_); }
  template <class F>
  decltype(auto) visit(F&& f) const { return std::visit(std::forward<F>(f), operator_); }

  Variant operator_;
};

/// Butterfly<Scalar, P> (BOFT) for a parameterization P of its blocks chosen at run time. Same
/// members and semantics as Butterfly (see cpu/butterfly.hpp).
template <class Scalar>
class AnyButterfly {
 public:
  using Variant = typename detail::OperatorVariant<Butterfly, Scalar, AnyPolicy>::type;

  AnyButterfly(const ButterflySpec& spec, const AnyPolicy& parameterization)
      : operator_(std::visit(
            [&](const auto& p) -> Variant {
              using P = std::decay_t<decltype(p)>;
              return Variant(std::in_place_type<Butterfly<Scalar, P, cpu>>, spec, p);
            },
            parameterization)) {}

  AnyPolicy policy() const {
    return visit([](const auto& op) { return AnyPolicy(op.factor(0).parameterization()); });
  }
  const ButterflySpec& spec() const {
    return visit([](const auto& op) -> const ButterflySpec& { return op.spec(); });
  }
  Index features() const { return spec().features(); }

  void set_generators(GeneratorView<const Scalar> theta) {
    visit([&](auto& op) { op.set_generators(theta); });
  }
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply(x, y); });
  }
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply_transposed(x, y); });
  }
  void apply_inverse(ConstMatrixView<Scalar> x, MatrixView<Scalar> y, bool transposed = false) const {
    visit([&](const auto& op) { op.apply_inverse(x, y, transposed); });
  }
  Index workspace_size(Index rows) const {
    return visit([&](const auto& op) { return op.workspace_size(rows); });
  }
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace); });
  }
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Scalar* workspace, Index workspace_count) const {
    visit([&](const auto& op) { op.backward(x, dy, dx, dtheta, workspace, workspace_count); });
  }
  SquareMatrix<Scalar> block(Index i, Index g) const {
    return visit([&](const auto& op) { return op.block(i, g); });
  }
  RowMatrix<Scalar> dense() const { return visit([](const auto& op) { return op.dense(); }); }
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    return visit([&](const auto& op) { return op.orthogonality_error(norm); });
  }

  /// The underlying templated operator (throws std::bad_variant_access for another P).
  template <class P>
  Butterfly<Scalar, P, cpu>& as() { return std::get<Butterfly<Scalar, P, cpu>>(operator_); }
  template <class P>
  const Butterfly<Scalar, P, cpu>& as() const { return std::get<Butterfly<Scalar, P, cpu>>(operator_); }

 private:
  template <class F>
  decltype(auto) visit(F&& f) { return std::visit(std::forward<F>(f), operator_); }
  template <class F>
  decltype(auto) visit(F&& f) const { return std::visit(std::forward<F>(f), operator_); }

  Variant operator_;
};

/// OftLinear<Scalar, P> for a parameterization P chosen at run time. Same members and semantics as
/// OftLinear (see linear.hpp).
template <class Scalar>
class AnyOftLinear {
 public:
  using Variant = typename detail::OperatorVariant<OftLinear, Scalar, AnyPolicy>::type;

  AnyOftLinear(ConstMatrixView<Scalar> weight, const Scalar* bias, Index block_size, bool shared,
               const AnyPolicy& parameterization)
      : layer_(std::visit(
            [&](const auto& p) -> Variant {
              using P = std::decay_t<decltype(p)>;
              return Variant(std::in_place_type<OftLinear<Scalar, P, cpu>>, weight, bias,
                             block_size, shared, p);
            },
            parameterization)) {}

  AnyPolicy policy() const {
    return visit([](const auto& layer) { return AnyPolicy(layer.rotation().parameterization()); });
  }
  Index features() const { return visit([](const auto& layer) { return layer.features(); }); }
  Index outputs() const { return visit([](const auto& layer) { return layer.outputs(); }); }
  Index workspace_size(Index tokens) const {
    return visit([&](const auto& layer) { return layer.workspace_size(tokens); });
  }

  void set_generators(GeneratorView<const Scalar> theta) {
    visit([&](auto& layer) { layer.set_generators(theta); });
  }
  void set_active_blocks(const std::vector<unsigned char>& active) {
    visit([&](auto& layer) { layer.rotation().set_active_blocks(active); });
  }
  void forward(ConstMatrixView<Scalar> x, MatrixView<Scalar> z, Workspace<Scalar>& workspace) const {
    visit([&](const auto& layer) { layer.forward(x, z, workspace); });
  }
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz, MatrixView<Scalar> dx,
                GeneratorView<Scalar> dtheta, Workspace<Scalar>& workspace) const {
    visit([&](const auto& layer) { layer.backward(x, dz, dx, dtheta, workspace); });
  }
  void forward_weight_centric(ConstMatrixView<Scalar> x, MatrixView<Scalar> z) const {
    visit([&](const auto& layer) { layer.forward_weight_centric(x, z); });
  }
  void backward_weight_centric(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dz,
                               MatrixView<Scalar> dx, GeneratorView<Scalar> dtheta) const {
    visit([&](const auto& layer) { layer.backward_weight_centric(x, dz, dx, dtheta); });
  }
  RowMatrix<Scalar> merged() const { return visit([](const auto& layer) { return layer.merged(); }); }
  RowMatrix<Scalar> unmerge(ConstMatrixView<Scalar> merged_weight) const {
    return visit([&](const auto& layer) { return layer.unmerge(merged_weight); });
  }
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    return visit([&](const auto& layer) { return layer.rotation().orthogonality_error(norm); });
  }

  /// The underlying templated layer (throws std::bad_variant_access for another parameterization).
  template <class P>
  OftLinear<Scalar, P, cpu>& as() { return std::get<OftLinear<Scalar, P, cpu>>(layer_); }
  template <class P>
  const OftLinear<Scalar, P, cpu>& as() const { return std::get<OftLinear<Scalar, P, cpu>>(layer_); }

 private:
  template <class F>
  decltype(auto) visit(F&& f) { return std::visit(std::forward<F>(f), layer_); }
  template <class F>
  decltype(auto) visit(F&& f) const { return std::visit(std::forward<F>(f), layer_); }

  Variant layer_;
};

}  // namespace oft

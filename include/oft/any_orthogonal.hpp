#pragma once
/// \file any_orthogonal.hpp
/// One orthogonal operator whose family is chosen at run time: block-diagonal OFT, butterfly
/// (BOFT), Householder (HRA) or Givens (GOFT), for code that reads the family from an adapter, a
/// command line or a benchmark grid and then treats every family alike:
///
///   oft::AnyOrthogonal<float> rot(oft::ButterflyFamily{
///       oft::ButterflySpec::from_features(4096, 32, 2), oft::ExactCayley{}});
///   rot.set_parameters(params.data(), rot.parameter_count());
///   rot.apply(x, y);                                        // Y = X R
///   rot.backward(x, dy, dx, dparams.data(), workspace);     // dX = dY R^T, dL/dparams
///   RowMatrix<float> merged = rot.merge(w0);                // W0 R^T
///
/// The parameters are one flat vector whose layout is the family's own:
///   BlockFamily        r packed generators, row-major (r x b(b-1)/2), as BlockOrthogonal
///   ButterflyFamily    m N packed generators, row-major, factor-major (PEFT's boft_R[i, g] order)
///   HouseholderFamily  U, d x r row-major (PEFT's hra_u: column i is reflection i's vector)
///   GivensFamily       the angles, stage-major (givens_spec.hpp)
/// Every call forwards to the templated operator with one std::visit (per call, never per
/// element), so results are bit-identical to the templated operator's.

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "any_operator.hpp"
#include "errors.hpp"
#include "givens.hpp"
#include "householder.hpp"
#include "orthogonality.hpp"

namespace oft {

/// Block-diagonal OFT: r blocks of b x b, each map(Q_g).
struct BlockFamily {
  BlockSpec spec;
  AnyPolicy map = ExactCayley{};
};
/// Butterfly OFT: m factors of N blocks of b x b, each map(Q).
struct ButterflyFamily {
  ButterflySpec spec;
  AnyPolicy map = ExactCayley{};
};
/// Householder reflections: r vectors in d features, optionally Gram-Schmidt orthogonalized.
struct HouseholderFamily {
  Index features = 0;
  Index reflections = 0;
  bool gram_schmidt = false;
};
/// Givens rotations in stages (GOFT).
struct GivensFamily {
  Index features = 0;
  GivensLayout layout = GivensLayout::Goft;
};

using AnyFamily = std::variant<BlockFamily, ButterflyFamily, HouseholderFamily, GivensFamily>;

/// "oft", "boft", "hra" or "goft" (PEFT's peft_type in lower case where PEFT has the family).
inline std::string family_name(const AnyFamily& family) {
  switch (family.index()) {
    case 0: return "oft";
    case 1: return "boft";
    case 2: return "hra";
    default: return "goft";
  }
}

/// A family's operator with its parameters held as one flat vector (see the file comment).
template <class Scalar>
class AnyOrthogonal {
 public:
  static_assert(std::is_floating_point_v<Scalar>, "oft::AnyOrthogonal needs float or double");
  using Variant = std::variant<AnyBlockOrthogonal<Scalar>, AnyButterfly<Scalar>, Householder<Scalar, cpu>,
                               Givens<Scalar, cpu>>;

  /// Validates the family's spec (the operators' constructors throw std::invalid_argument naming
  /// the values); the rotation is the identity until set_parameters.
  explicit AnyOrthogonal(const AnyFamily& family) : family_(family), operator_(make(family)) {}

  const AnyFamily& family() const { return family_; }
  std::string name() const { return family_name(family_); }
  Index features() const { return visit([](const auto& op) { return op.features(); }); }

  /// Length of the flat parameter vector.
  Index parameter_count() const {
    return visit([](const auto& op) -> Index {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, Householder<Scalar, cpu>>) {
        return op.features() * op.reflections();
      } else if constexpr (std::is_same_v<Op, Givens<Scalar, cpu>>) {
        return op.spec().angles();
      } else if constexpr (std::is_same_v<Op, AnyButterfly<Scalar>>) {
        return op.spec().generators() * packed_size(op.spec().block_size);
      } else {
        return op.spec().generators() * op.spec().packed();
      }
    });
  }

  /// Sets the parameters (`count` must equal parameter_count()). The operator validates them
  /// (finite values, non-zero Householder vectors) before changing anything.
  void set_parameters(const Scalar* values, Index count) {
    require_parameter_count(values, count, "parameters");
    visit([&](auto& op) {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, Householder<Scalar, cpu>>) {
        op.set_vectors(ConstMatrixView<Scalar>(values, op.features(), op.reflections(), op.reflections()));
      } else if constexpr (std::is_same_v<Op, Givens<Scalar, cpu>>) {
        op.set_angles(values, count);
      } else {
        op.set_generators(generator_view<const Scalar>(values));
      }
    });
  }

  /// Y = X R (N x d rows). `y` may be `x`.
  void apply(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply(x, y); });
  }
  /// Y = X R^T. For Householder and Givens this is the exact inverse of apply (R orthogonal).
  void apply_transposed(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) { op.apply_transposed(x, y); });
  }
  /// Y = X R^-1: a solve per block for the block and butterfly families (whose truncated Neumann
  /// maps are not exactly orthogonal), X R^T for Householder and Givens.
  void apply_inverse(ConstMatrixView<Scalar> x, MatrixView<Scalar> y) const {
    visit([&](const auto& op) {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, Householder<Scalar, cpu>> || std::is_same_v<Op, Givens<Scalar, cpu>>) {
        op.apply_transposed(x, y);
      } else {
        op.apply_inverse(x, y);
      }
    });
  }

  /// Vector-Jacobian product of Y = X R(parameters) for dY: dX = dY R^T (skipped when dx is {})
  /// and dL/dparameters into `dparameters` (parameter_count() values, overwritten; skipped when
  /// nullptr). dX may be dY or X.
  void backward(ConstMatrixView<Scalar> x, ConstMatrixView<Scalar> dy, MatrixView<Scalar> dx, Scalar* dparameters,
                Workspace<Scalar>& workspace) const {
    visit([&](const auto& op) {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, Householder<Scalar, cpu>>) {
        const MatrixView<Scalar> du =
            dparameters == nullptr ? MatrixView<Scalar>()
                                   : MatrixView<Scalar>(dparameters, op.features(), op.reflections(),
                                                        op.reflections());
        op.backward(x, dy, dx, du, workspace);
      } else if constexpr (std::is_same_v<Op, Givens<Scalar, cpu>>) {
        op.backward(x, dy, dx, dparameters, workspace);
      } else {
        const GeneratorView<Scalar> dtheta =
            dparameters == nullptr ? GeneratorView<Scalar>() : generator_view<Scalar>(dparameters);
        op.backward(x, dy, dx, dtheta, workspace);
      }
    });
  }

  /// The whole d x d R (a slow reference).
  RowMatrix<Scalar> dense() const {
    return visit([](const auto& op) -> RowMatrix<Scalar> { return op.dense(); });
  }
  /// W0 R^T (n_out x d): the weight whose layer equals the base layer on rotated inputs.
  RowMatrix<Scalar> merge(ConstMatrixView<Scalar> weight) const {
    detail::require(weight.cols() == features(), "merge weight has ", weight.cols(), " columns, the ",
                    name(), " rotation has d=", features());
    RowMatrix<Scalar> merged(weight.rows(), weight.cols());
    apply_transposed(weight, view(merged));
    return merged;
  }
  /// ||R^T R - I||: the worst block (factor) for the block and butterfly families, the whole R
  /// (formed densely, O(d^3)) for Householder and Givens.
  double orthogonality_error(OrthogonalityNorm norm = OrthogonalityNorm::Spectral) const {
    return visit([&](const auto& op) -> double {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, Householder<Scalar, cpu>> || std::is_same_v<Op, Givens<Scalar, cpu>>) {
        return oft::orthogonality_error(op.dense(), norm);
      } else {
        return op.orthogonality_error(norm);
      }
    });
  }

  /// The held operator (throws std::bad_variant_access for another family):
  /// AnyBlockOrthogonal<Scalar>, AnyButterfly<Scalar>, Householder<Scalar> or Givens<Scalar>.
  template <class Op>
  Op& as() { return std::get<Op>(operator_); }
  template <class Op>
  const Op& as() const { return std::get<Op>(operator_); }

 private:
  static Variant make(const AnyFamily& family) {
    switch (family.index()) {
      case 0: {
        const auto& f = std::get<BlockFamily>(family);
        return Variant(std::in_place_type<AnyBlockOrthogonal<Scalar>>, f.spec, f.map);
      }
      case 1: {
        const auto& f = std::get<ButterflyFamily>(family);
        return Variant(std::in_place_type<AnyButterfly<Scalar>>, f.spec, f.map);
      }
      case 2: {
        const auto& f = std::get<HouseholderFamily>(family);
        return Variant(std::in_place_type<Householder<Scalar, cpu>>, f.features, f.reflections, f.gram_schmidt);
      }
      default: {
        const auto& f = std::get<GivensFamily>(family);
        return Variant(std::in_place_type<Givens<Scalar, cpu>>, GivensSpec(f.features, f.layout));
      }
    }
  }

  /// The flat vector as packed generators (block and butterfly families).
  template <class Element>
  GeneratorView<Element> generator_view(Element* values) const {
    return visit([&](const auto& op) -> GeneratorView<Element> {
      using Op = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<Op, AnyButterfly<Scalar>>) {
        return GeneratorView<Element>(values, op.spec().generators(), op.spec().block_size);
      } else if constexpr (std::is_same_v<Op, AnyBlockOrthogonal<Scalar>>) {
        return GeneratorView<Element>(values, op.spec().generators(), op.spec().block_size);
      } else {
        return GeneratorView<Element>();
      }
    });
  }

  void require_parameter_count(const Scalar* values, Index count, const char* name) const {
    detail::require(values != nullptr || count == 0, name, " is null");
    detail::require(count == parameter_count(), name, " has ", count, " values, the ", family_name(family_),
                    " rotation needs ", parameter_count());
  }

  template <class F>
  decltype(auto) visit(F&& f) { return std::visit(std::forward<F>(f), operator_); }
  template <class F>
  decltype(auto) visit(F&& f) const { return std::visit(std::forward<F>(f), operator_); }

  AnyFamily family_;
  Variant operator_;
};

}  // namespace oft

// Compiled (not run) with -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror: oft's headers
// must stay warning-free for users who build with strict flags. Templates are only checked when
// instantiated, so this file instantiates every public template with float and double and every
// CPU parameterization. Nothing here is executed; the build of this object is the test.

#include <oft/conv.hpp>
#include <oft/lycoris.hpp>
#include <oft/onetrainer.hpp>
#include <oft/oft.hpp>
#include <oft/quant.hpp>

#include <cstdint>
#include <vector>

namespace {

template <class Scalar, class Parameterization>
void use_operator(const Parameterization& parameterization) {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(8, 4);
  oft::BlockOrthogonal<Scalar, Parameterization> rotation(spec, parameterization);
  oft::Generators<Scalar> theta(spec), dtheta(spec);
  rotation.set_generators(theta);
  rotation.set_active_blocks(oft::dropout_mask(spec, 0.5, 1));
  std::vector<Scalar> x(16), y(16);
  oft::Workspace<Scalar> workspace;
  rotation.apply(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  rotation.apply_transposed(oft::ConstMatrixView<Scalar>(x.data(), 2, 8),
                            oft::MatrixView<Scalar>(y.data(), 2, 8));
  rotation.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8),
                    oft::ConstMatrixView<Scalar>(y.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8),
                    dtheta.view(), workspace);
  (void)rotation.dense();
  (void)rotation.orthogonality_error();
  (void)rotation.plan(0);

  std::vector<Scalar> weight(24), z(6);
  oft::OftLinear<Scalar, Parameterization> layer(oft::ConstMatrixView<Scalar>(weight.data(), 3, 8), nullptr, 4,
                                       false, parameterization);
  layer.set_generators(theta);
  layer.forward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(z.data(), 2, 3),
                workspace);
  layer.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(z.data(), 2, 3),
                 oft::MatrixView<Scalar>(y.data(), 2, 8), dtheta.view(), workspace);
  layer.backward_weight_centric(oft::ConstMatrixView<Scalar>(x.data(), 2, 8),
                                oft::ConstMatrixView<Scalar>(z.data(), 2, 3),
                                oft::MatrixView<Scalar>(y.data(), 2, 8), dtheta.view());
  (void)layer.unmerge(oft::view(layer.merged()));
  layer.forward_weight_centric(oft::ConstMatrixView<Scalar>(x.data(), 2, 8),
                               oft::MatrixView<Scalar>(z.data(), 2, 3));
}

template <class Scalar, class Parameterization>
void use_butterfly(const Parameterization& parameterization) {
  const auto spec = oft::ButterflySpec::from_features(8, 2, 2);
  oft::Butterfly<Scalar, Parameterization> boft(spec, parameterization);
  oft::Generators<Scalar> theta(spec.generators(), spec.block_size),
      dtheta(spec.generators(), spec.block_size);
  std::vector<Scalar> boft_r(static_cast<std::size_t>(spec.generators() * 4));
  oft::peft::boft_generators(boft_r.data(), spec, theta.view());
  boft.set_generators(theta);
  std::vector<Scalar> x(16), y(16);
  oft::Workspace<Scalar> workspace;
  boft.apply(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  boft.apply_transposed(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  boft.apply_inverse(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  boft.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(y.data(), 2, 8),
                oft::MatrixView<Scalar>(y.data(), 2, 8), dtheta.view(), workspace);
  oft::peft::boft_gradient(oft::GeneratorView<const Scalar>(dtheta.view()), spec, boft_r.data());
  (void)boft.dense();
  (void)boft.orthogonality_error();
}

template <class Scalar>
void use_householder(bool gram_schmidt) {
  oft::Householder<Scalar> hra(8, 2, gram_schmidt);
  std::vector<Scalar> u(16, Scalar(1)), du(16), x(16), y(16);
  u[1] = Scalar(2);
  hra.set_vectors(oft::ConstMatrixView<Scalar>(u.data(), 8, 2));
  oft::Workspace<Scalar> workspace;
  hra.apply(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  hra.apply_transposed(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  hra.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(y.data(), 2, 8),
               oft::MatrixView<Scalar>(y.data(), 2, 8), oft::MatrixView<Scalar>(du.data(), 8, 2), workspace);
  (void)hra.dense();
}

template <class Scalar>
void use_givens(oft::GivensLayout layout) {
  oft::Givens<Scalar> goft(oft::GivensSpec(8, layout));
  goft.set_angles(std::vector<Scalar>(static_cast<std::size_t>(goft.spec().angles()), Scalar(0.5)));
  std::vector<Scalar> x(16), y(16), dangles(static_cast<std::size_t>(goft.spec().angles()));
  oft::Workspace<Scalar> workspace;
  goft.apply(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  goft.apply_transposed(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  goft.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(y.data(), 2, 8),
                oft::MatrixView<Scalar>(y.data(), 2, 8), dangles.data(), workspace);
  (void)goft.dense();
}

template <class Scalar>
void use_any_orthogonal(const oft::AnyFamily& family) {
  oft::AnyOrthogonal<Scalar> any(family);
  std::vector<Scalar> params(static_cast<std::size_t>(any.parameter_count()), Scalar(0.25)), x(16), y(16);
  any.set_parameters(params.data(), any.parameter_count());
  oft::Workspace<Scalar> workspace;
  any.apply(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  any.apply_inverse(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8));
  any.backward(oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(y.data(), 2, 8),
               oft::MatrixView<Scalar>(y.data(), 2, 8), params.data(), workspace);
  (void)any.merge(oft::ConstMatrixView<Scalar>(x.data(), 2, 8));
  (void)any.orthogonality_error();
}

template <class Scalar>
void use_all() {
  use_any_orthogonal<Scalar>(oft::ButterflyFamily{oft::ButterflySpec::from_features(8, 2, 2), oft::CayleyNeumann{3}});
  use_any_orthogonal<Scalar>(oft::HouseholderFamily{8, 2, true});
  use_any_orthogonal<Scalar>(oft::GivensFamily{8});
  use_any_orthogonal<Scalar>(oft::BlockFamily{oft::BlockSpec::from_features(8, 4), oft::MatrixExponential{}});
  use_givens<Scalar>(oft::GivensLayout::Goft);
  use_givens<Scalar>(oft::GivensLayout::Butterfly);
  use_householder<Scalar>(false);
  use_householder<Scalar>(true);
  use_butterfly<Scalar>(oft::ExactCayley{});
  use_butterfly<Scalar>(oft::CayleyNeumann{3});
  use_operator<Scalar>(oft::ExactCayley{});
  use_operator<Scalar>(oft::CayleyNeumann{3});
  use_operator<Scalar>(oft::NewtonSchulz{5});
  use_operator<Scalar>(oft::NewtonSchulz{3, oft::NewtonSchulzBase::Linear});
  use_operator<Scalar>(oft::Clipped<oft::ExactCayley, oft::FrobeniusNorm>{oft::ExactCayley{}, 0.5});
  use_operator<Scalar>(oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>{oft::CayleyNeumann{4}, 0.5});
  use_butterfly<Scalar>(oft::Clipped<oft::ExactCayley, oft::SpectralNorm>{oft::ExactCayley{}, 0.5});
  use_operator<Scalar>(oft::CayleyNeumannTolerance{1e-4});
  use_operator<Scalar>(oft::MatrixExponential{});

  const oft::BlockSpec spec = oft::BlockSpec::from_features(8, 4);
  oft::AnyBlockOrthogonal<Scalar> any(spec, oft::CayleyNeumann{3});
  oft::Generators<Scalar> any_theta(spec);
  any.set_generators(any_theta);
  (void)any.orthogonality_errors();
  (void)oft::policy_name(any.policy());
  std::vector<Scalar> weight(24);
  oft::AnyOftLinear<Scalar> any_layer(oft::ConstMatrixView<Scalar>(weight.data(), 3, 8), nullptr, 4,
                                      false, oft::ExactCayley{});
  (void)any_layer.merged();

  oft::Generators<Scalar> theta(2, 4);
  (void)oft::coft_project(theta.view(), oft::coft_radius(1e-3, theta.count()));
  oft::peft::flip_exact_branch(theta.view());
  const auto q = oft::skew(theta.view(), 0);
  (void)oft::cayley(q).eval();
  (void)oft::cayley_neumann(q, 4).eval();
  oft::RowVectors<Scalar> rows = oft::RowVectors<Scalar>::Zero(3, 4);
  (void)oft::cayley(q).apply(rows);
  (void)oft::cayley_neumann(q, 4).apply(rows);
}

// LyCORIS's diag-OFT (both constraint rules): merge, both forwards, the constraint, backward.
template <class Scalar>
void use_lycoris(oft::lycoris::ConstraintRule rule) {
  std::vector<Scalar> blocks(32, Scalar(0.125)), d_blocks(32), rescale(8, Scalar(1)), d_rescale(8);
  const oft::lycoris::DiagOft<Scalar> op(2, 4, blocks.data(), 0.5, rescale, 0.5, rule);
  oft::Generators<Scalar> theta = oft::lycoris::skew_from_blocks(blocks.data(), 2, 4);
  (void)oft::lycoris::apply_constraint(theta.view(), 0.5, 8, rule);
  (void)op.constraint();
  (void)op.block(0);
  (void)op.orthogonality_error();
  std::vector<Scalar> x(16), y(32), bias(3);
  const oft::RowMatrix<Scalar> weight = oft::RowMatrix<Scalar>::Zero(8, 3);
  const oft::RowMatrix<Scalar> tokens = oft::RowMatrix<Scalar>::Zero(2, 3);
  (void)op.merge(oft::view(weight));
  (void)op.forward(oft::view(tokens), oft::view(weight), bias.data());
  (void)op.forward_bypass(oft::view(tokens), oft::view(weight), bias.data());
  op.apply_output(oft::ConstMatrixView<Scalar>(x.data(), 2, 8),
                  oft::MatrixView<Scalar>(y.data(), 2, 8));
  op.backward_output(
      oft::ConstMatrixView<Scalar>(x.data(), 2, 8), oft::ConstMatrixView<Scalar>(y.data(), 2, 8),
      oft::MatrixView<Scalar>(y.data() + 16, 2, 8), d_blocks.data(), d_rescale.data());
  (void)op.backward_merge(oft::view(weight), oft::view(weight), d_blocks.data(), d_rescale.data());
}

template <class Scalar, class Base>
void use_quantized_layers(const Base& base) {
  oft::quant::QoftLinear<Scalar, oft::CayleyNeumann, Base> qoft(base, nullptr, 4, false, oft::CayleyNeumann{3});
  oft::quant::QloraLinear<Scalar, Base> qlora(base, nullptr, 2, 4.0);
  std::vector<Scalar> x(16), z(6), dx(16);
  oft::Generators<Scalar> dtheta(2, 4);
  oft::RowMatrix<Scalar> da, db;
  oft::Workspace<Scalar> workspace;
  const oft::ConstMatrixView<Scalar> xv(x.data(), 2, 8), zv(z.data(), 2, 3);
  qoft.forward(xv, oft::MatrixView<Scalar>(z.data(), 2, 3), workspace);
  qoft.backward(xv, zv, oft::MatrixView<Scalar>(dx.data(), 2, 8), dtheta.view(), workspace);
  (void)qoft.dequantized();
  (void)qoft.frozen_bytes();
  qlora.forward(xv, oft::MatrixView<Scalar>(z.data(), 2, 3), workspace);
  qlora.backward(xv, zv, oft::MatrixView<Scalar>(dx.data(), 2, 8), da, db, workspace);
  (void)oft::quant::dequantize_all<Scalar>(base);
}

template <class Base>
void use_merge(const Base& base) {
  oft::BlockOrthogonal<float, oft::CayleyNeumann> rotation(oft::BlockSpec::from_features(8, 4), oft::CayleyNeumann{3});
  oft::quant::MergeReport report;
  (void)oft::quant::merge_rotation(base, rotation, &report);
  (void)oft::quant::merged_weight(base, rotation);
  const oft::RowMatrix<float> a = oft::RowMatrix<float>::Zero(2, 8), b = oft::RowMatrix<float>::Zero(3, 2);
  (void)oft::quant::merge_lora(base, a, b, 1.0f, &report);
}

void use_quant() {
  const std::vector<float> w(24, 0.5f);
  oft::quant::Bnb4Tensor nf4 = oft::quant::quantize_bnb4(w.data(), 24, 64, oft::quant::Bnb4Type::NF4);
  std::vector<float> out(24);
  oft::quant::dequantize_bnb4(nf4, out.data());
  const std::vector<std::uint8_t> q(1, 0);
  const float code[256] = {};
  (void)oft::quant::dequantize_bnb4_nested_absmax(q.data(), 1, out.data(), 1, code, 0.0f);
  const oft::quant::Bnb4Base bnb4(nf4, 3, 8);
  const oft::quant::Int8Base int8(oft::quant::quantize_int8(w.data(), 3, 8));
  const oft::quant::DenseFloatBase dense(w.data(), 3, 8);
  (void)oft::quant::dequantize_int8(int8.tensor());
  use_quantized_layers<float>(bnb4);
  use_quantized_layers<double>(bnb4);
  use_quantized_layers<float>(int8);
  use_quantized_layers<double>(int8);
  use_quantized_layers<float>(dense);
  use_merge(bnb4);
  use_merge(int8);
  use_merge(dense);
}

// bfloat16 activations of a float operator.
void use_bf16() {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(8, 4);
  oft::BlockOrthogonal<float, oft::CayleyNeumann> rotation(spec, oft::CayleyNeumann{3});
  oft::Generators<float> dtheta(spec);
  std::vector<oft::bfloat16> x(16), y(16);
  oft::Workspace<float> workspace;
  const oft::MatrixView<const oft::bfloat16> in(x.data(), 2, 8);
  const oft::MatrixView<oft::bfloat16> out(y.data(), 2, 8);
  rotation.apply(in, out);
  rotation.apply_transposed(in, out);
  rotation.backward(in, in, out, dtheta.view(), workspace);
}

// Serving: the adapter bank (every routing, bfloat16 activations in both arithmetics, bfloat16
// storage) and the layer.
template <class Scalar>
void use_serving() {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(8, 4);
  oft::AnyBlockOrthogonal<Scalar> rotation(spec, oft::ExactCayley{});
  oft::AdapterBank<Scalar> bank(8, 2);
  const oft::Index slot = bank.add(rotation);
  bank.add_identity();
  std::vector<Scalar> x(16), y(16), w(24), z(6);
  const std::vector<std::int32_t> ids = {static_cast<std::int32_t>(slot), -1};
  bank.apply(oft::MatrixView<const Scalar>(x.data(), 2, 8), oft::MatrixView<Scalar>(y.data(), 2, 8), ids,
             oft::BankRouting::Gathered);
  oft::ServingLinear<Scalar> layer(oft::MatrixView<const Scalar>(w.data(), 3, 8), nullptr, {2, 1}, 2);
  layer.add(std::vector<const oft::AnyBlockOrthogonal<Scalar>*>{&rotation, nullptr});
  oft::Workspace<Scalar> workspace;
  layer.forward(oft::MatrixView<const Scalar>(x.data(), 2, 8), ids, oft::MatrixView<Scalar>(z.data(), 2, 3),
                workspace);
  if constexpr (std::is_same_v<Scalar, float>) {
    oft::AdapterBank<float> half(8, 1, oft::RotationStorage::BFloat16);
    half.add(rotation);
    std::vector<oft::bfloat16> xb(16), yb(16);
    half.apply(oft::MatrixView<const oft::bfloat16>(xb.data(), 2, 8),
               oft::MatrixView<oft::bfloat16>(yb.data(), 2, 8), {0, 0});
    oft::AdapterBank<float> dot(8, 1, oft::RotationStorage::Scalar, oft::Bf16Arithmetic::DotProduct);
    dot.add(rotation);
    dot.apply(oft::MatrixView<const oft::bfloat16>(xb.data(), 2, 8),
              oft::MatrixView<oft::bfloat16>(yb.data(), 2, 8), {0, 0}, oft::BankRouting::Contiguous);
    dot.apply(oft::MatrixView<const oft::bfloat16>(xb.data(), 2, 8),
              oft::MatrixView<oft::bfloat16>(yb.data(), 2, 8), {0, 0}, oft::BankRouting::Gathered);
  }
}

// OneTrainer / ComfyUI-OFTv2: each flag's rotation and both merge sides.
template <class Scalar>
void use_onetrainer() {
  std::vector<Scalar> theta(12, Scalar(0.125)), starts(8, Scalar(1));
  oft::onetrainer::Flags flags;
  flags.scaled = flags.clipped = flags.cans = true;
  flags.clip = 0.5;
  const auto rot = oft::onetrainer::rotations(theta.data(), 2, 4, flags, starts.data());
  flags.cans = false;
  (void)oft::onetrainer::rotations(theta.data(), 2, 4, flags);
  const oft::RowMatrix<Scalar> weight = oft::RowMatrix<Scalar>::Zero(3, 8);
  (void)oft::onetrainer::merge(oft::view(weight), rot, oft::onetrainer::Layer::Linear, 0.5);
  (void)oft::onetrainer::merge(oft::view(weight), rot, oft::onetrainer::Layer::Conv2d);
  const oft::SquareMatrix<Scalar> q = oft::onetrainer::skew_block(theta.data(), 4);
  (void)oft::onetrainer::cans_rotation_vjp(q, oft::onetrainer::CansOrder::SquareFirst, q);
  (void)oft::onetrainer::power_iteration_sigma(q, starts.data());
}

// The convolution OFT: merge, both passes of the unmerged path, the weight side.
template <class Scalar>
void use_conv() {
  const oft::conv::Conv2dShape shape{2, 3, 3, 1, 2, 1, 1, 0, 2, 1};  // K = 6
  oft::BlockOrthogonal<Scalar, oft::ExactCayley> rot(oft::BlockSpec::from_features(6, 3));
  const oft::RowMatrix<Scalar> w = oft::RowMatrix<Scalar>::Zero(3, 6);
  std::vector<Scalar> x(2 * 5 * 4), z(3 * 2 * 4), dx(x.size()), bias(3);
  oft::Generators<Scalar> dtheta(rot.spec());
  oft::Workspace<Scalar> workspace;
  const oft::RowMatrix<Scalar> merged = oft::conv::merge(oft::view(w), rot);
  oft::conv::forward_unmerged(x.data(), 1, 5, 4, shape, oft::view(w), bias.data(), rot, z.data());
  oft::conv::conv_direct(x.data(), 1, 5, 4, shape, oft::view(merged), nullptr, z.data());
  oft::conv::backward_unmerged(x.data(), z.data(), 1, 5, 4, shape, oft::view(w), rot, dx.data(),
                               dtheta.view(), workspace);
  oft::conv::weight_side_backward(oft::view(w), oft::view(merged), rot, dtheta.view());
  oft::conv::negate_generators(dtheta.view());
  const oft::conv::ConvShape cube = oft::conv::ConvShape::conv3d(2, 3, 1, 3, 1);  // K = 6
  oft::conv::forward_unmerged(x.data(), 1, 1, 5, 4, cube, oft::view(w), nullptr, rot, z.data());
  oft::conv::backward_unmerged(x.data(), z.data(), 1, 1, 5, 4, cube, oft::view(w), rot,
                               dx.data(), dtheta.view(), workspace);
  (void)oft::conv::ConvShape::conv1d(2, 3, 3);
}

}  // namespace

// Referenced so that the instantiations are compiled; never called.
void oft_strict_warnings_instantiate() {
  use_all<float>();
  use_all<double>();
  use_quant();
  use_bf16();
  use_serving<float>();
  use_serving<double>();
  use_lycoris<float>(oft::lycoris::ConstraintRule::Lycoris);
  use_lycoris<double>(oft::lycoris::ConstraintRule::Kohya);
  use_onetrainer<float>();
  use_onetrainer<double>();
  use_conv<float>();
  use_conv<double>();
}

// The CPU Butterfly, Givens and Householder operators behind cpu_family_reference.hpp (host compiler, Eigen).

#include "cpu_family_reference.hpp"

// oft's headers before Eigen (see cpu_reference.cpp).
#include <oft/butterfly.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/givens.hpp>
#include <oft/householder.hpp>

#include <stdexcept>
#include <string>

namespace oft_cuda_test {
namespace {

void require_size(std::size_t actual, Index expected, const char* what) {
  if (static_cast<Index>(actual) != expected)
    throw std::invalid_argument(std::string("cpu_family_reference: ") + what + " has " +
                                std::to_string(actual) + " values, expected " +
                                std::to_string(expected));
}

/// Calls f with a CPU Butterfly of `config` whose generators are `theta`.
template <class S, class F>
decltype(auto) with_butterfly(const ButterflyConfig& config, const std::vector<S>& theta, F&& f) {
  require_size(theta.size(), config.generators() * config.packed(), "theta");
  const oft::ButterflySpec spec{config.blocks, config.b, config.factors};
  const oft::GeneratorView<const S> view(theta.data(), config.generators(), config.b);
  if (config.terms == kExactCayley) {
    oft::Butterfly<S, oft::ExactCayley> op(spec);
    op.set_generators(view);
    return f(op);
  }
  oft::Butterfly<S, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{config.terms});
  op.set_generators(view);
  return f(op);
}

oft::GivensSpec givens_spec(Index d, bool butterfly_layout) {
  return oft::GivensSpec(d, butterfly_layout ? oft::GivensLayout::Butterfly : oft::GivensLayout::Goft);
}

}  // namespace

template <class S>
std::vector<S> cpu_butterfly_apply(const ButterflyConfig& config, const std::vector<S>& theta,
                                   const std::vector<S>& x, Index n, bool transposed) {
  const Index d = config.features();
  require_size(x.size(), n * d, "x");
  std::vector<S> y(x.size());
  with_butterfly(config, theta, [&](const auto& op) {
    const oft::ConstMatrixView<S> in(x.data(), n, d);
    const oft::MatrixView<S> out(y.data(), n, d);
    if (transposed)
      op.apply_transposed(in, out);
    else
      op.apply(in, out);
    return 0;
  });
  return y;
}

template <class S>
void cpu_butterfly_backward(const ButterflyConfig& config, const std::vector<S>& theta,
                            const std::vector<S>& x, const std::vector<S>& dy, Index n,
                            std::vector<S>* dx, std::vector<S>* dtheta) {
  const Index d = config.features();
  require_size(x.size(), n * d, "x");
  require_size(dy.size(), n * d, "dy");
  oft::MatrixView<S> dx_view;
  oft::GeneratorView<S> dtheta_view;
  if (dx != nullptr) {
    dx->assign(x.size(), S(0));
    dx_view = oft::MatrixView<S>(dx->data(), n, d);
  }
  if (dtheta != nullptr) {
    dtheta->assign(static_cast<std::size_t>(config.generators() * config.packed()), S(0));
    dtheta_view = oft::GeneratorView<S>(dtheta->data(), config.generators(), config.b);
  }
  with_butterfly(config, theta, [&](const auto& op) {
    oft::Workspace<S> workspace;
    op.backward(oft::ConstMatrixView<S>(x.data(), n, d), oft::ConstMatrixView<S>(dy.data(), n, d),
                dx_view, dtheta_view, workspace);
    return 0;
  });
}

template <class S>
std::vector<S> cpu_givens_apply(Index d, bool butterfly_layout, const std::vector<S>& angles,
                                const std::vector<S>& x, Index n, bool transposed) {
  require_size(x.size(), n * d, "x");
  oft::Givens<S> op(givens_spec(d, butterfly_layout));
  op.set_angles(angles);
  std::vector<S> y(x.size());
  const oft::ConstMatrixView<S> in(x.data(), n, d);
  const oft::MatrixView<S> out(y.data(), n, d);
  if (transposed)
    op.apply_transposed(in, out);
  else
    op.apply(in, out);
  return y;
}

template <class S>
void cpu_givens_backward(Index d, bool butterfly_layout, const std::vector<S>& angles,
                         const std::vector<S>& x, const std::vector<S>& dy, Index n,
                         std::vector<S>* dx, std::vector<S>* dangles) {
  require_size(x.size(), n * d, "x");
  require_size(dy.size(), n * d, "dy");
  oft::Givens<S> op(givens_spec(d, butterfly_layout));
  op.set_angles(angles);
  oft::MatrixView<S> dx_view;
  if (dx != nullptr) {
    dx->assign(x.size(), S(0));
    dx_view = oft::MatrixView<S>(dx->data(), n, d);
  }
  if (dangles != nullptr) dangles->assign(angles.size(), S(0));
  oft::Workspace<S> workspace;
  op.backward(oft::ConstMatrixView<S>(x.data(), n, d), oft::ConstMatrixView<S>(dy.data(), n, d),
              dx_view, dangles != nullptr ? dangles->data() : nullptr, workspace);
}

/// A CPU Householder operator with U set.
template <class S>
oft::Householder<S> householder(Index d, Index r, bool gram_schmidt, const std::vector<S>& u) {
  require_size(u.size(), d * r, "u");
  oft::Householder<S> op(d, r, gram_schmidt);
  op.set_vectors(oft::ConstMatrixView<S>(u.data(), d, r));
  return op;
}

template <class S>
std::vector<S> cpu_householder_apply(Index d, Index r, bool gram_schmidt, const std::vector<S>& u,
                                     const std::vector<S>& x, Index n, bool transposed) {
  require_size(x.size(), n * d, "x");
  const oft::Householder<S> op = householder(d, r, gram_schmidt, u);
  std::vector<S> y(x.size());
  const oft::ConstMatrixView<S> in(x.data(), n, d);
  const oft::MatrixView<S> out(y.data(), n, d);
  if (transposed)
    op.apply_transposed(in, out);
  else
    op.apply(in, out);
  return y;
}

template <class S>
void cpu_householder_backward(Index d, Index r, bool gram_schmidt, const std::vector<S>& u,
                              const std::vector<S>& x, const std::vector<S>& dy, Index n,
                              std::vector<S>* dx, std::vector<S>* du) {
  require_size(x.size(), n * d, "x");
  require_size(dy.size(), n * d, "dy");
  const oft::Householder<S> op = householder(d, r, gram_schmidt, u);
  oft::MatrixView<S> dx_view, du_view;
  if (dx != nullptr) {
    dx->assign(x.size(), S(0));
    dx_view = oft::MatrixView<S>(dx->data(), n, d);
  }
  if (du != nullptr) {
    du->assign(u.size(), S(0));
    du_view = oft::MatrixView<S>(du->data(), d, r);
  }
  oft::Workspace<S> workspace;
  op.backward(oft::ConstMatrixView<S>(x.data(), n, d), oft::ConstMatrixView<S>(dy.data(), n, d),
              dx_view, du_view, workspace);
}

#define OFT_FAMILY_REFERENCE(S)                                                                  \
  template std::vector<S> cpu_butterfly_apply<S>(const ButterflyConfig&, const std::vector<S>&, \
                                                 const std::vector<S>&, Index, bool);            \
  template void cpu_butterfly_backward<S>(const ButterflyConfig&, const std::vector<S>&,        \
                                          const std::vector<S>&, const std::vector<S>&, Index,   \
                                          std::vector<S>*, std::vector<S>*);                     \
  template std::vector<S> cpu_givens_apply<S>(Index, bool, const std::vector<S>&,               \
                                              const std::vector<S>&, Index, bool);               \
  template void cpu_givens_backward<S>(Index, bool, const std::vector<S>&, const std::vector<S>&, \
                                       const std::vector<S>&, Index, std::vector<S>*,            \
                                       std::vector<S>*);                                          \
  template std::vector<S> cpu_householder_apply<S>(Index, Index, bool, const std::vector<S>&,   \
                                                   const std::vector<S>&, Index, bool);          \
  template void cpu_householder_backward<S>(Index, Index, bool, const std::vector<S>&,          \
                                            const std::vector<S>&, const std::vector<S>&, Index, \
                                            std::vector<S>*, std::vector<S>*);
OFT_FAMILY_REFERENCE(float)
OFT_FAMILY_REFERENCE(double)
#undef OFT_FAMILY_REFERENCE

}  // namespace oft_cuda_test

// The CPU backend behind cpu_reference.hpp (compiled by the host compiler, with Eigen): each
// function builds oft's CPU operator or layer for the configuration and runs it on the inputs.

#include "cpu_reference.hpp"

// oft's headers first: they include <immintrin.h> with GCC 12's AVX-512 false positive
// silenced (oft/detail/intrinsics.hpp), which only works before Eigen pulls the header in.
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/linear.hpp>

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace oft_cuda_test {
namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;

/// Calls f with the CPU policy object of `config` (ExactCayley or CayleyNeumann{terms}).
template <class F>
decltype(auto) with_policy(const OpConfig& config, F&& f) {
  if (config.exact()) return f(oft::ExactCayley{});
  return f(oft::CayleyNeumann{config.terms});
}

void require_size(std::size_t actual, Index expected, const char* what) {
  if (static_cast<Index>(actual) != expected)
    throw std::invalid_argument(std::string("cpu_reference: ") + what + " has " +
                                std::to_string(actual) + " values, expected " +
                                std::to_string(expected));
}

oft::BlockSpec spec_of(const OpConfig& config) {
  return oft::BlockSpec{config.blocks, config.b, config.shared};
}

template <class S>
oft::GeneratorView<const S> theta_view(const OpConfig& config, const std::vector<S>& theta) {
  require_size(theta.size(), config.generators() * config.packed(), "theta");
  return oft::GeneratorView<const S>(theta.data(), config.generators(), config.b);
}

template <class S>
oft::ConstMatrixView<S> matrix_view(const std::vector<S>& m, Index rows, Index cols,
                                    const char* what) {
  require_size(m.size(), rows * cols, what);
  return oft::ConstMatrixView<S>(m.data(), rows, cols);
}

template <class S>
oft::MatrixView<S> matrix_view(std::vector<S>& m, Index rows, Index cols) {
  return oft::MatrixView<S>(m.data(), rows, cols);
}

}  // namespace

/// Zeroed, sized dX (n x d) and dtheta outputs as views; an empty view where the pointer is null
/// (the backward then skips that output).
template <class S>
std::pair<oft::MatrixView<S>, oft::GeneratorView<S>> backward_outputs(const OpConfig& config,
                                                                      Index n, std::vector<S>* dx,
                                                                      std::vector<S>* dtheta) {
  std::pair<oft::MatrixView<S>, oft::GeneratorView<S>> views;
  if (dx != nullptr) {
    dx->assign(static_cast<std::size_t>(n * config.features()), S(0));
    views.first = matrix_view(*dx, n, config.features());
  }
  if (dtheta != nullptr) {
    dtheta->assign(static_cast<std::size_t>(config.generators() * config.packed()), S(0));
    views.second = oft::GeneratorView<S>(dtheta->data(), config.generators(), config.b);
  }
  return views;
}

template <class S>
std::vector<S> cpu_rotation_blocks(const OpConfig& config, const std::vector<S>& theta) {
  return with_policy(config, [&](auto policy) {
    oft::BlockOrthogonal<S, decltype(policy)> op(spec_of(config), policy);
    op.set_generators(theta_view(config, theta));
    const Index b = config.b;
    std::vector<S> out(static_cast<std::size_t>(config.generators() * b * b));
    for (Index g = 0; g < config.generators(); ++g) {
      // Block i = g is generator g's R (no mask is set on this operator).
      const auto block = op.block(g);
      for (Index p = 0; p < b; ++p)
        for (Index q = 0; q < b; ++q)
          out[static_cast<std::size_t>((g * b + p) * b + q)] = block(p, q);
    }
    return out;
  });
}

template <class S>
std::vector<S> cpu_apply(const OpConfig& config, const std::vector<S>& theta,
                         const std::vector<unsigned char>& active, const std::vector<S>& x,
                         Index n, bool transposed) {
  return with_policy(config, [&](auto policy) {
    oft::BlockOrthogonal<S, decltype(policy)> op(spec_of(config), policy);
    op.set_generators(theta_view(config, theta));
    op.set_active_blocks(active);
    const Index d = config.features();
    std::vector<S> y(static_cast<std::size_t>(n * d));
    if (transposed)
      op.apply_transposed(matrix_view(x, n, d, "x"), matrix_view(y, n, d));
    else
      op.apply(matrix_view(x, n, d, "x"), matrix_view(y, n, d));
    return y;
  });
}

template <class S>
void cpu_backward(const OpConfig& config, const std::vector<S>& theta,
                  const std::vector<unsigned char>& active, const std::vector<S>& x,
                  const std::vector<S>& dy, Index n, std::vector<S>* dx, std::vector<S>* dtheta) {
  with_policy(config, [&](auto policy) {
    oft::BlockOrthogonal<S, decltype(policy)> op(spec_of(config), policy);
    op.set_generators(theta_view(config, theta));
    op.set_active_blocks(active);
    const Index d = config.features();
    const auto [dx_view, dtheta_view] = backward_outputs(config, n, dx, dtheta);
    oft::Workspace<S> workspace;
    op.backward(matrix_view(x, n, d, "x"), matrix_view(dy, n, d, "dy"), dx_view, dtheta_view,
                workspace);
  });
}

template <class S>
std::vector<S> cpu_layer_forward(const OpConfig& config, const std::vector<S>& theta,
                                 const std::vector<S>& w0, Index n_out, const std::vector<S>& bias,
                                 const std::vector<S>& x, Index n) {
  return with_policy(config, [&](auto policy) {
    const Index d = config.features();
    if (!bias.empty()) require_size(bias.size(), n_out, "bias");
    oft::OftLinear<S, decltype(policy)> layer(matrix_view(w0, n_out, d, "w0"),
                                              bias.empty() ? nullptr : bias.data(), config.b,
                                              config.shared, policy);
    layer.set_generators(theta_view(config, theta));
    std::vector<S> z(static_cast<std::size_t>(n * n_out));
    oft::Workspace<S> workspace;
    layer.forward(matrix_view(x, n, d, "x"), matrix_view(z, n, n_out), workspace);
    return z;
  });
}

template <class S>
void cpu_layer_backward(const OpConfig& config, const std::vector<S>& theta,
                        const std::vector<S>& w0, Index n_out, const std::vector<S>& x,
                        const std::vector<S>& dz, Index n, std::vector<S>* dx,
                        std::vector<S>* dtheta) {
  with_policy(config, [&](auto policy) {
    const Index d = config.features();
    oft::OftLinear<S, decltype(policy)> layer(matrix_view(w0, n_out, d, "w0"), nullptr, config.b,
                                              config.shared, policy);
    layer.set_generators(theta_view(config, theta));
    const auto [dx_view, dtheta_view] = backward_outputs(config, n, dx, dtheta);
    oft::Workspace<S> workspace;
    layer.backward(matrix_view(x, n, d, "x"), matrix_view(dz, n, n_out, "dz"), dx_view,
                   dtheta_view, workspace);
  });
}

template <class S>
std::vector<S> cpu_layer_merge(const OpConfig& config, const std::vector<S>& theta,
                               const std::vector<S>& w0, Index n_out) {
  return with_policy(config, [&](auto policy) {
    const Index d = config.features();
    oft::OftLinear<S, decltype(policy)> layer(matrix_view(w0, n_out, d, "w0"), nullptr, config.b,
                                              config.shared, policy);
    layer.set_generators(theta_view(config, theta));
    const oft::RowMatrix<S> merged = layer.merged();
    return std::vector<S>(merged.data(), merged.data() + merged.size());
  });
}

template <class S>
std::vector<S> cpu_layer_unmerge(const OpConfig& config, const std::vector<S>& theta,
                                 const std::vector<S>& merged, Index n_out) {
  return with_policy(config, [&](auto policy) {
    const Index d = config.features();
    // unmerge does not read the layer's own W0; the merged weight stands in for it.
    oft::OftLinear<S, decltype(policy)> layer(matrix_view(merged, n_out, d, "merged"), nullptr,
                                              config.b, config.shared, policy);
    layer.set_generators(theta_view(config, theta));
    const oft::RowMatrix<S> w0 = layer.unmerge(matrix_view(merged, n_out, d, "merged"));
    return std::vector<S>(w0.data(), w0.data() + w0.size());
  });
}

std::vector<double> cpu_generator_rho(const OpConfig& config, const std::vector<double>& theta) {
  const auto view = theta_view(config, theta);
  std::vector<double> out(static_cast<std::size_t>(config.generators()), 0.0);
  if (config.b < 2) return out;
  for (Index g = 0; g < config.generators(); ++g) {
    // Q is skew, so Q^T Q = -Q^2 is symmetric PSD with eigenvalues lambda^2.
    const MatD q = view.dense(g);
    Eigen::SelfAdjointEigenSolver<MatD> eig(MatD(q.transpose() * q), Eigen::EigenvaluesOnly);
    out[static_cast<std::size_t>(g)] = std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
  }
  return out;
}

std::vector<double> cpu_condition_numbers(const OpConfig& config,
                                          const std::vector<double>& rotation_blocks) {
  const Index b = config.b;
  require_size(rotation_blocks.size(), config.generators() * b * b, "rotation blocks");
  std::vector<double> out(static_cast<std::size_t>(config.generators()));
  for (Index g = 0; g < config.generators(); ++g) {
    const MatD r =
        Eigen::Map<const oft::RowMatrix<double>>(rotation_blocks.data() + g * b * b, b, b);
    Eigen::JacobiSVD<MatD> svd(r);
    out[static_cast<std::size_t>(g)] = svd.singularValues()(0) / svd.singularValues()(b - 1);
  }
  return out;
}

#define OFT_CUDA_TEST_INSTANTIATE(S)                                                              \
  template std::vector<S> cpu_rotation_blocks<S>(const OpConfig&, const std::vector<S>&);         \
  template std::vector<S> cpu_apply<S>(const OpConfig&, const std::vector<S>&,                    \
                                       const std::vector<unsigned char>&, const std::vector<S>&,  \
                                       Index, bool);                                              \
  template void cpu_backward<S>(const OpConfig&, const std::vector<S>&,                           \
                                const std::vector<unsigned char>&, const std::vector<S>&,         \
                                const std::vector<S>&, Index, std::vector<S>*, std::vector<S>*);  \
  template std::vector<S> cpu_layer_forward<S>(const OpConfig&, const std::vector<S>&,            \
                                               const std::vector<S>&, Index,                      \
                                               const std::vector<S>&, const std::vector<S>&,      \
                                               Index);                                            \
  template void cpu_layer_backward<S>(const OpConfig&, const std::vector<S>&,                     \
                                      const std::vector<S>&, Index, const std::vector<S>&,        \
                                      const std::vector<S>&, Index, std::vector<S>*,              \
                                      std::vector<S>*);                                           \
  template std::vector<S> cpu_layer_merge<S>(const OpConfig&, const std::vector<S>&,              \
                                             const std::vector<S>&, Index);                       \
  template std::vector<S> cpu_layer_unmerge<S>(const OpConfig&, const std::vector<S>&,            \
                                               const std::vector<S>&, Index);

OFT_CUDA_TEST_INSTANTIATE(float)
OFT_CUDA_TEST_INSTANTIATE(double)

#undef OFT_CUDA_TEST_INSTANTIATE

}  // namespace oft_cuda_test

#pragma once
/// \file backend.hpp
/// Primary templates of the operators, specialized per backend tag, each backend in its own
/// folder with the same shape (a host class beside its loops): oft::cpu in cpu/
/// (cpu/block_orthogonal.hpp and cpu/linear.hpp over the panel loops of cpu/apply.hpp and
/// cpu/backward.hpp), oft::cuda in cuda/ (cuda/block_orthogonal.hpp and cuda/linear.hpp over
/// cuda/kernels_*.hpp). The public
/// faces <oft/block_orthogonal.hpp> and <oft/linear.hpp> bring the CPU specializations,
/// <oft/cuda.hpp> the CUDA ones. Eigen-free, so both the CPU headers and the nvcc-compiled CUDA
/// headers declare their specializations against the same templates.

#include "config.hpp"

namespace oft {

namespace detail {
template <class>
inline constexpr bool always_false = false;
}

/// Block-diagonal orthogonal operator R = diag(R_1, ..., R_r) built from packed generators.
/// Primary template: only backend specializations exist. A missing one is a compile error.
template <class Scalar, class Parameterization, class Backend = cpu>
class BlockOrthogonal {
  static_assert(detail::always_false<Backend>,
                "oft::BlockOrthogonal has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// Frozen linear layer with an OFT adapter. Primary template, as for BlockOrthogonal.
template <class Scalar, class Parameterization, class Backend = cpu>
class OftLinear {
  static_assert(detail::always_false<Backend>,
                "oft::OftLinear has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// Butterfly orthogonal operator M = B_{m-1} ... B_0 (BOFT; butterfly_spec.hpp). Primary
/// template, as for BlockOrthogonal; the CPU one is cpu/butterfly.hpp (<oft/butterfly.hpp>), the
/// CUDA one cuda/butterfly.hpp.
template <class Scalar, class Parameterization, class Backend = cpu>
class Butterfly {
  static_assert(detail::always_false<Backend>,
                "oft::Butterfly has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// Householder reflection operator (HRA): R = H_{r-1} ... H_0 applied to rows, from r
/// vectors. Primary template; the CPU one is cpu/householder.hpp (<oft/householder.hpp>), the
/// CUDA one cuda/householder.hpp.
template <class Scalar, class Backend = cpu>
class Householder {
  static_assert(detail::always_false<Backend>,
                "oft::Householder has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// Givens rotation operator (GOFT): R = P_L ... P_1, stages of disjoint Givens rotations
/// (givens_spec.hpp). Primary template; the CPU one is cpu/givens.hpp (<oft/givens.hpp>), the
/// CUDA one cuda/givens.hpp.
template <class Scalar, class Backend = cpu>
class Givens {
  static_assert(detail::always_false<Backend>,
                "oft::Givens has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// Many adapters' block-diagonal rotations resident for one layer, each token rotated by its
/// own (serving). Primary template; the CPU one is cpu/adapter_bank.hpp (<oft/adapter_bank.hpp>),
/// the CUDA one cuda/adapter_bank.hpp (<oft/cuda.hpp>).
template <class Scalar, class Backend = cpu>
class AdapterBank {
  static_assert(detail::always_false<Backend>,
                "oft::AdapterBank has no implementation for this backend: use oft::cpu, or "
                "include <oft/cuda.hpp> (from a .cu file) for oft::cuda");
};

/// A frozen linear layer (optionally fused projections) serving many adapters in one batch over
/// AdapterBanks. Primary template; the CPU one is cpu/serving_linear.hpp (<oft/serving_linear.hpp>).
template <class Scalar, class Backend = cpu>
class ServingLinear {
  static_assert(detail::always_false<Backend>,
                "oft::ServingLinear has no implementation for this backend yet: use oft::cpu");
};

}  // namespace oft

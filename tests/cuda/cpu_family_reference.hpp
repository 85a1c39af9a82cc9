#pragma once
/// \file cpu_family_reference.hpp
/// oft's CPU Butterfly (BOFT), Givens (GOFT) and Householder (HRA) operators as references for the CUDA family
/// tests, behind an Eigen-free interface (cpu_family_reference.cpp is compiled by the host
/// compiler). Matrices are contiguous row-major std::vectors:
///   theta   m N x b(b-1)/2 (factor i's blocks are rows i N .. i N + N - 1)
///   angles  GivensSpec::angles() values, stage-major
///   x, y    n x d
/// `terms` is the Cayley-Neumann k of every block, or kExactCayley (cpu_reference.hpp).

#include <vector>

#include "cpu_reference.hpp"

namespace oft_cuda_test {

/// A butterfly: m factors of `blocks` blocks of b (d = blocks * b).
struct ButterflyConfig {
  Index blocks = 2;
  Index b = 2;
  Index factors = 1;
  int terms = 4;

  Index features() const { return blocks * b; }
  Index generators() const { return factors * blocks; }
  Index packed() const { return b * (b - 1) / 2; }
};

/// Y = X M (X M^T when `transposed`), n x d, by oft::Butterfly<S, ..., cpu>.
template <class S>
std::vector<S> cpu_butterfly_apply(const ButterflyConfig& config, const std::vector<S>& theta,
                                   const std::vector<S>& x, Index n, bool transposed);

/// oft::Butterfly<S, ..., cpu>::backward: dx (n x d) and dtheta (m N x packed); a null pointer
/// skips that output.
template <class S>
void cpu_butterfly_backward(const ButterflyConfig& config, const std::vector<S>& theta,
                            const std::vector<S>& x, const std::vector<S>& dy, Index n,
                            std::vector<S>* dx, std::vector<S>* dtheta);

/// Y = X R (X R^T when `transposed`) by oft::Givens<S, cpu>, for d features in the paper's
/// layout or, when `butterfly_layout`, the full butterfly one.
template <class S>
std::vector<S> cpu_givens_apply(Index d, bool butterfly_layout, const std::vector<S>& angles,
                                const std::vector<S>& x, Index n, bool transposed);

/// oft::Givens<S, cpu>::backward: dx (n x d) and dangles; a null pointer skips that output.
template <class S>
void cpu_givens_backward(Index d, bool butterfly_layout, const std::vector<S>& angles,
                         const std::vector<S>& x, const std::vector<S>& dy, Index n,
                         std::vector<S>* dx, std::vector<S>* dangles);

/// Y = X R (X R^T when `transposed`) by oft::Householder<S, cpu> with d features, r reflections,
/// from U (d x r row-major, PEFT's hra_u), with or without Gram-Schmidt.
template <class S>
std::vector<S> cpu_householder_apply(Index d, Index r, bool gram_schmidt, const std::vector<S>& u,
                                     const std::vector<S>& x, Index n, bool transposed);

/// oft::Householder<S, cpu>::backward: dx (n x d) and du (d x r); a null pointer skips that
/// output.
template <class S>
void cpu_householder_backward(Index d, Index r, bool gram_schmidt, const std::vector<S>& u,
                              const std::vector<S>& x, const std::vector<S>& dy, Index n,
                              std::vector<S>* dx, std::vector<S>* du);

}  // namespace oft_cuda_test

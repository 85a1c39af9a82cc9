#pragma once
/// \file detail/thread_scratch.hpp
/// Per-thread b x b scratch for the per-generator stages: theta -> R in set_generators and the
/// parameterization's vector-Jacobian product in backward. Each OS thread keeps its own matrices between
/// calls, so a training step in steady state allocates nothing (tests/cpu/
/// test_no_allocation.cpp pins it), and two threads calling backward on the same const operator
/// still share no state, which a mutable member would break. OpenMP's pool threads persist, so
/// after the first call a matrix is allocated again only when its thread sees a different size.

#include "intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "../config.hpp"

namespace oft::detail {

/// Who owns which scratch matrix. Stages that nest (the generator loop calls the parameterization, and
/// a parameterization may call another, e.g. CayleyNeumannTolerance falls back to exact Cayley) must use
/// disjoint slots, so each one is named here once.
enum class ScratchSlot : int {
  GeneratorQ,       // BlockOrthogonal: Q of the generator at hand
  GeneratorR,       // BlockOrthogonal: its R (set_generators) or R read back (backward)
  GeneratorGrad,    // BlockOrthogonal: G = dL/dR of that generator
  GeneratorDq,      // BlockOrthogonal: dL/dQ
  PolynomialA,      // polynomial_rotation_vjp: Q^T
  PolynomialP1,     // polynomial_rotation_vjp: Horner state P1 (the powers of Q^T)
  PolynomialNext1,  // both polynomial passes: the next Horner state (of R, or of P1)
  PolynomialNext2,  // polynomial_rotation_vjp: the next P2 (dQ's running sum)
  CayleyLhs,        // exact Cayley: I - Q
  CayleyRhs,        // exact Cayley: the right-hand side of the solve
  CayleySolved,     // exact Cayley VJP: the solve's result before the transpose
  SpectralQ,        // skew_spectral_norm: Q in double
  SpectralGram,     // skew_spectral_norm: Q^T Q
  PanelScratch,     // BlockOrthogonal's panel loops: slices larger than the stack scratch
  ButterflyRow,     // Butterfly: one row, while its features are permuted in place
  ButterflyTile,    // Butterfly: a tile of rows going through every factor in cache
  HouseholderPanel, // Householder::apply: X Q and (X Q) T^T of one row tile
  HouseholderTile,  // Householder with bfloat16 activations: a tile of X (and of dY) in float
  GivensRows,       // Givens::backward: one row's output and gradient
  BankScratch,      // AdapterBank::apply: a gathered item's slices (large block sizes)
};

/// This thread's scratch matrix for `Slot`, resized to rows x cols (a no-op when the size is
/// unchanged). Its contents are whatever the last user left: callers overwrite before reading.
template <class Scalar, ScratchSlot Slot>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& thread_matrix(Index rows, Index cols) {
  thread_local Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> matrix;
  if (matrix.rows() != rows || matrix.cols() != cols) matrix.resize(rows, cols);
  return matrix;
}

/// This thread's buffer of at least `count` scalars for `Slot`, aligned by Eigen's allocator
/// (EIGEN_MAX_ALIGN_BYTES: 64 in AVX-512 builds, 32 in AVX2 ones). Unlike thread_matrix it only grows, so callers that alternate between sizes
/// (apply's and backward's panels) do not reallocate.
template <class Scalar, ScratchSlot Slot>
Scalar* thread_buffer(Index count) {
  thread_local Eigen::Matrix<Scalar, Eigen::Dynamic, 1> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace oft::detail

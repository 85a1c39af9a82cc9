#pragma once
/// \file linear.hpp
/// A frozen linear layer W0 (n_out x d, PyTorch nn.Linear layout) with optional bias, finetuned
/// by a block-diagonal orthogonal adapter R (SPEC section 2):
///
///   forward (input-centric, OFTv2):   Y = X * R,  Z = Y * W0^T + bias     cost 2Nd(b + n_out)
///   forward_weight_centric (OFT):     W' = W0 * R^T, Z = X * W'^T + bias  cost 2 n_out d (b + N)
///   backward:                         dY = dZ * W0, then the rotation's backward (dX, dtheta)
///   merge:  W' = W0 * R^T             unmerge: W0 = W' * (R^T)^-1 (true inverse, per block LU)
///
/// W0 and the bias are copied at construction and never change (they are frozen). The base
/// GEMMs go through Eigen, which calls an external BLAS when EIGEN_USE_BLAS is defined (CMake
/// target oft::blas), and parallelizes with OpenMP otherwise.
///
/// The primary template is declared in backend.hpp; this header brings the CPU backend's
/// specialization (cpu/linear.hpp). The CUDA one is <oft/cuda.hpp>'s (cuda/linear.hpp).

#include "block_orthogonal.hpp"
#include "cpu/linear.hpp"

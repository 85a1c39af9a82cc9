#pragma once
/// \file block_orthogonal.hpp
/// Block-diagonal orthogonal operator R = diag(R_1, ..., R_r), each R_i = f(Q_i) for a
/// parameterization f (cayley.hpp, cayley_neumann.hpp, exponential.hpp), applied to
/// activations without ever forming the d x d matrix (OFTv2's input-centric form).
///
/// Orientation (SPEC section 2, PEFT's): `apply` computes Y = X * R, i.e. for block i the N x b
/// slice X_i becomes X_i * R_i (a column vector x becomes R^T x).
///
///   BlockOrthogonal<float, CayleyNeumann> rot(BlockSpec::from_features(4096, 32), CayleyNeumann{4});
///   rot.set_generators(theta);                 // theta -> R_i, once per step
///   rot.apply(x, y);                           // y = x R     (y may be x itself)
///   rot.backward(x, dy, dx, dtheta, workspace);// dx = dy R^T, dtheta = d<dy, x R>/dtheta
///
/// Backward (SPEC section 3): dX_i = dY_i R_i^T and G_i = X_i^T dY_i summed over tokens in one
/// fused pass over X and dY, then dQ_i from the parameterization's vector-Jacobian product, packed as
/// dtheta(p,q) = dQ(p,q) - dQ(q,p) (summed over blocks when they share a generator).
/// Extra memory: threads x generators x b^2 scalars of caller-owned workspace.
///
/// The primary template is declared in backend.hpp; this header brings the CPU backend's
/// specialization (cpu/block_orthogonal.hpp, its panel loops in cpu/apply.hpp and
/// cpu/backward.hpp) and orthogonality_error (orthogonality.hpp). The CUDA one is
/// <oft/cuda.hpp>'s.

#include "backend.hpp"
#include "cpu/block_orthogonal.hpp"
#include "orthogonality.hpp"

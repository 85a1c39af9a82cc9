#pragma once
/// \file householder.hpp
/// Householder reflection adaptation (HRA: Yuan et al., NeurIPS 2024; Hugging Face PEFT's
/// `tuners/hra`): r reflections H_i = I - 2 q_i q_i^T from the columns u_i of U (PEFT's hra_u,
/// d x r), R_H = H_0 ... H_{r-1} (optionally the columns made orthonormal by Gram-Schmidt, PEFT's
/// apply_GS, then R_H = I - 2 Q Q^T), applied to the rows of activations as
/// X R = X R_H^T without forming the d x d matrix (docs/families.md section 2).
///
///   oft::Householder<float> hra(/*d=*/4096, /*r=*/8);
///   hra.set_vectors(u);                     // U: d x r
///   hra.apply(x, y);                        // Y = X R_H^T (y may be x)
///   hra.backward(x, dy, dx, du, workspace); // dX = dY R_H, dU
///
/// PEFT's layer is Y = (X R_H^T) W0^T + bias and its merge W' = W0 R_H (apply_transposed of W0's
/// rows). The primary template is declared in backend.hpp; this header brings the CPU one.

#include "backend.hpp"
#include "cpu/householder.hpp"

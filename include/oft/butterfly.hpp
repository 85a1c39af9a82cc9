#pragma once
/// \file butterfly.hpp
/// Butterfly orthogonal finetuning (BOFT: Liu et al., ICLR 2024; Hugging Face PEFT's
/// `tuners/boft`): M = B_{m-1} ... B_1 B_0 over d = N b features, each factor B_i a
/// block-diagonal rotation of N blocks of b between fixed butterfly permutations
/// (butterfly_spec.hpp has the layout, docs/families.md the math), applied to activations
/// without forming the d x d matrix.
///
///   oft::Butterfly<float, oft::ExactCayley> boft(oft::ButterflySpec::from_features(4096, 32, 2));
///   boft.set_generators(theta);                  // theta: m N packed rows, factor i's at i N
///   boft.apply(x, y);                            // Y = X M (y may be x)
///   boft.backward(x, dy, dx, dtheta, workspace); // dX = dY M^T, dtheta
///
/// PEFT's parameters convert with oft::peft::boft_generators and its gradient with
/// oft::peft::boft_gradient (peft_butterfly.hpp). The primary template is declared in
/// backend.hpp; this header brings the CPU one (cpu/butterfly.hpp).

#include "backend.hpp"
#include "butterfly_spec.hpp"
#include "cpu/butterfly.hpp"

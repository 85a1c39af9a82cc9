#pragma once
/// \file givens.hpp
/// Givens orthogonal finetuning (GOFT: Ma et al., ICML 2024, arXiv 2404.04316): R = P_L ... P_1,
/// each stage a product of disjoint Givens rotations with one angle each, in the paper's layout
/// (d - 1 angles) or the full butterfly (d/2 per stage; PEFT's BOFT with b = 2), applied to
/// activation rows in place without forming R (givens_spec.hpp has the layouts, docs/families.md
/// section 3 the math and which choices are ours: there is no package to check against).
///
///   oft::Givens<float> goft(oft::GivensSpec(4096, oft::GivensLayout::Goft));
///   goft.set_angles(angles);                            // 4095 angles, stage-major
///   goft.apply(x, y);                                   // Y = X R (y may be x)
///   goft.backward(x, dy, dx, dangles.data(), workspace); // dX = dY R^T, d angles
///
/// The primary template is declared in backend.hpp; this header brings the CPU one.

#include "backend.hpp"
#include "cpu/givens.hpp"
#include "givens_spec.hpp"

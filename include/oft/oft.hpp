#pragma once
/// \file oft.hpp
/// Umbrella header for oft on the CPU: orthogonal finetuning (OFT / OFTv2) parameterizations,
/// block-diagonal orthogonal operators and the OFT linear layer. Conventions: docs/conventions.md.
/// The CUDA backend is opt-in (<oft/cuda.hpp>, from .cu files only).

#include "version.hpp"           // OFT_VERSION_*, oft::version()
#include "config.hpp"            // Index, backend tags
#include "errors.hpp"            // exception conventions
#include "index.hpp"             // packed layout, BlockSpec
#include "view.hpp"              // MatrixView over raw memory
#include "skew.hpp"              // packed skew generators: views, owning type, pack/unpack
#include "neumann.hpp"           // Neumann coefficients and error bounds
#include "parameterization.hpp"  // parameterization concept
#include "cayley.hpp"            // ExactCayley
#include "cayley_neumann.hpp"    // CayleyNeumann, CayleyNeumannTolerance
#include "exponential.hpp"       // MatrixExponential
#include "norm_clipping.hpp"     // Clipped<Map, FrobeniusNorm / SpectralNorm>: per-block norm clipping
#include "newton_schulz.hpp"     // NewtonSchulz: orthogonalization by products only
#include "expressions.hpp"       // lazy skew / cayley / cayley_neumann
#include "workspace.hpp"         // caller-owned scratch
#include "block_orthogonal.hpp"  // BlockOrthogonal operator
#include "linear.hpp"            // OftLinear layer
#include "butterfly.hpp"         // Butterfly (BOFT) operator
#include "householder.hpp"       // Householder (HRA) operator
#include "givens.hpp"            // Givens (GOFT) operator
#include "any_operator.hpp"      // AnyBlockOrthogonal / AnyOftLinear / AnyButterfly: map chosen at run time
#include "any_orthogonal.hpp"    // AnyOrthogonal: family chosen at run time
#include "adapter_bank.hpp"      // AdapterBank: many adapters served in one batch
#include "serving_linear.hpp"    // ServingLinear: a frozen (fused) layer over adapter banks
#include "coft.hpp"              // COFT projection
#include "dropout.hpp"           // multiplicative block dropout
#include "peft_polynomial.hpp"   // PEFT's Cayley-Neumann polynomials (peft::NeumannBranch)
#include "peft.hpp"              // PEFT compatibility helpers
#include "peft_butterfly.hpp"    // PEFT's BOFT parameters as Butterfly generators
#include "finite_difference.hpp" // numerical gradients

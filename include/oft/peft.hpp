#pragma once
/// \file peft.hpp
/// Compatibility with Hugging Face PEFT's OFT (SPEC sections 4 and 9). Facts checked against
/// PEFT's released source (peft/tuners/oft/layer.py, versions named where they matter).
///
/// - Neumann branch (`use_cayley_neumann=True`, `num_cayley_neumann_terms = T`):
///   oft::peft::NeumannBranch{T} (peft_polynomial.hpp) computes PEFT's polynomial for every
///   T >= 0 and both of PEFT's forms (>= 0.18.0 and 0.16.0 to 0.17.1), with its exact gradient,
///   on the CPU. For T >= 3 in the current form that polynomial is R_k, k = neumann_terms_to_k(T),
///   so CayleyNeumann{k} (CPU and CUDA) computes the same map.
/// - PEFT's exact branch (`use_cayley_neumann=False`) computes (I - Q)(I + Q)^-1 = R(-Q) = R(Q)^T,
///   the transpose of its own Neumann branch: load such an adapter with negated theta.
/// - COFT (`coft=True`, `eps`): PEFT's float32 radius and projection, peft::coft_radius and
///   peft::coft_project (coft.hpp).
/// - The saved tensor `oft_R.weight` is [r, b(b-1)/2] ([1, ...] with block_share) in oft's packed
///   order; b follows from the row length (block_size_from_packed).

#include "coft.hpp"
#include "config.hpp"
#include "errors.hpp"
#include "index.hpp"
#include "peft_polynomial.hpp"
#include "skew.hpp"

namespace oft::peft {

/// oft's k for PEFT's num_cayley_neumann_terms t >= 3 in PEFT's current form (>= 0.18.0), where
/// PEFT computes R_k with k = t - 2 (t = 3 computes the same as t = 4, k = 2). Throws
/// std::domain_error for t <= 2: PEFT computes I + 2Q for t = 2 and I for t <= 1, which are no
/// truncation R_k; use peft::NeumannBranch{t} (peft_polynomial.hpp) for those, and for
/// adapters of PEFT < 0.18 (NeumannForm::Legacy, no R_k either). Throws std::invalid_argument
/// for t > kMaxNumCayleyNeumannTerms (= kMaxNeumannTerms + 2, CayleyNeumann's cap).
inline int neumann_terms_to_k(int t) {
  detail::require_domain(t >= 3, "PEFT num_cayley_neumann_terms=", t,
                         t == 2 ? " computes I + 2Q" : " computes I",
                         ", which is no Cayley-Neumann truncation R_k (needs t >= 3); "
                         "use oft::peft::NeumannBranch for it");
  detail::require(t <= kMaxNumCayleyNeumannTerms, "PEFT num_cayley_neumann_terms=", t, " exceeds ",
                  kMaxNumCayleyNeumannTerms, " (k = t - 2 <= kMaxNeumannTerms = ", kMaxNeumannTerms,
                  ")");
  return t == 3 ? 2 : t - 2;
}

/// PEFT's num_cayley_neumann_terms t reproducing oft's k in PEFT's current form (>= 0.18.0):
/// t = k + 2. Throws std::domain_error for k < 2, which no PEFT setting computes, and
/// std::invalid_argument for k > kMaxNeumannTerms.
inline int k_to_neumann_terms(int k) {
  detail::require_domain(k >= 2, "Cayley-Neumann k=", k,
                         " has no PEFT num_cayley_neumann_terms equivalent (PEFT reaches k >= 2)");
  detail::require(k <= kMaxNeumannTerms, "Cayley-Neumann k=", k,
                  " exceeds kMaxNeumannTerms=", kMaxNeumannTerms);
  return k + 2;
}

/// Block size b from PEFT's packed row length b(b-1)/2 (throws if not triangular).
inline Index block_size_from_row_length(Index m) { return block_size_from_packed(m); }

/// Negates theta in place: turns an adapter trained with PEFT's exact branch
/// (R_peft = R(-Q)) into oft's ExactCayley convention (R(Q)), and back.
template <class Scalar>
void flip_exact_branch(GeneratorView<Scalar> theta) {
  static_assert(!std::is_const_v<Scalar>, "flip_exact_branch writes theta: pass a mutable view");
  for (Index g = 0; g < theta.count(); ++g)
    for (Index k = 0; k < theta.packed(); ++k) theta.row(g)[k] = -theta.row(g)[k];
}

}  // namespace oft::peft

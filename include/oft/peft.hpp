#pragma once
/// \file peft.hpp
/// Compatibility with Hugging Face PEFT's OFT (SPEC section 4).
///
/// - PEFT's `num_cayley_neumann_terms = t` computes I + 2Q + ... + 2Q^(t-2) + Q^(t-1), which is
///   oft's CayleyNeumann{k} with k = t - 2 for t >= 4; t = 3 computes the same as t = 4 (k = 2);
///   t = 2 (I + 2Q) and t = 1 (I) are no Cayley–Neumann truncation and are refused.
/// - PEFT's exact branch (`use_cayley_neumann=False`) computes (I - Q)(I + Q)^-1 = R(-Q) = R(Q)^T,
///   the transpose of its own Neumann branch: load such an adapter with negated theta.
/// - The saved tensor `oft_R.weight` is [r, b(b-1)/2] ([1, ...] with block_share) in oft's packed
///   order; b follows from the row length (block_size_from_packed).

#include "errors.hpp"
#include "index.hpp"
#include "skew.hpp"

namespace oft::peft {

/// oft's k for PEFT's num_cayley_neumann_terms t (t >= 3). Throws std::domain_error otherwise.
inline int neumann_terms_to_k(int t) {
  detail::require_domain(t >= 3, "PEFT num_cayley_neumann_terms=", t,
                         t == 2 ? " computes I + 2Q" : " computes I",
                         ", which is no Cayley-Neumann truncation R_k (needs t >= 3)");
  return t == 3 ? 2 : t - 2;
}

/// PEFT's num_cayley_neumann_terms t reproducing oft's k (k >= 2; t = k + 2). Throws
/// std::domain_error for k < 2, which no PEFT setting computes.
inline int k_to_neumann_terms(int k) {
  detail::require_domain(k >= 2, "Cayley-Neumann k=", k,
                         " has no PEFT num_cayley_neumann_terms equivalent (PEFT reaches k >= 2)");
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

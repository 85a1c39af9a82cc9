#pragma once
/// \file peft_polynomial.hpp
/// Hugging Face PEFT's Cayley–Neumann polynomial for every `num_cayley_neumann_terms` T, as a
/// CPU parameterization with its exact gradient (SPEC sections 4 and 9):
///
///   oft::BlockOrthogonal<float, oft::peft::NeumannBranch> rot(spec, oft::peft::NeumannBranch{T});
///   oft::peft::NeumannBranch{T, oft::peft::NeumannForm::Legacy}   // adapters of PEFT < 0.18
///
/// What PEFT computes (`OFTRotationModule._cayley_batch` in peft/tuners/oft/layer.py with
/// use_cayley_neumann=True, read in the released wheels 0.16.0, 0.17.0, 0.17.1, 0.18.0 and
/// 0.21.2; Q is the skew generator, R_k = I + 2Q + ... + 2Q^k + Q^(k+1) as in
/// cayley_neumann.hpp):
///
///   T        Current (PEFT >= 0.18.0)      Legacy (PEFT 0.16.0 to 0.17.1)
///   <= 1     I                             I
///   2        I + 2Q                        I + 2Q
///   3        R_2 = I + 2Q + 2Q^2 + Q^3     I + 2Q + 2Q^2
///   >= 4     R_(T-2)                       I + 2Q + 2Q^2 + ... + 2Q^(T-1)
///
/// Cayley–Neumann first appeared in PEFT 0.16.0 (0.15.2 has only the exact solve); 0.18.0 changed
/// the loop so that the last power gets coefficient 1 (R_k), which 0.21.2 still computes. The
/// Legacy form (and I + 2Q, and I) is no truncation R_k: for T >= 1 it equals R_(T-1) - Q^T, so
/// exact Cayley's R minus it is (R + I) Q^T and ||R - P_T||_2 = 2 rho^T / sqrt(1 + rho^2)
/// exactly (rho = ||Q||_2; compare rho^(T-1) for the current form's R_(T-2)).
///
/// The parameterization evaluates that polynomial (one Horner pass, degree - 1 products) and
/// differentiates it exactly (the adjoint Horner pass of cayley_neumann.hpp); it never refuses a
/// Q, like PEFT. CPU only (the CUDA backend implements CayleyNeumann{k}; for T >= 3 in the
/// current form that is the same map, see peft::neumann_terms_to_k).

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "cayley_neumann.hpp"
#include "config.hpp"
#include "errors.hpp"
#include "neumann.hpp"
#include "parameterization.hpp"

namespace oft::peft {

/// Which PEFT release line computed an adapter's Cayley–Neumann polynomial (adapter_config.json
/// records `peft_version`).
enum class NeumannForm {
  Current,  ///< PEFT >= 0.18.0: R_(T-2) for T >= 4 (T = 3 as T = 4), I + 2Q for T = 2
  Legacy,   ///< PEFT 0.16.0 to 0.17.1: I + 2Q + ... + 2Q^(T-1) (every coefficient 2 but c_0)
};

/// The form for an adapter saved by PEFT `major.minor` (Legacy before 0.18).
constexpr NeumannForm neumann_form_for_version(int major, int minor) {
  return (major == 0 && minor < 18) ? NeumannForm::Legacy : NeumannForm::Current;
}

/// Largest num_cayley_neumann_terms accepted: degree T - 1 = kMaxNeumannTerms + 1, the degree of
/// CayleyNeumann{kMaxNeumannTerms}.
inline constexpr int kMaxNumCayleyNeumannTerms = kMaxNeumannTerms + 2;

/// Coefficients of PEFT's polynomial for num_cayley_neumann_terms T >= 0 (see the table above);
/// a coefficient sequence in the sense of neumann.hpp.
struct NeumannBranchCoefficients {
  int terms;  ///< PEFT's T
  NeumannForm form;

  OFT_HOST_DEVICE constexpr int degree() const {
    if (terms <= 1) return 0;
    if (terms == 2) return 1;
    if (form == NeumannForm::Legacy) return terms - 1;
    return truncation() + 1;
  }
  OFT_HOST_DEVICE constexpr double operator()(int j) const {
    if (j < 0 || j > degree()) return 0.0;
    if (j == 0) return 1.0;
    if (terms == 2 || form == NeumannForm::Legacy) return 2.0;
    return neumann_coefficient(j, truncation());
  }
  /// The k of R_k that the current form computes for T >= 3.
  OFT_HOST_DEVICE constexpr int truncation() const { return terms == 3 ? 2 : terms - 2; }
};

/// PEFT's Neumann branch (use_cayley_neumann=True) with num_cayley_neumann_terms = T, in the
/// current or the legacy form; see the file comment. T = 5 (PEFT's default) and the current form
/// when default-constructed.
struct NeumannBranch {
  struct Plan {};
  static constexpr const char* name = "peft_neumann_branch";

  /// T = 5, current form (not explicit: operators default their parameterization with `= {}`).
  NeumannBranch() : NeumannBranch(5) {}
  /// Throws std::invalid_argument unless 0 <= num_cayley_neumann_terms <=
  /// kMaxNumCayleyNeumannTerms (PEFT computes I for every T <= 1; only T >= 0 is a setting).
  explicit NeumannBranch(int num_cayley_neumann_terms,
                         NeumannForm polynomial = NeumannForm::Current)
      : terms(num_cayley_neumann_terms), form(polynomial) {
    detail::require(terms >= 0 && terms <= kMaxNumCayleyNeumannTerms,
                    "PEFT num_cayley_neumann_terms must be in [0, ", kMaxNumCayleyNeumannTerms,
                    "], got ", terms);
    detail::require(form == NeumannForm::Current || form == NeumannForm::Legacy,
                    "PEFT NeumannForm ", static_cast<int>(form), " is neither Current nor Legacy");
  }

  int terms;  ///< PEFT's num_cayley_neumann_terms T
  NeumannForm form;

  NeumannBranchCoefficients coefficients() const { return NeumannBranchCoefficients{terms, form}; }

  /// Whether the polynomial is a Cayley–Neumann truncation R_k (current form, T >= 3).
  bool is_truncation() const { return form == NeumannForm::Current && terms >= 3; }

  template <class Scalar>
  Plan plan(const SquareMatrix<Scalar>& /*q*/) const {
    return {};
  }
  /// Not exact; terms = k when the polynomial is R_k (current form, T >= 3), else -1.
  PlanSummary summary(Plan) const {
    return PlanSummary{false, is_truncation() ? coefficients().truncation() : -1};
  }

  template <class Scalar>
  void rotation(const SquareMatrix<Scalar>& q, Plan, SquareMatrix<Scalar>& r) const {
    detail::polynomial_rotation(q, coefficients(), r);
  }
  template <class Scalar>
  void rotation_vjp(const SquareMatrix<Scalar>& q, const SquareMatrix<Scalar>& /*r*/, Plan,
                    const SquareMatrix<Scalar>& g, SquareMatrix<Scalar>& dq) const {
    detail::polynomial_rotation_vjp(q, coefficients(), g, dq);
  }
};

}  // namespace oft::peft

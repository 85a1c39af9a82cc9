#pragma once
/// \file policies.hpp
/// The parameterizations that both backends understand, as plain types without Eigen, so
/// the CUDA backend (compiled by nvcc, Eigen-free) and the CPU backend name the same types:
///
///   BlockOrthogonal<float, CayleyNeumann, cpu>   and   BlockOrthogonal<float, CayleyNeumann, cuda>
///
/// Only the data and the plan live here. The CPU math behind rotation() and rotation_vjp() is in
/// cayley.hpp and cayley_neumann.hpp (detail::ParameterizationOps specializations); the CUDA kernels are in
/// cuda/. CPU-only parameterizations (CayleyNeumannTolerance, MatrixExponential) stay in their own headers.

#include "config.hpp"
#include "errors.hpp"

namespace oft {

/// What a parameterization decided for one generator, as plain data (for reports and tests).
struct PlanSummary {
  bool exact = false;  ///< exact Cayley (or exponential) was used
  int terms = -1;      ///< Neumann terms k when a truncated series was used, else -1
};

namespace detail {
/// CPU implementation of a parameterization's math on dense b x b matrices; specialized next to the math
/// (cayley.hpp, cayley_neumann.hpp). Dependent on Matrix so this header needs no Eigen.
template <class Parameterization, class Matrix>
struct ParameterizationOps;
}  // namespace detail

/// Exact Cayley transform R(Q) = (I + Q)(I - Q)^-1 (see cayley.hpp for the math).
struct ExactCayley {
  struct Plan {};
  static constexpr const char* name = "cayley";

  template <class Matrix>
  Plan plan(const Matrix& /*q*/) const { return {}; }
  static PlanSummary summary(Plan) { return PlanSummary{true, -1}; }

  template <class Matrix>
  void rotation(const Matrix& q, Plan, Matrix& r) const {
    detail::ParameterizationOps<ExactCayley, Matrix>::rotation(q, r);
  }
  template <class Matrix>
  void rotation_vjp(const Matrix& q, const Matrix& r, Plan, const Matrix& g, Matrix& dq) const {
    detail::ParameterizationOps<ExactCayley, Matrix>::rotation_vjp(q, r, g, dq);
  }
};

/// Cayley–Neumann with a fixed number of terms k >= 0: R_k = I + 2Q + ... + 2Q^k + Q^(k+1)
/// (see cayley_neumann.hpp for the math and its gradient).
struct CayleyNeumann {
  struct Plan {};
  static constexpr const char* name = "cayley_neumann";

  /// k = 4 (not explicit, so that an operator's defaulted `Parameterization p = {}` compiles).
  CayleyNeumann() : CayleyNeumann(4) {}
  explicit CayleyNeumann(int k) : terms(k) {
    detail::require(k >= 0 && k <= kMaxNeumannTerms, "Cayley-Neumann needs 0 <= k <= ",
                    kMaxNeumannTerms, " terms (kMaxNeumannTerms), got k=", k);
  }

  int terms;

  template <class Matrix>
  Plan plan(const Matrix& /*q*/) const { return {}; }
  PlanSummary summary(Plan) const { return PlanSummary{false, terms}; }

  template <class Matrix>
  void rotation(const Matrix& q, Plan, Matrix& r) const {
    detail::ParameterizationOps<CayleyNeumann, Matrix>::rotation(terms, q, r);
  }
  template <class Matrix>
  void rotation_vjp(const Matrix& q, const Matrix& /*r*/, Plan, const Matrix& g, Matrix& dq) const {
    detail::ParameterizationOps<CayleyNeumann, Matrix>::rotation_vjp(terms, q, g, dq);
  }
};

}  // namespace oft

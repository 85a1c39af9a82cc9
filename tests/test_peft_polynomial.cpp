// PEFT's Cayley–Neumann polynomial for every num_cayley_neumann_terms T (peft_polynomial.hpp,
// SPEC sections 4 and 9), pinned against explicit powers of Q written out by hand, against a
// transcription of PEFT's loop (peft/tuners/oft/layer.py, `_cayley_batch`, read in PEFT 0.17.1
// for the legacy form and 0.18.0 for the current one), and differentiated by central
// differences in double.
//
// Tolerances (test_support.hpp's policy): a degree-n polynomial sum_j c_j Q^j evaluated by
// Horner and by explicit powers, each with n products of size b, differ by at most
// 2 (n + 1) b eps P(rho) per entry, P(rho) = sum_j |c_j| rho^j (c = 2 for the two sides).
// Gradients as in test_backward_gradcheck.cpp: 1e-6 of the gradient's largest entry plus
// 4 eps |L|_abs / h.

#include <gtest/gtest.h>

#include <cmath>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/finite_difference.hpp>
#include <oft/linear.hpp>
#include <oft/peft.hpp>
#include <oft/peft_polynomial.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft::peft::NeumannBranch;
using oft::peft::NeumannForm;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

constexpr NeumannForm kForms[] = {NeumannForm::Current, NeumannForm::Legacy};

std::string describe(int terms, NeumannForm form) {
  return "T=" + std::to_string(terms) + (form == NeumannForm::Legacy ? " legacy" : " current");
}

MatD policy_rotation(const NeumannBranch& policy, const MatD& q) {
  MatD r;
  policy.rotation(q, policy.plan(q), r);
  return r;
}

/// PEFT's Neumann branch transcribed from its loop (not copied), for both forms:
///   R = I; if T > 1: R += 2Q; if T > 2: P = Q^2, R += 2P, then
///     legacy  (<= 0.17.1): for i in [3, T):     P = P Q, R += 2P
///     current (>= 0.18.0): for i in [3, T - 1): P = P Q, R += 2P;  P = P Q, R += P.
MatD peft_loop(const MatD& q, int terms, NeumannForm form) {
  const Index b = q.rows();
  MatD r = MatD::Identity(b, b);
  if (terms > 1) r += 2.0 * q;
  if (terms > 2) {
    MatD power = q * q;
    r += 2.0 * power;
    const int end = form == NeumannForm::Legacy ? terms : terms - 1;
    for (int i = 3; i < end; ++i) {
      power = power * q;
      r += 2.0 * power;
    }
    if (form == NeumannForm::Current) {
      power = power * q;
      r += power;
    }
  }
  return r;
}

/// P(rho) = sum_j |c_j| rho^j of a coefficient sequence.
double coefficient_scale(const oft::peft::NeumannBranchCoefficients& c, double rho) {
  double p = 0.0;
  for (int j = 0; j <= c.degree(); ++j) p += std::abs(c(j)) * std::pow(rho, j);
  return p;
}

/// Rounding bound of two evaluations of L = <G, p(Q)> by Horner in double (the numerator of a
/// central difference): each entry of p(Q) is within (n + 1) b eps of sum_j |c_j| (|Q|^j)
/// (Higham's bound for n products with |Q| entrywise), weighted by |G|.
template <class Coefficients>
double loss_rounding(const Coefficients& c, const MatD& q, const MatD& g) {
  const Index b = q.rows();
  MatD absolute = MatD::Zero(b, b), power = MatD::Identity(b, b);
  for (int j = 0; j <= c.degree(); ++j) {
    absolute += std::abs(c(j)) * power;
    power = power * q.cwiseAbs();
  }
  return 2.0 * (c.degree() + 1) * b * oft_test::eps<double>() *
         (g.cwiseAbs().array() * absolute.array()).sum();
}

/// The fixed b = 4 generator of the pinned tests (packed order of docs/conventions.md).
MatD fixed_generator() {
  const double t[6] = {0.11, -0.23, 0.07, 0.19, -0.05, 0.13};
  MatD q(4, 4);
  q << 0.0, t[0], t[1], t[2],   //
      -t[0], 0.0, t[3], t[4],   //
      -t[1], -t[3], 0.0, t[5],  //
      -t[2], -t[4], -t[5], 0.0;
  return q;
}

// --- coefficients --------------------------------------------------------------------------------

TEST(PeftPolynomial, CoefficientsByHand) {
  // c_0, c_1, ... for T = 0..8, written out from the table in peft_polynomial.hpp.
  const std::vector<std::vector<double>> current = {{1},
                                                    {1},
                                                    {1, 2},
                                                    {1, 2, 2, 1},
                                                    {1, 2, 2, 1},
                                                    {1, 2, 2, 2, 1},
                                                    {1, 2, 2, 2, 2, 1},
                                                    {1, 2, 2, 2, 2, 2, 1},
                                                    {1, 2, 2, 2, 2, 2, 2, 1}};
  const std::vector<std::vector<double>> legacy = {{1},
                                                   {1},
                                                   {1, 2},
                                                   {1, 2, 2},
                                                   {1, 2, 2, 2},
                                                   {1, 2, 2, 2, 2},
                                                   {1, 2, 2, 2, 2, 2},
                                                   {1, 2, 2, 2, 2, 2, 2},
                                                   {1, 2, 2, 2, 2, 2, 2, 2}};
  for (int terms = 0; terms <= 8; ++terms)
    for (NeumannForm form : kForms) {
      const auto& expected =
          form == NeumannForm::Current ? current[size_t(terms)] : legacy[size_t(terms)];
      const auto c = NeumannBranch{terms, form}.coefficients();
      ASSERT_EQ(c.degree() + 1, static_cast<int>(expected.size())) << describe(terms, form);
      for (int j = 0; j <= c.degree(); ++j)
        EXPECT_EQ(c(j), expected[size_t(j)]) << describe(terms, form) << " j=" << j;
      EXPECT_EQ(c(-1), 0.0);
      EXPECT_EQ(c(c.degree() + 1), 0.0);
    }
}

// --- values --------------------------------------------------------------------------------------

// Each polynomial against sums of explicit powers of the fixed Q, written out by hand.
TEST(PeftPolynomial, ValuesPinnedByHandForEveryT) {
  const MatD q = fixed_generator();
  const double rho = oft_test::spectral_norm(q);
  const MatD I = MatD::Identity(4, 4), Q1 = q, Q2 = Q1 * q, Q3 = Q2 * q, Q4 = Q3 * q, Q5 = Q4 * q,
             Q6 = Q5 * q, Q7 = Q6 * q;
  const std::vector<MatD> current = {
      I,                                                              // T = 0
      I,                                                              // T = 1
      I + 2 * Q1,                                                     // T = 2
      I + 2 * Q1 + 2 * Q2 + Q3,                                       // T = 3 (= T = 4)
      I + 2 * Q1 + 2 * Q2 + Q3,                                       // T = 4: R_2
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + Q4,                              // T = 5: R_3
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + Q5,                     // T = 6: R_4
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + 2 * Q5 + Q6,            // T = 7: R_5
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + 2 * Q5 + 2 * Q6 + Q7};  // T = 8: R_6
  const std::vector<MatD> legacy = {
      I,                                                                  // T = 0
      I,                                                                  // T = 1
      I + 2 * Q1,                                                         // T = 2
      I + 2 * Q1 + 2 * Q2,                                                // T = 3
      I + 2 * Q1 + 2 * Q2 + 2 * Q3,                                       // T = 4
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4,                              // T = 5
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + 2 * Q5,                     // T = 6
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + 2 * Q5 + 2 * Q6,            // T = 7
      I + 2 * Q1 + 2 * Q2 + 2 * Q3 + 2 * Q4 + 2 * Q5 + 2 * Q6 + 2 * Q7};  // T = 8
  for (int terms = 0; terms <= 8; ++terms)
    for (NeumannForm form : kForms) {
      const NeumannBranch policy{terms, form};
      const MatD& expected =
          form == NeumannForm::Current ? current[size_t(terms)] : legacy[size_t(terms)];
      const auto c = policy.coefficients();
      const double tol =
          2.0 * (c.degree() + 1) * 4 * oft_test::eps<double>() * coefficient_scale(c, rho);
      EXPECT_TRUE(oft_test::within_abs(policy_rotation(policy, q), expected, tol))
          << describe(terms, form);
      EXPECT_TRUE(oft_test::within_abs(peft_loop(q, terms, form), expected, tol))
          << describe(terms, form) << " (PEFT's loop)";
    }
  // T <= 1 is the identity bit for bit, T = 2 is I + 2Q bit for bit (no product at all).
  EXPECT_TRUE(oft_test::all_equal(policy_rotation(NeumannBranch{0}, q), I));
  EXPECT_TRUE(oft_test::all_equal(policy_rotation(NeumannBranch{1, NeumannForm::Legacy}, q), I));
  EXPECT_TRUE(oft_test::all_equal(policy_rotation(NeumannBranch{2}, q), MatD(I + 2.0 * q)));
}

// PEFT's loop for larger T and random Q, both forms; the current form for T >= 3 is
// CayleyNeumann{neumann_terms_to_k(T)} bit for bit (same Horner pass, same coefficients).
TEST(PeftPolynomial, MatchesPeftLoopAndCayleyNeumann) {
  Rng rng(1);
  for (Index b : {2, 7, 16}) {
    const double rho = 0.7;
    const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
    for (int terms : {0, 1, 2, 3, 4, 5, 9, 12, 20})
      for (NeumannForm form : kForms) {
        const NeumannBranch policy{terms, form};
        const auto c = policy.coefficients();
        const double tol =
            2.0 * (c.degree() + 1) * b * oft_test::eps<double>() * coefficient_scale(c, rho);
        EXPECT_TRUE(
            oft_test::within_abs(policy_rotation(policy, q), peft_loop(q, terms, form), tol))
            << describe(terms, form) << " b=" << b;
        if (form == NeumannForm::Current && terms >= 3) {
          MatD r_k;
          const oft::CayleyNeumann truncation{oft::peft::neumann_terms_to_k(terms)};
          truncation.rotation(q, oft::CayleyNeumann::Plan{}, r_k);
          EXPECT_TRUE(oft_test::all_equal(policy_rotation(policy, q), r_k))
              << describe(terms, form);
        }
      }
  }
}

// What each polynomial is, as a map: R_k is rho^(k+1) from exact Cayley; the others (T <= 2 and
// the legacy form) equal R_(T-1) - Q^T, at distance ||(R + I) Q^T||_2 = 2 rho^T / sqrt(1 + rho^2)
// (Q normal, |r(i lambda) + 1| = 2 / |1 - i lambda|). Measured with SVDs in double: allowance
// 2 (n + 1) b eps P(rho) for the polynomial plus 4 b eps sqrt(1 + rho^2) for the LU-based R.
TEST(PeftPolynomial, DistanceToExactCayley) {
  Rng rng(2);
  const Index b = 8;
  for (double rho : {0.3, 0.6}) {
    const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
    MatD exact;
    oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, exact);
    for (int terms = 1; terms <= 10; ++terms)
      for (NeumannForm form : kForms) {
        const NeumannBranch policy{terms, form};
        const double expected = policy.is_truncation()
                                    ? std::pow(rho, policy.coefficients().truncation() + 1)
                                    : 2.0 * std::pow(rho, terms) / std::sqrt(1.0 + rho * rho);
        const double allowance = 2.0 * (policy.coefficients().degree() + 1) * b *
                                     oft_test::eps<double>() *
                                     coefficient_scale(policy.coefficients(), rho) +
                                 4.0 * b * oft_test::eps<double>() * std::sqrt(1.0 + rho * rho);
        EXPECT_NEAR(oft_test::spectral_norm(MatD(exact - policy_rotation(policy, q))), expected,
                    allowance)
            << describe(terms, form) << " rho=" << rho;
      }
  }
}

// --- the policy in the operators -----------------------------------------------------------------

TEST(PeftPolynomial, PolicyInOperatorsFloatAndDouble) {
  Rng rng(3);
  const Index b = 6, r = 4, d = r * b;
  const auto theta = oft_test::random_generators_with_rho<double>(r, b, 0.5, rng);
  oft::Generators<float> theta_f(r, b);
  for (Index k = 0; k < theta.values().size(); ++k)
    theta_f.values().data()[k] = static_cast<float>(theta.values().data()[k]);
  for (NeumannForm form : kForms) {
    const NeumannBranch policy{4, form};
    oft::BlockOrthogonal<double, NeumannBranch> op(oft::BlockSpec::from_features(d, b), policy);
    op.set_generators(theta);
    oft::BlockOrthogonal<float, NeumannBranch> op_f(oft::BlockSpec::from_features(d, b), policy);
    op_f.set_generators(theta_f);
    for (Index g = 0; g < r; ++g) {
      const MatD q_f = theta_f.dense(g).cast<double>();
      EXPECT_TRUE(oft_test::all_equal(op.block(g), policy_rotation(policy, theta.dense(g))));
      // Float against the double polynomial of the same (rounded) theta: 2 (n + 1) b
      // (eps_float + eps_double) P(rho), rho = 0.5 up to float rounding, so below 0.51.
      const double tol = 2.0 * (policy.coefficients().degree() + 1) * b *
                         (oft_test::eps<float>() + oft_test::eps<double>()) *
                         coefficient_scale(policy.coefficients(), 0.51);
      EXPECT_TRUE(oft_test::within_abs(op_f.block(g), policy_rotation(policy, q_f), tol))
          << describe(4, form) << " generator " << g;
      EXPECT_EQ(op.plan(g).exact, false);
      EXPECT_EQ(op.plan(g).terms, form == NeumannForm::Current ? 2 : -1);
    }
    // The linear layer with the same policy merges W' = W0 R^T: per entry a float dot product of
    // length b, within gamma_b |W0| |R|^T of the exact one (Higham eq. 3.5).
    const RowMat<float> w = oft_test::random_matrix<float>(3, d, rng);
    oft::OftLinear<float, NeumannBranch> layer(oft::view(w), nullptr, b, false, policy);
    layer.set_generators(theta_f);
    const RowMat<float> merged = layer.merged();
    const MatD dense = op_f.dense().cast<double>();
    const MatD expected = w.cast<double>() * dense.transpose();
    const MatD bound =
        oft_test::gamma<float>(b) * oft_test::abs_d(w) * MatD(oft_test::abs_d(dense).transpose());
    EXPECT_TRUE(oft_test::within_bound(merged, expected, bound)) << describe(4, form);
    // Default-constructed: PEFT's default T = 5, current form.
    const oft::BlockOrthogonal<float, NeumannBranch> defaulted(oft::BlockSpec::from_features(d, b));
    EXPECT_EQ(defaulted.parameterization().terms, 5);
    EXPECT_EQ(defaulted.parameterization().form, NeumannForm::Current);
  }
}

TEST(PeftPolynomial, SettingsAndSummary) {
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([] { NeumannBranch{-1}; }, {"-1"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { NeumannBranch{oft::peft::kMaxNumCayleyNeumannTerms + 1}; }, {"1027"}));
  EXPECT_NO_THROW(NeumannBranch{oft::peft::kMaxNumCayleyNeumannTerms});
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { NeumannBranch(5, static_cast<NeumannForm>(3)); }, {"3"}));
  const auto summary = [](int terms, NeumannForm form) {
    return NeumannBranch{terms, form}.summary(NeumannBranch::Plan{});
  };
  EXPECT_EQ(summary(5, NeumannForm::Current).terms, 3);
  EXPECT_EQ(summary(3, NeumannForm::Current).terms, 2);
  EXPECT_EQ(summary(4, NeumannForm::Current).terms, 2);
  EXPECT_EQ(summary(2, NeumannForm::Current).terms, -1);
  EXPECT_EQ(summary(0, NeumannForm::Current).terms, -1);
  EXPECT_EQ(summary(5, NeumannForm::Legacy).terms, -1);
  EXPECT_FALSE(summary(5, NeumannForm::Legacy).exact);
  EXPECT_EQ(oft::peft::neumann_form_for_version(0, 16), NeumannForm::Legacy);
  EXPECT_EQ(oft::peft::neumann_form_for_version(0, 17), NeumannForm::Legacy);
  EXPECT_EQ(oft::peft::neumann_form_for_version(0, 18), NeumannForm::Current);
  EXPECT_EQ(oft::peft::neumann_form_for_version(0, 21), NeumannForm::Current);
  EXPECT_EQ(oft::peft::neumann_form_for_version(1, 0), NeumannForm::Current);
}

// --- gradients -----------------------------------------------------------------------------------

/// dtheta of BlockOrthogonal<double, NeumannBranch>::backward against central differences of
/// L(theta) = <dY, X R(theta)> for one configuration.
void gradcheck_operator(const NeumannBranch& policy, Index b, Index r, bool shared, Rng& rng) {
  const std::string what =
      describe(policy.terms, policy.form) + " b=" + std::to_string(b) + (shared ? " shared" : "");
  const Index d = r * b, n = 4;
  const auto spec = oft::BlockSpec::from_features(d, b, shared);
  const auto theta = oft_test::random_generators<double>(spec.generators(), b, 0.4, rng);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
  oft::BlockOrthogonal<double, NeumannBranch> op(spec, policy);
  op.set_generators(theta);
  oft::Generators<double> dtheta(spec.generators(), b);
  oft::Workspace<double> workspace;
  op.backward(oft::view(x), oft::view(dy), {}, dtheta.view(), workspace);

  oft::Generators<double> work = theta;
  oft::BlockOrthogonal<double, NeumannBranch> probe(spec, policy);
  RowMat<double> y(n, d);
  auto loss = [&] {
    probe.set_generators(work);
    probe.apply(oft::view(x), oft::view(y));
    return (dy.array() * y.array()).sum();
  };
  const Index count = spec.generators() * spec.packed();
  const std::vector<double> fd = oft::numerical_gradient(work.values().data(), count, loss, 1e-6);
  if (policy.coefficients().degree() == 0) {
    // R = I whatever theta is: the gradient is exactly zero, and so is every difference.
    for (Index j = 0; j < count; ++j) {
      EXPECT_EQ(dtheta.values().data()[j], 0.0) << what;
      EXPECT_EQ(fd[size_t(j)], 0.0) << what;
    }
    return;
  }
  const double scale = dtheta.values().cwiseAbs().maxCoeff();
  ASSERT_GT(scale, 0.0) << what;
  const double loss_abs =
      (dy.cwiseAbs().array() * (x.cwiseAbs() * op.dense().cwiseAbs()).array()).sum();
  const double allowed = 1e-6 * scale + 4.0 * oft_test::eps<double>() * loss_abs / 1e-6;
  for (Index j = 0; j < count; ++j)
    EXPECT_NEAR(dtheta.values().data()[j], fd[size_t(j)], allowed) << what << " coordinate " << j;
}

TEST(PeftPolynomial, GradientMatchesFiniteDifferencesForEveryT) {
  Rng rng(4);
  for (int terms = 0; terms <= 8; ++terms)
    for (NeumannForm form : kForms) {
      gradcheck_operator(NeumannBranch{terms, form}, 5, 3, false, rng);
      gradcheck_operator(NeumannBranch{terms, form}, 4, 3, true, rng);
    }
  for (int terms : {12, 20})
    for (NeumannForm form : kForms)
      gradcheck_operator(NeumannBranch{terms, form}, 5, 2, false, rng);
}

// rotation_vjp on its own, for a dense (not skew) Q and every one of its b^2 entries: the adjoint
// Horner pass differentiates the polynomial for any matrix, also beyond rho = 1.
TEST(PeftPolynomial, RotationVjpOnDenseMatrices) {
  Rng rng(5);
  const Index b = 4;
  for (double scale : {0.3, 1.5})
    for (int terms : {2, 3, 5, 8})
      for (NeumannForm form : kForms) {
        const NeumannBranch policy{terms, form};
        const MatD q = scale * oft_test::random_matrix<double>(b, b, rng).cast<double>();
        const MatD g = oft_test::random_matrix<double>(b, b, rng).cast<double>();
        MatD r = policy_rotation(policy, q), dq;
        policy.rotation_vjp(q, r, NeumannBranch::Plan{}, g, dq);
        MatD work = q, rw;
        auto loss = [&] {
          policy.rotation(work, NeumannBranch::Plan{}, rw);
          return (g.array() * rw.array()).sum();
        };
        const std::vector<double> fd = oft::numerical_gradient(work.data(), b * b, loss, 1e-6);
        const double largest = dq.cwiseAbs().maxCoeff();
        const double allowed = 1e-6 * largest + loss_rounding(policy.coefficients(), q, g) / 1e-6;
        for (Index j = 0; j < b * b; ++j)
          EXPECT_NEAR(dq.data()[j], fd[size_t(j)], allowed)
              << describe(terms, form) << " scale=" << scale << " entry " << j;
      }
}

// The generalized Horner passes take any coefficient list (CoefficientList): a polynomial with
// arbitrary signs and sizes against explicit powers, and its VJP against central differences.
TEST(PolynomialRotation, ArbitraryCoefficientList) {
  Rng rng(6);
  const Index b = 5;
  const double c[] = {0.5, -1.25, 3.0, 0.0, -0.75, 0.125};
  const oft::CoefficientList list{c, 6};
  const MatD q = oft_test::random_skew_with_rho(b, 0.8, rng);
  MatD expected = MatD::Zero(b, b), power = MatD::Identity(b, b);
  double p = 0.0;
  for (int j = 0; j < 6; ++j) {
    expected += c[j] * power;
    power = power * q;
    p += std::abs(c[j]) * std::pow(0.8, j);
  }
  MatD r;
  oft::detail::polynomial_rotation(q, list, r);
  EXPECT_TRUE(oft_test::within_abs(r, expected, 2.0 * 6 * b * oft_test::eps<double>() * p));

  const MatD g = oft_test::random_matrix<double>(b, b, rng).cast<double>();
  MatD dq;
  oft::detail::polynomial_rotation_vjp(q, list, g, dq);
  MatD work = q, rw;
  auto loss = [&] {
    oft::detail::polynomial_rotation(work, list, rw);
    return (g.array() * rw.array()).sum();
  };
  const std::vector<double> fd = oft::numerical_gradient(work.data(), b * b, loss, 1e-6);
  const double allowed = 1e-6 * dq.cwiseAbs().maxCoeff() + loss_rounding(list, q, g) / 1e-6;
  for (Index j = 0; j < b * b; ++j) EXPECT_NEAR(dq.data()[j], fd[size_t(j)], allowed) << j;
  // A constant polynomial has a zero gradient.
  const double constant[] = {2.5};
  oft::detail::polynomial_rotation_vjp(q, oft::CoefficientList{constant, 1}, g, dq);
  EXPECT_TRUE(oft_test::all_equal(dq, MatD::Zero(b, b)));
  oft::detail::polynomial_rotation(q, oft::CoefficientList{constant, 1}, r);
  EXPECT_TRUE(oft_test::all_equal(r, MatD(2.5 * MatD::Identity(b, b))));
}

}  // namespace

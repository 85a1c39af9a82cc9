// Hugging Face PEFT compatibility helpers (peft.hpp, SPEC section 4), pinned against values and
// formulas written out by hand here.

#include <gtest/gtest.h>

#include <cmath>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <oft/peft.hpp>
#include <stdexcept>

#include "test_support.hpp"

namespace {

using oft::Index;
using oft_test::MatD;
using oft_test::Rng;

TEST(PeftTerms, NeumannTermsToK) {
  EXPECT_EQ(oft::peft::neumann_terms_to_k(5), 3);  // PEFT's default t = 5 is k = 3
  EXPECT_EQ(oft::peft::neumann_terms_to_k(4), 2);
  EXPECT_EQ(oft::peft::neumann_terms_to_k(3), 2);  // t = 3 computes the same as t = 4
  EXPECT_EQ(oft::peft::neumann_terms_to_k(6), 4);
  EXPECT_EQ(oft::peft::neumann_terms_to_k(10), 8);
  for (int t : {2, 1, 0, -3})
    EXPECT_TRUE(oft_test::throws_with<std::domain_error>(
        [t] { oft::peft::neumann_terms_to_k(t); },
        {"num_cayley_neumann_terms=" + std::to_string(t), "NeumannBranch"}))
        << "t=" << t;
  // The cap: k = t - 2 <= kMaxNeumannTerms.
  EXPECT_EQ(oft::peft::neumann_terms_to_k(oft::kMaxNeumannTerms + 2), oft::kMaxNeumannTerms);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { oft::peft::neumann_terms_to_k(oft::kMaxNeumannTerms + 3); }, {"1027"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { oft::peft::neumann_terms_to_k(2147483647); }, {"2147483647"}));
}

TEST(PeftTerms, KToNeumannTerms) {
  EXPECT_EQ(oft::peft::k_to_neumann_terms(3), 5);
  EXPECT_EQ(oft::peft::k_to_neumann_terms(2), 4);
  EXPECT_EQ(oft::peft::k_to_neumann_terms(4), 6);
  for (int k = 2; k <= 20; ++k)
    EXPECT_EQ(oft::peft::neumann_terms_to_k(oft::peft::k_to_neumann_terms(k)), k);
  for (int t = 4; t <= 20; ++t)
    EXPECT_EQ(oft::peft::k_to_neumann_terms(oft::peft::neumann_terms_to_k(t)), t);
  for (int k : {1, 0, -1})
    EXPECT_TRUE(oft_test::throws_with<std::domain_error>([k] { oft::peft::k_to_neumann_terms(k); },
                                                         {"k=" + std::to_string(k)}))
        << "k=" << k;
  // No overflow of k + 2: k is capped like CayleyNeumann{k}.
  EXPECT_EQ(oft::peft::k_to_neumann_terms(oft::kMaxNeumannTerms), oft::kMaxNeumannTerms + 2);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [] { oft::peft::k_to_neumann_terms(2147483647); }, {"2147483647"}));
}

TEST(PeftTerms, BlockSizeFromRowLength) {
  EXPECT_EQ(oft::peft::block_size_from_row_length(496), 32);
  EXPECT_EQ(oft::peft::block_size_from_row_length(120), 16);
  EXPECT_THROW(oft::peft::block_size_from_row_length(500), std::invalid_argument);
}

/// PEFT's Neumann branch for num_cayley_neumann_terms = t, transcribed from its loop:
///   R = I; if t > 1: R += 2Q; if t > 2: P = Q^2, R += 2P,
///          for i in range(3, t - 1): P = P Q, R += 2P;  P = P Q, R += P.
MatD peft_neumann(const MatD& q, int t) {
  const Index b = q.rows();
  MatD r = MatD::Identity(b, b);
  if (t > 1) r += 2.0 * q;
  if (t > 2) {
    MatD power = q * q;
    r += 2.0 * power;
    for (int i = 3; i < t - 1; ++i) {
      power = power * q;
      r += 2.0 * power;
    }
    power = power * q;
    r += power;
  }
  return r;
}

MatD oft_neumann(const MatD& q, int k) {
  MatD r;
  oft::CayleyNeumann{k}.rotation(q, oft::CayleyNeumann::Plan{}, r);
  return r;
}

// t = 5 written out: I + 2Q + 2Q^2 + 2Q^3 + Q^4, equal to CayleyNeumann{neumann_terms_to_k(5)}.
TEST(PeftNeumann, FiveTermsByHand) {
  Rng rng(1);
  for (Index b : {2, 4, 16}) {
    const double rho = 0.5;
    const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
    const MatD q2 = q * q, q3 = q2 * q, q4 = q3 * q;
    const MatD by_hand = MatD::Identity(b, b) + 2.0 * q + 2.0 * q2 + 2.0 * q3 + q4;
    // Two evaluations of a degree-4 polynomial: c = 2 per side times (k + 2) b eps P(rho).
    const double tol = 4.0 * 5 * b * oft_test::eps<double>() * oft_test::neumann_scale(rho, 3);
    EXPECT_TRUE(
        oft_test::within_abs(oft_neumann(q, oft::peft::neumann_terms_to_k(5)), by_hand, tol))
        << "b=" << b;
    EXPECT_TRUE(oft_test::within_abs(peft_neumann(q, 5), by_hand, tol)) << "b=" << b;
  }
}

// PEFT's loop for every t >= 3 agrees with oft's k = neumann_terms_to_k(t).
TEST(PeftNeumann, EveryTermCount) {
  Rng rng(2);
  const Index b = 8;
  const double rho = 0.7;
  const MatD q = oft_test::random_skew_with_rho(b, rho, rng);
  for (int t = 3; t <= 9; ++t) {
    const int k = oft::peft::neumann_terms_to_k(t);
    const double tol =
        4.0 * (k + 2) * b * oft_test::eps<double>() * oft_test::neumann_scale(rho, k);
    EXPECT_TRUE(oft_test::within_abs(oft_neumann(q, k), peft_neumann(q, t), tol)) << "t=" << t;
  }
  // t = 2 (I + 2Q) and t = 1 (I) are no R_k: k = 0 would be I + Q. peft::NeumannBranch
  // computes them (and every t; test_peft_polynomial.cpp), here bit for bit: no product at all.
  EXPECT_GT((peft_neumann(q, 2) - oft_neumann(q, 0)).norm(), 0.1);
  for (int t : {0, 1, 2}) {
    MatD r;
    oft::peft::NeumannBranch{t}.rotation(q, oft::peft::NeumannBranch::Plan{}, r);
    EXPECT_TRUE(oft_test::all_equal(r, peft_neumann(q, t))) << "t=" << t;
  }
}

// PEFT's exact branch R_peft = (I - Q)(I + Q)^-1, computed here by hand; after flip_exact_branch
// oft's ExactCayley reproduces it from the same saved theta.
TEST(PeftExact, FlipReproducesPeftExactBranch) {
  Rng rng(3);
  for (Index b : {2, 5, 16}) {
    const Index r = 3;
    const double rho = 0.8;
    auto theta = oft_test::random_generators_with_rho<double>(r, b, rho, rng);
    const oft::Generators<double> saved = theta;  // as PEFT saved it

    oft::peft::flip_exact_branch(theta.view());
    for (Index g = 0; g < r; ++g)
      for (Index k = 0; k < theta.packed(); ++k) EXPECT_EQ(theta.row(g)[k], -saved.row(g)[k]);

    oft::BlockOrthogonal<double, oft::ExactCayley> op(oft::BlockSpec::from_features(r * b, b));
    op.set_generators(theta);
    for (Index g = 0; g < r; ++g) {
      const MatD q = saved.dense(g);  // PEFT's Q from its own theta
      const MatD identity = MatD::Identity(b, b);
      const MatD r_peft = (identity - q) * (identity + q).inverse();
      // Orthogonal entries from two different solves: c = 8 b eps sqrt(1 + rho^2).
      EXPECT_TRUE(oft_test::within_abs(
          op.block(g), r_peft, 8.0 * b * oft_test::eps<double>() * std::sqrt(1.0 + rho * rho)))
          << "b=" << b << " generator " << g;
      // Without the flip, oft would compute the transpose of PEFT's rotation.
      if (b > 1) {
        MatD unflipped;
        oft::ExactCayley{}.rotation(q, oft::ExactCayley::Plan{}, unflipped);
        EXPECT_TRUE(
            oft_test::within_abs(unflipped, MatD(r_peft.transpose()),
                                 8.0 * b * oft_test::eps<double>() * std::sqrt(1.0 + rho * rho)));
        EXPECT_GT((unflipped - r_peft).norm(), 0.1);
      }
    }
    // Flipping twice restores theta bit for bit.
    oft::peft::flip_exact_branch(theta.view());
    EXPECT_TRUE(oft_test::all_equal(theta.values(), saved.values()));
  }
}

}  // namespace

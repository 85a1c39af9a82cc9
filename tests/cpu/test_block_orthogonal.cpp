// Block-diagonal orthogonal operator (block_orthogonal.hpp): the fast input-centric paths against
// slow dense references, over Scalar x block size and the regimes zero / tiny / random / rho
// near 1; strided views, in-place use, thread count, active-block masks.
//
// Tolerances (see test_support.hpp):
//  - apply / apply_transposed / dX: each output entry is a length-b dot product, so the fast
//    path and the reference X * dense() (whose other terms are exact zeros) each lie within
//    gamma_b (|X| |R|) of the exact value (Higham eq. 3.5): bound 2 gamma_b (|X| |R|), rigorous.
//  - dtheta: G_g = sum_i X_i^T dY_i is a length n_g = N * (blocks of g) sum on both paths, so
//    ||dG||_F <= 2 gamma_{n_g} ||A_g||_F with A_g = sum_i |X_i|^T |dY_i|; the VJP amplifies an
//    error in G by at most K (cayley_derivative_scale / neumann_derivative_scale) and adds its own
//    rounding of a few b eps K ||G||_F; packing adds sqrt(2). Bound per generator:
//    ||d dtheta_g||_2 <= c eps (n_g + b) K ||A_g||_F with c = 4.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>
#include <oft/cayley_neumann.hpp>
#include <string>
#include <vector>

#include "../test_support.hpp"

namespace {

using oft::Index;
using oft_test::Mat;
using oft_test::MatD;
using oft_test::Rng;
using oft_test::RowMat;

// --- policies and regimes -------------------------------------------------------------------

double derivative_scale(const oft::ExactCayley&, double rho) {
  return oft_test::cayley_derivative_scale(rho);
}
double derivative_scale(const oft::CayleyNeumann& p, double rho) {
  return oft_test::neumann_derivative_scale(rho, p.terms);
}
/// Max-entry distance between two evaluations of R_g by the same policy (c = 4 as in the
/// policy tests).
template <class Scalar>
double rotation_tolerance(const oft::ExactCayley&, double rho, Index b) {
  return 4.0 * b * oft_test::eps<Scalar>() * std::sqrt(1.0 + rho * rho);
}
template <class Scalar>
double rotation_tolerance(const oft::CayleyNeumann& p, double rho, Index b) {
  return 2.0 * (p.terms + 2) * b * oft_test::eps<Scalar>() * oft_test::neumann_scale(rho, p.terms);
}
std::string policy_name(const oft::ExactCayley&) { return "ExactCayley"; }
std::string policy_name(const oft::CayleyNeumann& p) {
  return "CayleyNeumann{" + std::to_string(p.terms) + "}";
}

template <class F>
void for_each_policy(F&& f) {
  f(oft::ExactCayley{});
  f(oft::CayleyNeumann{3});  // PEFT's default; even m = 4, so R is visibly non-orthogonal
}

enum class Regime { Zero, Tiny, Random, NearOne };
const Regime kRegimes[] = {Regime::Zero, Regime::Tiny, Regime::Random, Regime::NearOne};

std::string regime_name(Regime r) {
  switch (r) {
    case Regime::Zero:
      return "zero";
    case Regime::Tiny:
      return "tiny";
    case Regime::Random:
      return "random";
    case Regime::NearOne:
      return "rho0.95";
  }
  return "?";
}

template <class Scalar>
oft::Generators<Scalar> make_theta(Regime regime, Index count, Index b, Rng& rng) {
  switch (regime) {
    case Regime::Zero:
      return oft::Generators<Scalar>(count, b);
    case Regime::Tiny:
      return oft_test::uniform_generators<Scalar>(count, b, 1e-8, rng);
    case Regime::Random:
      return oft_test::random_generators_with_rho<Scalar>(count, b, 0.6, rng);
    case Regime::NearOne:
      return oft_test::random_generators_with_rho<Scalar>(count, b, 0.95, rng);
  }
  return oft::Generators<Scalar>(count, b);
}

constexpr double kSentinelValue = -777.25;

// --- references -------------------------------------------------------------------------------

/// 2 gamma (|A| |B|): entrywise bound for two evaluations of A * B, with gamma = gamma_b for b
/// nonzero terms per dot product.
template <class SA, class SB>
MatD product_bound(const SA& a, const SB& b, double gamma) {
  return 2.0 * gamma * (oft_test::abs_d(a) * oft_test::abs_d(b));
}

/// dtheta built by hand: G_g = sum over active blocks of g of X_i^T dY_i, then the policy's
/// rotation_vjp, then pack_skew_gradient.
template <class Scalar, class Policy>
RowMat<Scalar> reference_dtheta(const Policy& policy, const oft::BlockSpec& spec,
                                const oft::Generators<Scalar>& theta, const RowMat<Scalar>& x,
                                const RowMat<Scalar>& dy,
                                const std::vector<unsigned char>& active) {
  const Index b = spec.block_size;
  RowMat<Scalar> out(spec.generators(), spec.packed());
  for (Index g = 0; g < spec.generators(); ++g) {
    Mat<Scalar> grad = Mat<Scalar>::Zero(b, b);
    for (Index i = 0; i < spec.blocks; ++i)
      // (No N = 0 slices: Eigen offsets the null data pointer of an empty matrix, which clang's
      // UBSan reports; the sum is zero then.)
      if (x.rows() > 0 && spec.generator_of(i) == g && (active.empty() || active[static_cast<size_t>(i)]))
        grad += x.middleCols(i * b, b).transpose() * dy.middleCols(i * b, b);
    const Mat<Scalar> q = theta.dense(g);
    const auto plan = policy.plan(q);
    Mat<Scalar> r, dq;
    policy.rotation(q, plan, r);
    policy.rotation_vjp(q, r, plan, grad, dq);
    oft::pack_skew_gradient(dq, out.row(g).data());
  }
  return out;
}

/// Per-generator bound c eps (n_g + b) K ||A_g||_F with c = 4 (file comment).
template <class Scalar, class Policy>
std::vector<double> dtheta_tolerance(const Policy& policy, const oft::BlockSpec& spec,
                                     const oft::Generators<Scalar>& theta, const RowMat<Scalar>& x,
                                     const RowMat<Scalar>& dy,
                                     const std::vector<unsigned char>& active) {
  const Index b = spec.block_size;
  std::vector<double> tol(static_cast<size_t>(spec.generators()));
  for (Index g = 0; g < spec.generators(); ++g) {
    MatD a = MatD::Zero(b, b);
    Index terms = 0;
    for (Index i = 0; i < spec.blocks; ++i)
      if (x.rows() > 0 && spec.generator_of(i) == g &&
          (active.empty() || active[static_cast<size_t>(i)])) {
        a += oft_test::abs_d(x.middleCols(i * b, b)).transpose() *
             oft_test::abs_d(dy.middleCols(i * b, b));
        terms += x.rows();
      }
    const double rho = oft_test::row_rho_bound(theta.row(g), spec.packed());
    tol[static_cast<size_t>(g)] = 4.0 * oft_test::eps<Scalar>() * static_cast<double>(terms + b) *
                                  derivative_scale(policy, rho) * a.norm();
  }
  return tol;
}

/// ||actual_g - expected_g||_2 <= tol_g for every generator row.
template <class A, class E>
::testing::AssertionResult rows_within(const A& actual, const E& expected,
                                       const std::vector<double>& tol) {
  for (Index g = 0; g < expected.rows(); ++g) {
    const double err =
        (actual.row(g).template cast<double>() - expected.row(g).template cast<double>()).norm();
    if (!(err <= tol[static_cast<size_t>(g)]))
      return ::testing::AssertionFailure()
             << "generator " << g << ": ||error|| = " << err << " > bound "
             << tol[static_cast<size_t>(g)]
             << " (||expected|| = " << expected.row(g).template cast<double>().norm() << ")";
  }
  return ::testing::AssertionSuccess();
}

template <class Scalar>
RowMat<Scalar> as_matrix(const oft::Generators<Scalar>& g) {
  return g.values();
}

// --- typed fixture: Scalar x block size -------------------------------------------------------

template <class Config>
class BlockOrthogonalTyped : public ::testing::Test {};
constexpr Index kBlocks = 3;  // r in the typed tests (d = r b)
using Configs = ::testing::Types<
    oft_test::Config<float, 2>, oft_test::Config<float, 3>, oft_test::Config<float, 8>,
    oft_test::Config<float, 16>, oft_test::Config<float, 32>, oft_test::Config<float, 64>,
    oft_test::Config<double, 2>, oft_test::Config<double, 3>, oft_test::Config<double, 8>,
    oft_test::Config<double, 16>, oft_test::Config<double, 32>, oft_test::Config<double, 64>>;
TYPED_TEST_SUITE(BlockOrthogonalTyped, Configs, oft_test::ConfigNames);

const Index kTokens[] = {1, 7, 13, 128};

// apply == X * dense(), apply_transposed == X * dense()^T; dense() is block-diagonal with the
// policy's R_g; zero theta gives R = I and apply is a bit-exact copy.
template <class Scalar>
void check_apply_matches_dense_reference(const Index b) {
  const Index r = kBlocks;
  const Index d = kBlocks * b;
  Rng rng(1000 + b);
  for_each_policy([&](auto policy) {
    using Op = oft::BlockOrthogonal<Scalar, decltype(policy)>;
    for (Regime regime : kRegimes)
      for (bool shared : {false, true}) {
        const auto spec = oft::BlockSpec::from_features(d, b, shared);
        const auto theta = make_theta<Scalar>(regime, spec.generators(), b, rng);
        Op op(spec, policy);
        op.set_generators(theta);
        const std::string where =
            policy_name(policy) + " " + regime_name(regime) + (shared ? " shared" : " unshared");
        const RowMat<Scalar> dense = op.dense();
        ASSERT_EQ(dense.rows(), d);
        for (Index i = 0; i < r; ++i)
          for (Index j = 0; j < r; ++j) {
            if (i == j) {
              const Index g = spec.generator_of(i);
              const Mat<Scalar> q = theta.dense(g);
              const double rho = oft_test::row_rho_bound(theta.row(g), spec.packed());
              EXPECT_TRUE(oft_test::within_abs(op.block(i), oft_test::policy_rotation(policy, q),
                                               rotation_tolerance<Scalar>(policy, rho, b)))
                  << where << " block " << i;
              EXPECT_TRUE(oft_test::all_equal(dense.block(i * b, i * b, b, b), op.block(i)));
            } else {
              EXPECT_TRUE(dense.block(i * b, j * b, b, b).isZero(0.0)) << where;
            }
          }
        if (regime == Regime::Zero) {
          EXPECT_TRUE(oft_test::all_equal(dense, RowMat<Scalar>::Identity(d, d))) << where;
        }

        for (Index n : kTokens) {
          const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
          RowMat<Scalar> y(n, d), yt(n, d);
          op.apply(oft::view(x), oft::view(y));
          op.apply_transposed(oft::view(x), oft::view(yt));
          const double g = oft_test::gamma<Scalar>(b);
          EXPECT_TRUE(
              oft_test::within_bound(y, RowMat<Scalar>(x * dense), product_bound(x, dense, g)))
              << where << " N=" << n;
          EXPECT_TRUE(oft_test::within_bound(yt, RowMat<Scalar>(x * dense.transpose()),
                                             product_bound(x, dense.transpose(), g)))
              << where << " N=" << n;
          if (regime == Regime::Zero) {
            EXPECT_TRUE(oft_test::all_equal(y, x)) << where << " N=" << n;
            EXPECT_TRUE(oft_test::all_equal(yt, x)) << where << " N=" << n;
          }
        }
      }
  });
}

// backward: dX == dY * dense()^T and dtheta == the hand-built reference.
template <class Scalar>
void check_backward_matches_dense_reference(const Index b) {
  const Index d = kBlocks * b;
  Rng rng(2000 + b);
  for_each_policy([&](auto policy) {
    using Op = oft::BlockOrthogonal<Scalar, decltype(policy)>;
    for (Regime regime : kRegimes)
      for (bool shared : {false, true}) {
        const auto spec = oft::BlockSpec::from_features(d, b, shared);
        const auto theta = make_theta<Scalar>(regime, spec.generators(), b, rng);
        Op op(spec, policy);
        op.set_generators(theta);
        const RowMat<Scalar> dense = op.dense();
        oft::Workspace<Scalar> workspace;
        for (Index n : kTokens) {
          const std::string where = policy_name(policy) + " " + regime_name(regime) +
                                    (shared ? " shared" : " unshared") + " N=" + std::to_string(n);
          const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
          const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
          RowMat<Scalar> dx(n, d);
          oft::Generators<Scalar> dtheta(spec.generators(), b);
          op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);

          EXPECT_TRUE(oft_test::within_bound(
              dx, RowMat<Scalar>(dy * dense.transpose()),
              product_bound(dy, dense.transpose(), oft_test::gamma<Scalar>(b))))
              << where;
          if (regime == Regime::Zero) {
            EXPECT_TRUE(oft_test::all_equal(dx, dy)) << where;
          }

          const RowMat<Scalar> expected = reference_dtheta(policy, spec, theta, x, dy, {});
          EXPECT_TRUE(rows_within(as_matrix(dtheta), expected,
                                  dtheta_tolerance(policy, spec, theta, x, dy, {})))
              << where;
        }
      }
  });
}

// Views into wider buffers (row stride > d, generator stride > m): results as with contiguous
// storage, NaN padding of the inputs never read, sentinel padding of the outputs untouched.
template <class Scalar>
void check_strided_views_leave_padding_untouched(const Index b) {
  const Index d = kBlocks * b;
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  const Scalar sentinel = Scalar(kSentinelValue);
  Rng rng(3000 + b);
  for (bool shared : {false, true})
    for (Index n : {Index(1), Index(7), Index(13)}) {
      const auto spec = oft::BlockSpec::from_features(d, b, shared);
      const Index m = spec.packed(), count = spec.generators();
      const auto theta = make_theta<Scalar>(Regime::Random, count, b, rng);

      // theta with row stride m + 2 and NaN padding.
      const Index ts = m + 2;
      std::vector<Scalar> theta_buf(static_cast<size_t>(count * ts), nan);
      for (Index g = 0; g < count; ++g)
        for (Index k = 0; k < m; ++k) theta_buf[static_cast<size_t>(g * ts + k)] = theta.row(g)[k];
      oft::BlockOrthogonal<Scalar, oft::ExactCayley> op(spec);
      op.set_generators(oft::GeneratorView<const Scalar>(theta_buf.data(), count, b, ts));
      EXPECT_TRUE(oft_test::all_equal(op.generators().values(), theta.values()));

      const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
      const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
      const Index xs = d + 3, ys = d + 5;
      RowMat<Scalar> x_buf = RowMat<Scalar>::Constant(n, xs, nan);
      RowMat<Scalar> dy_buf = RowMat<Scalar>::Constant(n, xs, nan);
      x_buf.leftCols(d) = x;
      dy_buf.leftCols(d) = dy;
      const oft::MatrixView<const Scalar> xv(x_buf.data(), n, d, xs), dyv(dy_buf.data(), n, d, xs);

      const RowMat<Scalar> dense = op.dense();
      const double g = oft_test::gamma<Scalar>(b);
      for (bool transposed : {false, true}) {
        RowMat<Scalar> y_buf = RowMat<Scalar>::Constant(n, ys, sentinel);
        const oft::MatrixView<Scalar> yv(y_buf.data(), n, d, ys);
        if (transposed)
          op.apply_transposed(xv, yv);
        else
          op.apply(xv, yv);
        const RowMat<Scalar> r = transposed ? RowMat<Scalar>(dense.transpose()) : dense;
        EXPECT_TRUE(oft_test::within_bound(y_buf.leftCols(d), RowMat<Scalar>(x * r),
                                           product_bound(x, r, g)))
            << "N=" << n << " transposed=" << transposed;
        for (Index t = 0; t < n; ++t)
          EXPECT_TRUE(oft_test::all_sentinel(y_buf.row(t).data() + d, ys - d, sentinel));
      }

      RowMat<Scalar> dx_buf = RowMat<Scalar>::Constant(n, ys, sentinel);
      const Index ds = m + 3;
      std::vector<Scalar> dtheta_buf(static_cast<size_t>(count * ds), sentinel);
      oft::Workspace<Scalar> workspace;
      op.backward(xv, dyv, oft::MatrixView<Scalar>(dx_buf.data(), n, d, ys),
                  oft::GeneratorView<Scalar>(dtheta_buf.data(), count, b, ds), workspace);
      EXPECT_TRUE(oft_test::within_bound(dx_buf.leftCols(d), RowMat<Scalar>(dy * dense.transpose()),
                                         product_bound(dy, dense.transpose(), g)))
          << "N=" << n;
      for (Index t = 0; t < n; ++t)
        EXPECT_TRUE(oft_test::all_sentinel(dx_buf.row(t).data() + d, ys - d, sentinel));
      RowMat<Scalar> dtheta(count, m);
      for (Index gi = 0; gi < count; ++gi) {
        for (Index k = 0; k < m; ++k) dtheta(gi, k) = dtheta_buf[static_cast<size_t>(gi * ds + k)];
        EXPECT_TRUE(oft_test::all_sentinel(dtheta_buf.data() + gi * ds + m, ds - m, sentinel));
      }
      const oft::ExactCayley policy;
      EXPECT_TRUE(rows_within(dtheta, reference_dtheta(policy, spec, theta, x, dy, {}),
                              dtheta_tolerance(policy, spec, theta, x, dy, {})))
          << "N=" << n;
    }
}

// In-place use: apply with y == x, backward with dX == dY and with dX == X, all equal to the
// out-of-place results (up to the 2 gamma_b rounding bound; aliasing bugs are O(1) errors).
template <class Scalar>
void check_in_place_equals_out_of_place(const Index b) {
  const Index d = kBlocks * b;
  Rng rng(4000 + b);
  for_each_policy([&](auto policy) {
    for (bool shared : {false, true})
      for (Index n : {Index(7), Index(128)}) {
        const auto spec = oft::BlockSpec::from_features(d, b, shared);
        const auto theta = make_theta<Scalar>(Regime::Random, spec.generators(), b, rng);
        oft::BlockOrthogonal<Scalar, decltype(policy)> op(spec, policy);
        op.set_generators(theta);
        const RowMat<Scalar> dense = op.dense();
        const double g = oft_test::gamma<Scalar>(b);
        const std::string where =
            policy_name(policy) + (shared ? " shared" : " unshared") + " N=" + std::to_string(n);
        const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
        const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);

        RowMat<Scalar> y(n, d), yt(n, d);
        op.apply(oft::view(x), oft::view(y));
        op.apply_transposed(oft::view(x), oft::view(yt));
        RowMat<Scalar> inplace = x;
        op.apply(oft::view(inplace), oft::view(inplace));
        EXPECT_TRUE(oft_test::within_bound(inplace, y, product_bound(x, dense, g))) << where;
        inplace = x;
        op.apply_transposed(oft::view(inplace), oft::view(inplace));
        EXPECT_TRUE(oft_test::within_bound(inplace, yt, product_bound(x, dense.transpose(), g)))
            << where;

        oft::Workspace<Scalar> workspace;
        RowMat<Scalar> dx(n, d);
        oft::Generators<Scalar> dtheta(spec.generators(), b);
        op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
        const auto tol = dtheta_tolerance(policy, spec, theta, x, dy, {});
        const MatD dx_bound = product_bound(dy, dense.transpose(), g);

        // dX == dY.
        RowMat<Scalar> grad = dy;
        oft::Generators<Scalar> dtheta_a(spec.generators(), b);
        op.backward(oft::view(x), oft::view(grad), oft::view(grad), dtheta_a.view(), workspace);
        EXPECT_TRUE(oft_test::within_bound(grad, dx, dx_bound)) << where << " dX==dY";
        EXPECT_TRUE(rows_within(as_matrix(dtheta_a), as_matrix(dtheta), tol)) << where;

        // dX == X.
        RowMat<Scalar> xx = x;
        oft::Generators<Scalar> dtheta_b(spec.generators(), b);
        op.backward(oft::view(xx), oft::view(dy), oft::view(xx), dtheta_b.view(), workspace);
        EXPECT_TRUE(oft_test::within_bound(xx, dx, dx_bound)) << where << " dX==X";
        EXPECT_TRUE(rows_within(as_matrix(dtheta_b), as_matrix(dtheta), tol)) << where;
      }
  });
}

// Active-block mask: dropped blocks are the identity in apply / apply_transposed / backward and
// contribute nothing to dtheta (exactly zero for an unshared generator).
template <class Scalar>
void check_active_block_mask(const Index b) {
  const Index r = 4, d = r * b, n = 13;
  Rng rng(5000 + b);
  const std::vector<unsigned char> mask = {1, 0, 1, 0};
  for (bool shared : {false, true}) {
    const auto spec = oft::BlockSpec::from_features(d, b, shared);
    const auto theta = make_theta<Scalar>(Regime::Random, spec.generators(), b, rng);
    const oft::CayleyNeumann policy{3};
    oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> op(spec, policy);
    op.set_generators(theta);
    const RowMat<Scalar> full = op.dense();
    op.set_active_blocks(mask);
    const RowMat<Scalar> dense = op.dense();
    for (Index i = 0; i < r; ++i) {
      EXPECT_EQ(op.block_active(i), mask[static_cast<size_t>(i)] != 0);
      if (mask[static_cast<size_t>(i)]) {
        EXPECT_TRUE(oft_test::all_equal(op.block(i), full.block(i * b, i * b, b, b)));
      } else {
        EXPECT_TRUE(oft_test::all_equal(op.block(i), RowMat<Scalar>::Identity(b, b)));
      }
    }
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
    const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
    RowMat<Scalar> y(n, d), yt(n, d), dx(n, d);
    op.apply(oft::view(x), oft::view(y));
    op.apply_transposed(oft::view(x), oft::view(yt));
    oft::Generators<Scalar> dtheta(spec.generators(), b);
    oft::Workspace<Scalar> workspace;
    op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
    const double g = oft_test::gamma<Scalar>(b);
    EXPECT_TRUE(oft_test::within_bound(y, RowMat<Scalar>(x * dense), product_bound(x, dense, g)));
    EXPECT_TRUE(oft_test::within_bound(dx, RowMat<Scalar>(dy * dense.transpose()),
                                       product_bound(dy, dense.transpose(), g)));
    for (Index i = 0; i < r; ++i)
      if (!mask[static_cast<size_t>(i)]) {
        EXPECT_TRUE(oft_test::all_equal(y.middleCols(i * b, b), x.middleCols(i * b, b)));
        EXPECT_TRUE(oft_test::all_equal(yt.middleCols(i * b, b), x.middleCols(i * b, b)));
        EXPECT_TRUE(oft_test::all_equal(dx.middleCols(i * b, b), dy.middleCols(i * b, b)));
        if (!shared) {
          EXPECT_TRUE(dtheta.values().row(i).isZero(0.0)) << "dropped block " << i;
        }
      }
    EXPECT_TRUE(rows_within(as_matrix(dtheta), reference_dtheta(policy, spec, theta, x, dy, mask),
                            dtheta_tolerance(policy, spec, theta, x, dy, mask)));
    // An empty mask re-activates every block.
    op.set_active_blocks({});
    EXPECT_TRUE(oft_test::all_equal(op.dense(), full));
  }
}

// orthogonality_error() == max_g ||R_g^T R_g - I||_2, which for exact Cayley is rounding-level
// and for Neumann matches SPEC's formula at the generator's rho.
template <class Scalar>
void check_orthogonality_error(const Index b) {
  const Index d = kBlocks * b;
  Rng rng(6000 + b);
  const auto spec = oft::BlockSpec::from_features(d, b);
  const auto theta = make_theta<Scalar>(Regime::NearOne, spec.generators(), b, rng);
  oft::BlockOrthogonal<Scalar, oft::ExactCayley> exact(spec);
  exact.set_generators(theta);
  EXPECT_LE(exact.orthogonality_error(), 4.0 * b * oft_test::eps<Scalar>() * std::sqrt(2.0));
  oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> neumann(spec, oft::CayleyNeumann{4});
  neumann.set_generators(theta);
  double worst = 0.0;
  for (Index i = 0; i < spec.blocks; ++i)
    worst = std::max(worst, oft_test::orthogonality_defect(neumann.block(i)));
  // Both measure the same Scalar matrices in double: c = 4 b eps_double times ||R||^2 <= P^2.
  const double p = oft_test::neumann_scale(0.95, 4);
  EXPECT_NEAR(neumann.orthogonality_error(), worst, 4.0 * b * oft_test::eps<double>() * p * p);
  // Scalar rounding of theta moves rho by ~eps; k = 4 (odd m = 5): rho^10.
  {
    EXPECT_NEAR(neumann.orthogonality_error(), std::pow(0.95, 10),
                2.0 * 6 * b * oft_test::eps<Scalar>() * p * p + 10 * oft_test::eps<Scalar>());
  }
}

// OpenMP: results with 1 and 3 threads agree. apply / apply_transposed / dX are computed row
// by row with the same arithmetic whatever the split, so they must be identical; dtheta's
// per-thread partial sums of G are added in a different order, so it agrees within the dtheta
// bound. r = 8, N = 515: 2 N d b >= 2^18 flops for b >= 6, so the parallel region is taken
// (b = 2, 3 stay below the threshold and check the serial branch).
template <class Scalar>
void check_thread_count_does_not_change_results(const Index b) {
  const Index r = 8, d = r * b, n = 515;
  Rng rng(7000 + b);
  for (bool shared : {false, true}) {
    const auto spec = oft::BlockSpec::from_features(d, b, shared);
    const auto theta = make_theta<Scalar>(Regime::Random, spec.generators(), b, rng);
    const oft::ExactCayley policy;
    oft::BlockOrthogonal<Scalar, oft::ExactCayley> op(spec, policy);
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
    const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
    RowMat<Scalar> y[2], yt[2], dx[2];
    RowMat<Scalar> dtheta[2];
    const int threads[2] = {1, 3};
    for (int run = 0; run < 2; ++run) {
      oft_test::ScopedThreads scoped(threads[run]);
      op.set_generators(theta);
      y[run].resize(n, d);
      yt[run].resize(n, d);
      dx[run].resize(n, d);
      oft::Generators<Scalar> dt(spec.generators(), b);
      oft::Workspace<Scalar> ws;
      op.apply(oft::view(x), oft::view(y[run]));
      op.apply_transposed(oft::view(x), oft::view(yt[run]));
      op.backward(oft::view(x), oft::view(dy), oft::view(dx[run]), dt.view(), ws);
      dtheta[run] = dt.values();
#if defined(_OPENMP)
      EXPECT_EQ(op.workspace_size(), threads[run] * spec.generators() * b * b);
#endif
    }
    const std::string where = shared ? "shared" : "unshared";
    EXPECT_TRUE(oft_test::all_equal(y[1], y[0])) << where;
    EXPECT_TRUE(oft_test::all_equal(yt[1], yt[0])) << where;
    EXPECT_TRUE(oft_test::all_equal(dx[1], dx[0])) << where;
    EXPECT_TRUE(rows_within(dtheta[1], dtheta[0], dtheta_tolerance(policy, spec, theta, x, dy, {})))
        << where;
  }
}

// Each typed test runs a body templated on Scalar only (b is a run-time parameter of the
// operator), which keeps compile time proportional to the number of Scalars, not of sizes.
TYPED_TEST(BlockOrthogonalTyped, ApplyMatchesDenseReference) {
  check_apply_matches_dense_reference<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, BackwardMatchesDenseReference) {
  check_backward_matches_dense_reference<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, StridedViewsLeavePaddingUntouched) {
  check_strided_views_leave_padding_untouched<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, InPlaceEqualsOutOfPlace) {
  check_in_place_equals_out_of_place<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, ActiveBlockMask) {
  check_active_block_mask<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, OrthogonalityError) {
  check_orthogonality_error<typename TypeParam::Scalar>(TypeParam::b);
}
TYPED_TEST(BlockOrthogonalTyped, ThreadCountDoesNotChangeResults) {
  check_thread_count_does_not_change_results<typename TypeParam::Scalar>(TypeParam::b);
}

// --- non-typed checks -------------------------------------------------------------------------

// Optional outputs: an empty view skips dX or dtheta; the other output is unchanged by that.
TEST(BlockOrthogonal, BackwardOptionalOutputs) {
  const Index b = 8, d = 32, n = 9;
  Rng rng(8);
  const auto spec = oft::BlockSpec::from_features(d, b);
  const auto theta = oft_test::random_generators_with_rho<double>(spec.generators(), b, 0.5, rng);
  oft::BlockOrthogonal<double, oft::ExactCayley> op(spec);
  op.set_generators(theta);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng);
  oft::Workspace<double> ws;
  RowMat<double> dx(n, d), dx_only(n, d);
  oft::Generators<double> dtheta(spec.generators(), b), dtheta_only(spec.generators(), b);
  op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), ws);
  op.backward(oft::view(x), oft::view(dy), oft::view(dx_only), {}, ws);
  op.backward(oft::view(x), oft::view(dy), {}, dtheta_only.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(dx_only, dx));
  EXPECT_TRUE(oft_test::all_equal(dtheta_only.values(), dtheta.values()));
  // Without dtheta no workspace is needed at all (raw overload with none).
  RowMat<double> dx_raw(n, d);
  op.backward(oft::view(x), oft::view(dy), oft::view(dx_raw), {}, nullptr, 0);
  EXPECT_TRUE(oft_test::all_equal(dx_raw, dx));
  // dtheta is overwritten, not accumulated.
  op.backward(oft::view(x), oft::view(dy), {}, dtheta_only.view(), ws);
  EXPECT_TRUE(oft_test::all_equal(dtheta_only.values(), dtheta.values()));
  // A raw workspace of exactly workspace_size() scalars.
  std::vector<double> raw(static_cast<size_t>(op.workspace_size()));
  oft::Generators<double> dtheta_raw(spec.generators(), b);
  op.backward(oft::view(x), oft::view(dy), {}, dtheta_raw.view(), raw.data(), op.workspace_size());
  EXPECT_TRUE(oft_test::all_equal(dtheta_raw.values(), dtheta.values()));
}

// backward_from_block_gradients: dtheta from stacked G_i, summed over shared blocks, masked.
TEST(BlockOrthogonal, BackwardFromBlockGradients) {
  const Index b = 5, r = 4, d = r * b;
  Rng rng(9);
  for (bool shared : {false, true}) {
    const auto spec = oft::BlockSpec::from_features(d, b, shared);
    const auto theta = oft_test::random_generators_with_rho<double>(spec.generators(), b, 0.7, rng);
    const oft::CayleyNeumann policy{2};
    oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, policy);
    op.set_generators(theta);
    const std::vector<unsigned char> mask = {1, 1, 0, 1};
    op.set_active_blocks(mask);
    const RowMat<double> grads = oft_test::random_matrix<double>(r * b, b, rng);
    oft::Generators<double> dtheta(spec.generators(), b);
    op.backward_from_block_gradients(oft::view(grads), dtheta.view());
    RowMat<double> expected(spec.generators(), spec.packed());
    MatD scale = MatD::Zero(spec.generators(), 1);
    for (Index g = 0; g < spec.generators(); ++g) {
      MatD sum = MatD::Zero(b, b);
      for (Index i = 0; i < r; ++i)
        if (spec.generator_of(i) == g && mask[static_cast<size_t>(i)]) {
          sum += grads.middleRows(i * b, b);
          scale(g) += grads.middleRows(i * b, b).norm();
        }
      const MatD q = theta.dense(g);
      MatD rr, dq;
      policy.rotation(q, {}, rr);
      policy.rotation_vjp(q, rr, {}, sum, dq);
      oft::pack_skew_gradient(dq, expected.row(g).data());
    }
    std::vector<double> tol;
    for (Index g = 0; g < spec.generators(); ++g)
      tol.push_back(4.0 * oft_test::eps<double>() * (r + b) *
                    oft_test::neumann_derivative_scale(0.7, 2) * scale(g));
    EXPECT_TRUE(rows_within(dtheta.values(), expected, tol)) << (shared ? "shared" : "unshared");
    if (!shared) {
      EXPECT_TRUE(dtheta.values().row(2).isZero(0.0));
    }
  }
}

// Degenerate sizes: no tokens (N = 0) and 1 x 1 blocks (b = 1, no parameters, R = [1]).
TEST(BlockOrthogonal, EmptyBatchAndUnitBlocks) {
  Rng rng(11);
  {
    const auto spec = oft::BlockSpec::from_features(12, 4);
    oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{2});
    op.set_generators(oft_test::random_generators<double>(3, 4, 0.5, rng));
    RowMat<double> x(0, 12), y(0, 12), dx(0, 12);
    op.apply(oft::view(x), oft::view(y));
    oft::Generators<double> dtheta(3, 4);
    dtheta.values().setConstant(kSentinelValue);
    oft::Workspace<double> ws;
    op.backward(oft::view(x), oft::view(x), oft::view(dx), dtheta.view(), ws);
    EXPECT_TRUE(dtheta.values().isZero(0.0));  // no tokens: zero gradient, overwritten
  }
  {
    const Index d = 5;
    const auto spec = oft::BlockSpec::from_features(d, 1);
    EXPECT_EQ(spec.packed(), 0);
    oft::BlockOrthogonal<double, oft::ExactCayley> op(spec);
    op.set_generators(oft::Generators<double>(d, 1));
    EXPECT_TRUE(oft_test::all_equal(op.dense(), RowMat<double>::Identity(d, d)));
    const RowMat<double> x = oft_test::random_matrix<double>(7, d, rng);
    RowMat<double> y(7, d), dx(7, d);
    op.apply(oft::view(x), oft::view(y));
    EXPECT_TRUE(oft_test::all_equal(y, x));
    oft::Generators<double> dtheta(d, 1);
    oft::Workspace<double> ws;
    op.backward(oft::view(x), oft::view(x), oft::view(dx), dtheta.view(), ws);
    EXPECT_TRUE(oft_test::all_equal(dx, x));
  }
}

TEST(BlockOrthogonal, IdentityBeforeSetGeneratorsAndReplacement) {
  const Index b = 4, d = 12;
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<float, oft::ExactCayley> op(spec);
  EXPECT_EQ(op.features(), d);
  EXPECT_TRUE(oft_test::all_equal(op.dense(), RowMat<float>::Identity(d, d)));
  EXPECT_EQ(op.orthogonality_error(), 0.0);
  Rng rng(10);
  const auto theta1 = oft_test::random_generators<float>(3, b, 0.4, rng);
  const auto theta2 = oft_test::random_generators<float>(3, b, 0.4, rng);
  op.set_generators(theta1);
  const RowMat<float> dense1 = op.dense();
  op.set_generators(theta2);
  EXPECT_TRUE(oft_test::all_equal(op.generators().values(), theta2.values()));
  op.set_generators(theta1);
  EXPECT_TRUE(oft_test::all_equal(op.dense(), dense1));  // deterministic, no state carried over
  // Round trip with an exactly orthogonal R: apply then apply_transposed gives X back.
  const RowMat<float> x = oft_test::random_matrix<float>(5, d, rng);
  RowMat<float> y(5, d), back(5, d);
  op.apply(oft::view(x), oft::view(y));
  op.apply_transposed(oft::view(y), oft::view(back));
  // Two products (2 gamma_b each) plus ||R^T R - I|| <= 4 b eps sqrt(1.16): about 8 b eps ||x||.
  EXPECT_TRUE(oft_test::within_abs(back, x, 8.0 * b * oft_test::eps<float>() * 2.0 * b));
}

}  // namespace

namespace {

// apply_inverse: X R^-1 and X R^-T against the dense inverse, for a Neumann R that is far from
// orthogonal (so R^T would be wrong), strided and in place; a singular block is named.
TEST(BlockOrthogonal, ApplyInverseUndoesApplyForNonOrthogonalR) {
  Rng rng(29);
  const Index b = 6, d = 24, n = 9;
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{2});
  op.set_generators(oft_test::random_generators<double>(spec.generators(), b, 0.7, rng));
  ASSERT_GT(op.orthogonality_error(), 1e-3);  // R^T is not R^-1 here
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  const RowMat<double> inverse = op.dense().inverse();
  for (bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "X R^-T" : "X R^-1");
    const RowMat<double> expected = transposed ? RowMat<double>(x * inverse.transpose()) : RowMat<double>(x * inverse);
    // Strided output with padding that must stay untouched.
    RowMat<double> padded = RowMat<double>::Constant(n, d + 3, kSentinelValue);
    oft::MatrixView<double> y(padded.data(), n, d, d + 3);
    op.apply_inverse(oft::view(x), y, transposed);
    EXPECT_LT((padded.leftCols(d) - expected).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_TRUE((padded.rightCols(3).array() == kSentinelValue).all());
    // In place, and the round trip through apply.
    RowMat<double> z = x;
    op.apply_inverse(oft::view(z), oft::view(z), transposed);
    EXPECT_LT((z - expected).cwiseAbs().maxCoeff(), 1e-12);
    RowMat<double> back(n, d);
    if (transposed)
      op.apply_transposed(oft::view(std::as_const(z)), oft::view(back));
    else
      op.apply(oft::view(std::as_const(z)), oft::view(back));
    EXPECT_LT((back - x).cwiseAbs().maxCoeff(), 1e-12);
  }
}

TEST(BlockOrthogonal, ApplyInverseNamesASingularBlock) {
  // Cayley-Neumann k = 3 on a 2x2 block with theta = 1 (eigenvalues of Q: +-i):
  // R_3 = (I + Q)^2 (I + Q^2) and I + Q^2 = 0, so R_3 = 0.
  const auto spec = oft::BlockSpec::from_features(4, 2);
  oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
  oft::Generators<double> theta(2, 2);
  theta.values() << 0.25, 1.0;
  op.set_generators(theta);
  const RowMat<double> x = RowMat<double>::Ones(3, 4);
  RowMat<double> y = RowMat<double>::Constant(3, 4, kSentinelValue);
  try {
    op.apply_inverse(oft::view(x), oft::view(y));
    ADD_FAILURE() << "a singular R was inverted";
  } catch (const std::domain_error& e) {
    EXPECT_NE(std::string(e.what()).find("block 1 of 2 is singular"), std::string::npos) << e.what();
  }
  EXPECT_TRUE((y.array() == kSentinelValue).all());  // nothing written
}

// The CPU kernel grid: block sizes around every register-tile width and row
// tail (1, 2, 3, 6, 7, 31, 33 are off the packet width and the 6- or 8-row tile; 4, 8 and the
// tails of 31 take the half- and quarter-width packets, and 4, 8, 16 and 32 apply in place
// without a copy where one register tile spans them; 64 and 128 need several column tiles),
// batches of 0, 1, 7, 48 and 2049 rows (one panel, several, ragged), row strides > d with NaN
// padding in the inputs and sentinels in the outputs' padding, in place and out of place,
// 1 and 2 threads, float and double. Each result is checked against the
// dense reference within the rounding bound; with the same thread count a second run, and an
// in-place run, must give bitwise the same dtheta (static schedule, fixed reduction order).
template <class Scalar>
void check_kernel_grid() {
  Rng rng(9100);
  const oft::CayleyNeumann policy{3};
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  const Scalar sentinel = Scalar(kSentinelValue);
  for (Index b : {1, 2, 3, 4, 6, 7, 8, 16, 31, 32, 33, 64, 128}) {
    // Enough blocks that backward's block groups (about 1 KiB of each row, so 8 blocks at
    // b = 32 float, 4 at b = 64, 2 at b = 128) come several to a row, the last one partial.
    const Index r = b >= 64 ? 5 : 11, d = r * b, stride = d + 5;
    const auto spec = oft::BlockSpec::from_features(d, b);
    const auto theta = make_theta<Scalar>(Regime::Random, spec.generators(), b, rng);
    oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> op(spec, policy);
    op.set_generators(theta);
    const RowMat<Scalar> dense = op.dense();
    const double g = oft_test::gamma<Scalar>(b);
    for (Index n : {0, 1, 7, 48, 2049}) {
      const std::string where = "b=" + std::to_string(b) + " N=" + std::to_string(n);
      const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
      const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
      const RowMat<Scalar> y_ref = x * dense, dx_ref = dy * dense.transpose();
      const MatD y_bound = product_bound(x, dense, g);
      const MatD dx_bound = product_bound(dy, dense.transpose(), g);
      const RowMat<Scalar> dtheta_ref = reference_dtheta(policy, spec, theta, x, dy, {});
      const auto tol = dtheta_tolerance(policy, spec, theta, x, dy, {});
      // Strided copies: NaN padding in the inputs, the sentinel in the outputs'.
      RowMat<Scalar> x_buf = RowMat<Scalar>::Constant(n, stride, nan);
      RowMat<Scalar> dy_buf = RowMat<Scalar>::Constant(n, stride, nan);
      x_buf.leftCols(d) = x;
      dy_buf.leftCols(d) = dy;
      const oft::MatrixView<const Scalar> xv(x_buf.data(), n, d, stride), dyv(dy_buf.data(), n, d, stride);
      for (int threads : {1, 2}) {
        oft_test::ScopedThreads scoped(threads);
        const std::string at = where + " threads=" + std::to_string(threads);
        oft::Workspace<Scalar> workspace;

        RowMat<Scalar> y_buf = RowMat<Scalar>::Constant(n, stride, sentinel);
        op.apply(xv, oft::MatrixView<Scalar>(y_buf.data(), n, d, stride));
        EXPECT_TRUE(oft_test::within_bound(y_buf.leftCols(d), y_ref, y_bound)) << at;
        EXPECT_TRUE(n == 0 || (y_buf.rightCols(stride - d).array() == sentinel).all()) << at;
        RowMat<Scalar> inplace = x_buf;
        const oft::MatrixView<Scalar> inplace_view(inplace.data(), n, d, stride);
        op.apply(inplace_view, inplace_view);
        EXPECT_TRUE(oft_test::all_equal(inplace.leftCols(d), y_buf.leftCols(d))) << at << " in place";

        RowMat<Scalar> dx_buf = RowMat<Scalar>::Constant(n, stride, sentinel);
        oft::Generators<Scalar> dtheta(spec.generators(), b), again(spec.generators(), b);
        op.backward(xv, dyv, oft::MatrixView<Scalar>(dx_buf.data(), n, d, stride), dtheta.view(),
                    workspace);
        EXPECT_TRUE(oft_test::within_bound(dx_buf.leftCols(d), dx_ref, dx_bound)) << at;
        EXPECT_TRUE(n == 0 || (dx_buf.rightCols(stride - d).array() == sentinel).all()) << at;
        EXPECT_TRUE(rows_within(as_matrix(dtheta), dtheta_ref, tol)) << at;

        // dX over dY, same thread count: bitwise the out-of-place dX and dtheta.
        RowMat<Scalar> grad = dy_buf;
        const oft::MatrixView<Scalar> grad_view(grad.data(), n, d, stride);
        op.backward(xv, grad_view, grad_view, again.view(), workspace);
        EXPECT_TRUE(oft_test::all_equal(grad.leftCols(d), dx_buf.leftCols(d))) << at << " dX==dY";
        EXPECT_TRUE(oft_test::all_equal(again.values(), dtheta.values())) << at << " rerun";
      }
    }
  }
}

TEST(BlockOrthogonal, KernelGridFloat) { check_kernel_grid<float>(); }
TEST(BlockOrthogonal, KernelGridDouble) { check_kernel_grid<double>(); }

// Large out-of-place outputs (>= 8 MiB, line-aligned rows) are written with streaming stores
// where a packet is a 64-byte line (AVX-512 builds; cpu/gemm_tile.hpp). Only the store
// instruction differs from the in-place path, so Y and dX must equal the in-place results
// bitwise, the padding of a strided output must stay untouched, and a misaligned output (regular
// stores) must give the same values. 2100 rows leave a ragged
// last panel and a 4-row register-tile tail; 1 and 2 threads.
template <class Scalar>
void check_streaming_outputs() {
  Rng rng(9200);
  const Scalar sentinel = Scalar(kSentinelValue);
  const Index n = 2100;
  for (Index b : {16, 32, 64}) {
    const Index d = 1024, stride = d + 64;  // the padding keeps every row packet-aligned
    const auto spec = oft::BlockSpec::from_features(d, b);
    oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
    op.set_generators(make_theta<Scalar>(Regime::Random, spec.generators(), b, rng));
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
    const RowMat<Scalar> dy = oft_test::random_matrix<Scalar>(n, d, rng);
    const auto xv = oft::view(x), dyv = oft::view(dy);
    for (int threads : {1, 2}) {
      oft_test::ScopedThreads scoped(threads);
      const std::string at = "b=" + std::to_string(b) + " threads=" + std::to_string(threads);
      oft::Workspace<Scalar> workspace;
      oft::Generators<Scalar> dtheta(spec.generators(), b), dtheta_in_place(dtheta);

      // The references: in place, so regular stores.
      RowMat<Scalar> y_ref = x;
      op.apply(oft::view(y_ref), oft::view(y_ref));
      RowMat<Scalar> dx_ref = dy;
      op.backward(xv, oft::view(dx_ref), oft::view(dx_ref), dtheta_in_place.view(), workspace);

      RowMat<Scalar> y_buf = RowMat<Scalar>::Constant(n, stride, sentinel);
      RowMat<Scalar> dx_buf = RowMat<Scalar>::Constant(n, stride, sentinel);
      const oft::MatrixView<Scalar> yv(y_buf.data(), n, d, stride);
      const oft::MatrixView<Scalar> dxv(dx_buf.data(), n, d, stride);
      constexpr bool line_packets = oft::detail::cpu::kLanes<Scalar> * sizeof(Scalar) == 64;
      ASSERT_EQ(oft::detail::cpu::streaming_allowed(yv.data(), yv.stride(), b), line_packets) << at;
      op.apply(xv, yv);
      op.backward(xv, dyv, dxv, dtheta.view(), workspace);
      EXPECT_TRUE(oft_test::all_equal(y_buf.leftCols(d), y_ref)) << at << " Y streamed";
      EXPECT_TRUE(oft_test::all_equal(dx_buf.leftCols(d), dx_ref)) << at << " dX streamed";
      EXPECT_TRUE((y_buf.rightCols(stride - d).array() == sentinel).all()) << at;
      EXPECT_TRUE((dx_buf.rightCols(stride - d).array() == sentinel).all()) << at;
      EXPECT_TRUE(oft_test::all_equal(dtheta.values(), dtheta_in_place.values())) << at;

      // One scalar off the packet alignment: regular stores, the same values.
      RowMat<Scalar> shifted = RowMat<Scalar>::Constant(n, stride, sentinel);
      const oft::MatrixView<Scalar> sv(shifted.data() + 1, n, d, stride);
      ASSERT_FALSE(oft::detail::cpu::streaming_allowed(sv.data(), sv.stride(), b)) << at;
      op.apply(xv, sv);
      EXPECT_TRUE(oft_test::all_equal(shifted.middleCols(1, d), y_ref)) << at << " Y misaligned";
      op.backward(xv, dyv, sv, dtheta.view(), workspace);
      EXPECT_TRUE(oft_test::all_equal(shifted.middleCols(1, d), dx_ref)) << at << " dX misaligned";
    }
  }
}

TEST(BlockOrthogonal, StreamingOutputsFloat) { check_streaming_outputs<float>(); }
TEST(BlockOrthogonal, StreamingOutputsDouble) { check_streaming_outputs<double>(); }

}  // namespace

// 01_expressions: the lazy expression level of oft, for one generator.
//
//   oft::skew(row, b)               Q = U - U^T read straight from a packed row (nothing copied)
//   oft::cayley(q).eval()           R   = (I + Q)(I - Q)^-1            (LU solve, no inverse)
//   oft::cayley_neumann(q, k).eval()  R_k = (I + Q)(I + Q + ... + Q^k)  (no inverse at all)
//   .apply(X)                       rows of X times R without forming R (Horner on Q)
//
// and the facts about the truncated series (docs/conventions.md), checked numerically in double:
// ||R - R_k||_2 = rho^(k+1), and ||R_k^T R_k - I||_2 = rho^(2m) for odd m = k + 1,
// 2 rho^m -+ rho^(2m) for even m (minus when 4 divides m). Exits non-zero on any mismatch.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/oft.hpp>

#include <Eigen/SVD>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

using Matrix = Eigen::MatrixXd;
using Rows = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int failures = 0;

// Prints one check and counts it when it fails.
void check(bool ok, const char* what) {
  std::printf("    %-64s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

double norm2(const Matrix& m) { return Eigen::JacobiSVD<Matrix>(m).singularValues()(0); }

// ||R_k^T R_k - I||_2 for rho = ||Q||_2 and m = k + 1 (Q is normal: an exact formula).
double neumann_orthogonality_exact(double rho, int k) {
  const int m = k + 1;
  const double rm = std::pow(rho, m);
  if (m % 2 == 1) return rm * rm;
  return m % 4 == 0 ? 2 * rm - rm * rm : 2 * rm + rm * rm;
}

}  // namespace

int main() {
  const oft::Index b = 8;
  const oft::Index m = oft::packed_size(b);  // 28 numbers describe one 8 x 8 skew matrix

  // A packed generator row, as stored in theta (or in PEFT's oft_R.weight), scaled so that
  // rho = ||Q||_2 = 0.5 exactly.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  std::vector<double> row(static_cast<size_t>(m));
  for (double& v : row) v = normal(rng);
  const double scale = 0.5 / norm2(oft::skew(row.data(), b).eval());
  for (double& v : row) v *= scale;

  std::printf("oft expressions: one generator of block size b = %td (%td packed numbers)\n\n", b,
              m);

  // --- skew: Q = U - U^T, read from the packed row -------------------------------------------
  const auto q = oft::skew(row.data(), b);  // lazy: holds the pointer and b
  const Matrix Q = q.eval();
  const double rho = norm2(Q);
  std::printf("  Q = skew(row, b): rho = ||Q||_2 = %.3f\n", rho);
  check((Q + Q.transpose()).norm() == 0.0, "Q is skew-symmetric (Q^T = -Q)");
  check(Q(2, 5) == row[static_cast<size_t>(oft::packed_index(2, 5, b))] && Q(5, 2) == -Q(2, 5),
        "Q(p,q) = row[p(2b-p-1)/2 + q-p-1], Q(q,p) = -Q(p,q)");

  // --- exact Cayley -----------------------------------------------------------------------------
  const Matrix I = Matrix::Identity(b, b);
  const Matrix R = oft::cayley(q).eval();
  std::printf("\n  R = cayley(Q).eval()\n");
  check((R.transpose() * R - I).norm() < 1e-14, "R^T R = I to 1e-14");
  check(std::abs(R.determinant() - 1.0) < 1e-14, "det R = +1");
  check((R - (I + Q) * (I - Q).inverse()).norm() < 1e-14, "R = (I + Q)(I - Q)^-1");
  check((oft::cayley(-Q).eval() - R.transpose()).norm() < 1e-14,
        "cayley(-Q) = R^T (a dense Q works as a generator too)");
  check((oft::cayley(oft::skew<8>(row.data(), b)).eval() - R).norm() == 0.0,
        "skew<8>: the same with b fixed at compile time");

  // --- Cayley-Neumann: distance to R and orthogonality, for several k -------------------------
  std::printf("\n  R_k = cayley_neumann(Q, k).eval(), rho = %.2f:\n", rho);
  std::printf("     k   ||R - R_k||_2   rho^(k+1)   ||R_k^T R_k - I||_2   formula\n");
  bool distance_ok = true, orthogonality_ok = true;
  for (int k : {1, 2, 3, 4, 6, 8}) {
    const Matrix Rk = oft::cayley_neumann(q, k).eval();
    const double distance = norm2(R - Rk), predicted = std::pow(rho, k + 1);
    const double defect = norm2(Rk.transpose() * Rk - I);
    const double formula = neumann_orthogonality_exact(rho, k);
    std::printf("    %2d   %13.6e   %9.3e   %19.6e   %9.3e%s\n", k, distance, predicted, defect,
                formula, (k + 1) % 2 == 1 ? "   (m odd)" : "");
    distance_ok = distance_ok && std::abs(distance / predicted - 1.0) < 1e-9;
    orthogonality_ok = orthogonality_ok && std::abs(defect / formula - 1.0) < 1e-9;
  }
  check(distance_ok, "||R - R_k||_2 = rho^(k+1) (relative 1e-9)");
  check(orthogonality_ok, "||R_k^T R_k - I||_2 matches the parity formula (1e-9)");
  check(neumann_orthogonality_exact(rho, 4) < neumann_orthogonality_exact(rho, 3) / 5,
        "even k is the better buy: k = 4 beats k = 3 (PEFT's default)");
  check((oft::cayley_neumann(q, 4).eval() -
         (I + 2 * Q + 2 * Q * Q + 2 * Q * Q * Q + 2 * Q * Q * Q * Q + Q * Q * Q * Q * Q))
                .norm() < 1e-14,
        "R_4 = I + 2Q + 2Q^2 + 2Q^3 + 2Q^4 + Q^5");

  // --- matrix-free apply: rows of X times R, without forming R ---------------------------------
  const Rows X = Rows::Random(5, b);  // five tokens
  const Rows y_neumann = oft::cayley_neumann(q, 4).apply(X);
  const Rows y_cayley = oft::cayley(q).apply(X);
  std::printf("\n  apply on %td vectors (each row x becomes x R, i.e. column x -> R^T x):\n",
              X.rows());
  check((y_neumann - X * oft::cayley_neumann(q, 4).eval()).norm() < 1e-13 * X.norm(),
        "cayley_neumann(q, 4).apply(X) = X R_4 (Horner, no b^3 work)");
  check((y_cayley - X * R).norm() < 1e-13 * X.norm(),
        "cayley(q).apply(X) = X R (one LU of I + Q, a solve)");
  check(std::abs(y_cayley.norm() - X.norm()) < 1e-13 * X.norm(),
        "exact Cayley keeps lengths: ||X R||_F = ||X||_F");

  // --- rho >= 1: the series diverges --------------------------------------------------------
  const Matrix Q_big = (1.25 / rho) * Q;  // rho = 1.25
  const Matrix R_big = oft::cayley(Q_big).eval();
  std::printf("\n  rho = 1.25, where the series diverges:\n");
  double previous = 0.0;
  bool grows = true;
  for (int k : {2, 4, 8, 16}) {
    const double distance = norm2(R_big - oft::cayley_neumann(Q_big, k).eval());
    std::printf("    k = %2d   ||R - R_k||_2 = %.3e   (rho^(k+1) = %.3e)\n", k, distance,
                std::pow(1.25, k + 1));
    grows = grows && distance > previous;
    previous = distance;
  }
  check(grows, "the error grows with k: use exact Cayley (or a smaller step)");

  // The tolerance policy picks the smallest k >= 1 whose distance to exact Cayley rho^(k+1)
  // meets the tolerance, for the exact rho (the free bound min(||Q||_F/sqrt2, ||Q||_1) is used
  // only when it already gives k <= 2); with ToleranceMeasure::Orthogonality, the smallest even
  // k whose orthogonality error meets it (fewer terms; not for training, see conventions.md).
  // Either refuses (or falls back to exact Cayley, if asked) when the series cannot meet it.
  const oft::CayleyNeumannTolerance tol(1e-12);
  const oft::CayleyNeumannTolerance::Plan plan = tol.plan(Q);
  const int k_tol = plan.terms;
  const int k_orth =
      tol.with_measure(oft::ToleranceMeasure::Orthogonality).with_min_terms(0).plan(Q).terms;
  std::printf(
      "\n  tolerance 1e-12: CayleyNeumannTolerance picks k = %d from rho = %.3f\n"
      "  (the smallest k for the exact rho = %.3f is %d; on orthogonality instead: k = %d)\n",
      k_tol, plan.rho, rho, oft::neumann_terms_for_distance(rho, 1e-12, 1, 64), k_orth);
  check(std::pow(rho, k_tol + 1) <= 1e-12 && std::pow(rho, k_tol) > 1e-12 &&
            k_tol == oft::neumann_terms_for_distance(rho, 1e-12, 1, 64),
        "the smallest k whose distance to exact Cayley meets the tolerance");
  check(k_orth % 2 == 0 && neumann_orthogonality_exact(rho, k_orth) <= 1e-12 &&
            k_orth == oft::neumann_terms_for_orthogonality(rho, 1e-12, 0, 64),
        "on orthogonality: the smallest even k meeting the tolerance");
  bool refused = false;
  try {
    (void)tol.plan(Q_big);
  } catch (const std::domain_error& e) {
    refused = true;
    std::printf("  rho = 1.25 is refused: %s\n", e.what());
  }
  const oft::CayleyNeumannTolerance fallback(1e-12, oft::OnDivergence::UseExactCayley);
  check(refused && fallback.plan(Q_big).exact,
        "rho >= 1: domain_error, or exact Cayley with OnDivergence");

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#pragma once
/// \file test_support.hpp
/// Shared helpers of the oft test suite: deterministic random data, exact spectral norms,
/// rounding-error bounds derived from machine epsilon, and comparison predicates.
///
/// Tolerance policy (applies to every test): a bound is either
///  - a rigorous rounding-error bound from Higham, "Accuracy and Stability of Numerical
///    Algorithms" (2nd ed.), with unit roundoff u = eps/2 and gamma_n = n u / (1 - n u); e.g. a
///    length-n dot product computed in any order (with or without FMA) satisfies
///    |fl(x.y) - x.y| <= gamma_n |x|.|y| (Higham eq. 3.5), or
///  - `c * n * eps * scale` with a small constant c stated next to the test and an explicit scale,
///    where no rigorous bound is practical (LU solves, eigen/SVD-based norms).
/// No tolerance is tuned to make a test pass.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/parameterization.hpp>

#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <oft/config.hpp>
#include <oft/index.hpp>
#include <oft/skew.hpp>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace oft_test {

using oft::Index;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;
template <class Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <class Scalar>
using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// ---------------------------------------------------------------------------------------------
// Typed-fixture configuration: Scalar x block size.
// ---------------------------------------------------------------------------------------------
template <class Scalar_, int BlockSize>
struct Config {
  using Scalar = Scalar_;
  static constexpr Index b = BlockSize;
};

/// Prints typed-test parameter names as e.g. "double_b8".
struct ConfigNames {
  template <class T>
  static std::string GetName(int) {
    return std::string(std::is_same_v<typename T::Scalar, float> ? "float" : "double") + "_b" +
           std::to_string(T::b);
  }
};

// ---------------------------------------------------------------------------------------------
// Machine epsilon and rounding-error constants.
// ---------------------------------------------------------------------------------------------
template <class Scalar>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<Scalar>::epsilon());
}

/// Higham's gamma_n = n u / (1 - n u) with unit roundoff u = eps/2.
template <class Scalar>
double gamma(Index n) {
  const double u = eps<Scalar>() / 2.0;
  const double nu = static_cast<double>(n) * u;
  return nu / (1.0 - nu);
}

/// Every test program starts single-threaded: ctest -j runs test programs side by side on few
/// cores, where each OpenMP fork/join of a small problem waits for a scheduler time slice
/// (measured: 0.1 ms -> 12 ms per apply on a loaded 2-core machine). Tests of the threaded
/// paths raise the count explicitly with ScopedThreads.
inline const bool kSingleThreadedByDefault = [] {
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
  return true;
}();

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers (same sequence on every platform: no std distributions).
// ---------------------------------------------------------------------------------------------
class Rng {
 public:
  // Reading kSingleThreadedByDefault guarantees its initialization even where an implementation
  // defers the dynamic initialization of inline variables to their first use.
  explicit Rng(std::uint64_t seed) : state_(seed) { (void)kSingleThreadedByDefault; }
  /// SplitMix64 step (an independent implementation from oft's, used only for test data).
  std::uint64_t bits() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  double uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-52 - 1.0; }
  /// Uniform integer in [0, n).
  Index index(Index n) { return static_cast<Index>(bits() % static_cast<std::uint64_t>(n)); }

 private:
  std::uint64_t state_;
};

template <class Scalar>
RowMat<Scalar> random_matrix(Index rows, Index cols, Rng& rng) {
  RowMat<Scalar> m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = static_cast<Scalar>(rng.uniform());
  return m;
}

/// Dense random skew-symmetric b x b matrix (entries uniform in [-1, 1)).
inline MatD random_skew(Index b, Rng& rng) {
  MatD q = MatD::Zero(b, b);
  for (Index p = 0; p < b; ++p)
    for (Index c = p + 1; c < b; ++c) {
      q(p, c) = rng.uniform();
      q(c, p) = -q(p, c);
    }
  return q;
}

/// ||A||_2 (largest singular value), computed in double by a Jacobi SVD.
template <class Derived>
double spectral_norm(const Eigen::MatrixBase<Derived>& a) {
  if (a.size() == 0) return 0.0;
  const MatD ad = a.template cast<double>();
  Eigen::JacobiSVD<MatD> svd(ad);
  return svd.singularValues()(0);
}

/// ||S||_2 = max |eigenvalue| of a symmetric matrix, in double.
template <class Derived>
double symmetric_norm(const Eigen::MatrixBase<Derived>& s) {
  if (s.size() == 0) return 0.0;
  const MatD sd = s.template cast<double>();
  Eigen::SelfAdjointEigenSolver<MatD> eig(sd, Eigen::EigenvaluesOnly);
  return eig.eigenvalues().cwiseAbs().maxCoeff();
}

/// ||R^T R - I||_2 in double.
template <class Derived>
double orthogonality_defect(const Eigen::MatrixBase<Derived>& r) {
  const MatD rd = r.template cast<double>();
  return symmetric_norm(MatD(rd.transpose() * rd - MatD::Identity(rd.rows(), rd.cols())));
}

/// Random skew b x b matrix scaled so that ||Q||_2 = rho (to double rounding).
inline MatD random_skew_with_rho(Index b, double rho, Rng& rng) {
  MatD q = random_skew(b, rng);
  const double norm = spectral_norm(q);
  return norm > 0.0 ? MatD(q * (rho / norm)) : q;
}

/// `count` random generators of block size b, each row scaled to ||theta_row||_2 = row_norm,
/// i.e. ||Q||_F / sqrt(2) = row_norm (an upper bound of rho = ||Q||_2).
template <class Scalar>
oft::Generators<Scalar> random_generators(Index count, Index b, double row_norm, Rng& rng) {
  oft::Generators<Scalar> theta(count, b);
  for (Index g = 0; g < count; ++g) {
    std::vector<double> row(static_cast<size_t>(theta.packed()));
    double squares = 0.0;
    for (double& v : row) {
      v = rng.uniform();
      squares += v * v;
    }
    const double scale = squares > 0.0 ? row_norm / std::sqrt(squares) : 0.0;
    for (Index k = 0; k < theta.packed(); ++k)
      theta.row(g)[k] = static_cast<Scalar>(row[static_cast<size_t>(k)] * scale);
  }
  return theta;
}

/// `count` random generators of block size b with exactly ||Q_g||_2 = rho for each (computed
/// in double, then rounded to Scalar).
template <class Scalar>
oft::Generators<Scalar> random_generators_with_rho(Index count, Index b, double rho, Rng& rng) {
  oft::Generators<Scalar> theta(count, b);
  for (Index g = 0; g < count; ++g) {
    const MatD q = random_skew_with_rho(b, rho, rng);
    for (Index p = 0; p < b; ++p)
      for (Index c = p + 1; c < b; ++c)
        theta.row(g)[oft::packed_index(p, c, b)] = static_cast<Scalar>(q(p, c));
  }
  return theta;
}

/// Entries of a generator set with every value uniform in [-scale, scale).
template <class Scalar>
oft::Generators<Scalar> uniform_generators(Index count, Index b, double scale, Rng& rng) {
  oft::Generators<Scalar> theta(count, b);
  for (Index g = 0; g < count; ++g)
    for (Index k = 0; k < theta.packed(); ++k)
      theta.row(g)[k] = static_cast<Scalar>(scale * rng.uniform());
  return theta;
}

/// Dense Q of row g of a generator set, in double.
template <class Scalar>
MatD dense_q(const oft::Generators<Scalar>& theta, Index g) {
  return theta.dense(g).template cast<double>();
}

/// Rotation of one packed row by a policy, evaluated in Scalar through the policy's own plan.
template <class Scalar, class Policy>
Mat<Scalar> policy_rotation(const Policy& policy, const Mat<Scalar>& q) {
  Mat<Scalar> r;
  policy.rotation(q, policy.plan(q), r);
  return r;
}

/// |A| entrywise as a plain column-major double matrix. Bounds are built from these, so every
/// product in a bound is MatD * MatD (one set of Eigen product kernels per test program instead
/// of one per expression type: it keeps compile time down).
template <class Derived>
MatD abs_d(const Eigen::MatrixBase<Derived>& a) {
  return a.template cast<double>().cwiseAbs();
}

// ---------------------------------------------------------------------------------------------
// Scales that enter the gradient bounds.
// ---------------------------------------------------------------------------------------------

/// P(rho) = sum_j c_j rho^j with the Cayley-Neumann coefficients 1, 2, ..., 2, 1: bounds
/// ||R_k||_2 and every intermediate of the Horner pass.
inline double neumann_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 0; j <= k + 1; ++j) p += (j == 0 || j == k + 1 ? 1.0 : 2.0) * std::pow(rho, j);
  return p;
}

/// P'(rho) = sum_j c_j j rho^(j-1) (at least 1): bounds the norm of the Frechet derivative of
/// R_k at a Q with ||Q||_2 <= rho, hence how the VJP amplifies an error in G.
inline double neumann_derivative_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 1; j <= k + 1; ++j) p += (j == k + 1 ? 1.0 : 2.0) * j * std::pow(rho, j - 1);
  return std::max(1.0, p);
}

/// The same for the exact Cayley VJP dQ = (I + R)^T G (I - Q)^-T: ||I + R|| <= 2,
/// ||(I - Q)^-1|| <= 1, times cond(I - Q) = sqrt(1 + rho^2) for the LU solve's rounding.
inline double cayley_derivative_scale(double rho) { return 2.0 * std::sqrt(1.0 + rho * rho); }

/// ||theta_row||_2 = ||Q||_F / sqrt(2) >= ||Q||_2.
template <class Scalar>
double row_rho_bound(const Scalar* row, Index m) {
  double squares = 0.0;
  for (Index k = 0; k < m; ++k) squares += double(row[k]) * double(row[k]);
  return std::sqrt(squares);
}

// ---------------------------------------------------------------------------------------------
// Comparison predicates (report the worst entry on failure).
// ---------------------------------------------------------------------------------------------

/// |actual - expected| <= bound entrywise (all in double).
template <class A, class E, class B>
::testing::AssertionResult within_bound(const Eigen::MatrixBase<A>& actual,
                                        const Eigen::MatrixBase<E>& expected,
                                        const Eigen::MatrixBase<B>& bound) {
  const MatD a = actual.template cast<double>(), e = expected.template cast<double>(),
             t = bound.template cast<double>();
  if (a.rows() != e.rows() || a.cols() != e.cols() || t.rows() != a.rows() || t.cols() != a.cols())
    return ::testing::AssertionFailure() << "shape mismatch " << a.rows() << "x" << a.cols()
                                         << " vs " << e.rows() << "x" << e.cols();
  Index worst_i = -1, worst_j = -1;
  double worst_ratio = 0.0;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) {
      const double err = std::abs(a(i, j) - e(i, j));
      if (!(err <= t(i, j))) {  // also catches NaN
        const double ratio =
            t(i, j) > 0.0 ? err / t(i, j) : std::numeric_limits<double>::infinity();
        if (worst_i < 0 || !(ratio <= worst_ratio)) {
          worst_ratio = ratio;
          worst_i = i;
          worst_j = j;
        }
      }
    }
  if (worst_i < 0) return ::testing::AssertionSuccess();
  std::ostringstream out;
  out.precision(17);
  out << "entry (" << worst_i << "," << worst_j << "): actual " << a(worst_i, worst_j)
      << ", expected " << e(worst_i, worst_j) << ", |error| "
      << std::abs(a(worst_i, worst_j) - e(worst_i, worst_j)) << " > bound " << t(worst_i, worst_j)
      << " (ratio " << worst_ratio << ")";
  return ::testing::AssertionFailure() << out.str();
}

/// |actual - expected| <= tol for every entry.
template <class A, class E>
::testing::AssertionResult within_abs(const Eigen::MatrixBase<A>& actual,
                                      const Eigen::MatrixBase<E>& expected, double tol) {
  return within_bound(actual, expected, MatD::Constant(actual.rows(), actual.cols(), tol));
}

/// Exact (==) equality of every entry; -0 == +0.
template <class A, class E>
::testing::AssertionResult all_equal(const Eigen::MatrixBase<A>& actual,
                                     const Eigen::MatrixBase<E>& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols())
    return ::testing::AssertionFailure() << "shape mismatch";
  for (Index i = 0; i < actual.rows(); ++i)
    for (Index j = 0; j < actual.cols(); ++j)
      if (!(actual(i, j) == expected(i, j))) {
        std::ostringstream out;
        out.precision(17);
        out << "entry (" << i << "," << j << "): " << actual(i, j) << " != " << expected(i, j);
        return ::testing::AssertionFailure() << out.str();
      }
  return ::testing::AssertionSuccess();
}

/// Every element of `values` equals `sentinel` bit for bit.
template <class Scalar>
::testing::AssertionResult all_sentinel(const Scalar* values, Index count, Scalar sentinel) {
  for (Index i = 0; i < count; ++i)
    if (std::memcmp(&values[i], &sentinel, sizeof(Scalar)) != 0)
      return ::testing::AssertionFailure() << "element " << i << " = " << values[i]
                                           << " was overwritten (sentinel " << sentinel << ")";
  return ::testing::AssertionSuccess();
}

/// Sets the OpenMP thread count for the lifetime of the object (no-op without OpenMP).
class ScopedThreads {
 public:
  explicit ScopedThreads(int threads) {
#if defined(_OPENMP)
    saved_ = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~ScopedThreads() {
#if defined(_OPENMP)
    omp_set_num_threads(saved_);
#endif
  }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  [[maybe_unused]] int saved_ = 1;  // unused in builds without OpenMP
};

/// True when `text` contains `part` (for exception messages).
inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// Runs `f` and succeeds iff it throws exactly an `Exception` (not a sibling type) whose what()
/// contains every string of `parts` (the values at fault).
template <class Exception, class F>
::testing::AssertionResult throws_with(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const Exception& e) {
    const std::string what = e.what();
    for (const std::string& part : parts)
      if (!contains(what, part))
        return ::testing::AssertionFailure()
               << "message \"" << what << "\" does not contain \"" << part << "\"";
    return ::testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw the wrong exception type: " << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw a non-std exception";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace oft_test

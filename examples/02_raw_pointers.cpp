// 02_raw_pointers: embedding oft in a framework (a PyTorch extension, a C++ trainer, an inference
// runtime). Everything goes through raw pointers with shapes and strides; oft allocates nothing
// the caller did not ask for and owns no activation or gradient memory.
//
//   - theta lives in a framework tensor:        GeneratorView<const float>(ptr, r, b)
//   - the activations are a column slice of a wider buffer (row stride > d): MatrixView
//   - the rotation is applied in place on that slice
//   - backward writes dX and dtheta into framework-owned buffers (dtheta with a padded row
//     stride), with a raw workspace of workspace_size() scalars
//   - the parameterization is chosen by tolerance (CayleyNeumannTolerance), with exact Cayley as
//     the fallback for a generator whose series cannot meet it (OnDivergence::UseExactCayley)
//   - errors are exceptions a binding can translate: std::invalid_argument for shapes and
//     aliasing, std::domain_error for values; the outputs are untouched when one is thrown
//
// Everything is verified against a dense double-precision reference; exits non-zero on mismatch.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/oft.hpp>

#include <Eigen/SVD>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using Policy = oft::CayleyNeumannTolerance;
using Rotation = oft::BlockOrthogonal<float, Policy>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("    %-62s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

double relative_error(const MatrixD& a, const MatrixD& b) { return (a - b).norm() / b.norm(); }

// Reference: the dense d x d block-diagonal R in double, each block by the map the operator's
// policy chose for that generator (exact Cayley, or Cayley-Neumann with the chosen k).
MatrixD reference_rotation(const double* theta, oft::Index stride, const Rotation& rot) {
  const oft::Index b = rot.spec().block_size, r = rot.spec().blocks;
  MatrixD dense = MatrixD::Zero(r * b, r * b);
  for (oft::Index i = 0; i < r; ++i) {
    const auto q = oft::skew(theta + i * stride, b);
    const oft::PlanSummary plan = rot.plan(i);
    dense.block(i * b, i * b, b, b) =
        plan.exact ? oft::cayley(q).eval() : oft::cayley_neumann(q, plan.terms).eval();
  }
  return dense;
}

}  // namespace

int main() {
  const oft::Index N = 64, b = 16, r = 4, d = r * b;
  const oft::Index m = oft::packed_size(b);  // 120
  const oft::Index width = 3 * d;            // e.g. a fused [q | k | v] activation, 192 wide
  const oft::Index offset = d;               // we rotate the middle slice
  const oft::Index grad_stride = m + 8;      // dtheta rows padded (an aligned framework tensor)
  std::printf("oft from raw pointers: N = %td tokens, d = %td (r = %td blocks of b = %td)\n\n", N,
              d, r, b);

  // ---- framework-owned memory ------------------------------------------------------------------
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> theta(static_cast<size_t>(r * m));  // [r, m] contiguous, like oft_R.weight
  std::vector<float> activations(static_cast<size_t>(N * width));
  std::vector<float> grad_out(static_cast<size_t>(N * d));  // dY from the layer above
  for (float& v : activations) v = normal(rng);
  for (float& v : grad_out) v = normal(rng);

  // Generators of growing size: rho = ||Q_i||_2 = 0.05, 0.3, 0.8 and 1.5 (beyond the series).
  const double rhos[] = {0.05, 0.3, 0.8, 1.5};
  for (oft::Index i = 0; i < r; ++i) {
    float* row = theta.data() + i * m;
    for (oft::Index k = 0; k < m; ++k) row[k] = normal(rng);
    const Eigen::MatrixXf q = oft::skew(row, b).eval();
    const float scale = float(rhos[i] / Eigen::JacobiSVD<Eigen::MatrixXf>(q).singularValues()(0));
    for (oft::Index k = 0; k < m; ++k) row[k] *= scale;
  }

  // ---- the operator: tolerance mode with exact Cayley as the fallback -----------------------
  Rotation rot(oft::BlockSpec::from_features(d, b),
               Policy(1e-6, oft::OnDivergence::UseExactCayley));
  rot.set_generators(oft::GeneratorView<const float>(theta.data(), r, b));
  std::printf("  tolerance 1e-6 on ||R_i - cayley(Q_i)||_2, per generator:\n");
  for (oft::Index i = 0; i < r; ++i) {
    const oft::PlanSummary plan = rot.plan(i);
    const Eigen::MatrixXd Ri = rot.block(i).cast<double>();
    const double defect =
        Eigen::JacobiSVD<Eigen::MatrixXd>(Ri.transpose() * Ri - Eigen::MatrixXd::Identity(b, b))
            .singularValues()(0);
    if (plan.exact)
      std::printf(
          "    generator %td  rho = %.2f  ->  exact Cayley (series diverges)   error %.1e\n", i,
          rhos[i], defect);
    else
      std::printf(
          "    generator %td  rho = %.2f  ->  Cayley-Neumann, k = %2d           error %.1e\n", i,
          rhos[i], plan.terms, defect);
  }
  std::printf(
      "    (k from the exact rho, or from the free bound min(||Q||_F/sqrt2, ||Q||_1) when\n"
      "    that already gives k <= 2; float rounding adds about 1e-7 to each error)\n\n");
  check(!rot.plan(0).exact && !rot.plan(2).exact && rot.plan(3).exact &&
            rot.plan(0).terms < rot.plan(1).terms && rot.plan(1).terms < rot.plan(2).terms,
        "small rho -> few terms, rho >= 1 -> exact Cayley");
  // ||R_k - R||_2 <= tol gives ||R_k^T R_k - I||_2 <= 2 tol + tol^2; float adds about 1e-7.
  check(rot.orthogonality_error() < 2.5e-6, "every block orthogonal to 2 tol + float rounding");

  // Reference in double.
  std::vector<double> theta_d(theta.begin(), theta.end());
  const MatrixD R = reference_rotation(theta_d.data(), m, rot);
  const MatrixD X =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          activations.data(), N, width)
          .middleCols(offset, d)
          .cast<double>();
  const std::vector<float> before = activations;

  // ---- in-place apply on a strided slice -------------------------------------------------------
  // The framework saves its input for backward (autograd does); here that is a contiguous copy.
  std::vector<float> saved_input(static_cast<size_t>(N * d));
  const oft::MatrixView<float> slice(activations.data() + offset, N, d, /*stride=*/width);
  oft::MatrixView<float> saved(saved_input.data(), N, d);
  saved.map() = slice.map();
  rot.apply(slice, slice);  // Y = X R, in place
  bool others_untouched = true;
  for (oft::Index t = 0; t < N; ++t)
    for (oft::Index c = 0; c < width; ++c)
      if ((c < offset || c >= offset + d) &&
          activations[size_t(t * width + c)] != before[size_t(t * width + c)])
        others_untouched = false;
  std::printf("  apply in place on columns [%td, %td) of a %td x %td buffer (row stride %td):\n",
              offset, offset + d, N, width, width);
  check(relative_error(slice.map().cast<double>(), X * R) < 1e-5, "Y = X R (double reference)");
  check(others_untouched, "the columns outside the slice are untouched");

  // ---- backward into framework-owned buffers ---------------------------------------------------
  std::vector<float> grad_in(static_cast<size_t>(N * d));  // dX
  std::vector<float> grad_theta(static_cast<size_t>(r * grad_stride), 12345.0f);
  std::vector<float> workspace(static_cast<size_t>(rot.workspace_size()));
  rot.backward(oft::ConstMatrixView<float>(saved_input.data(), N, d),
               oft::ConstMatrixView<float>(grad_out.data(), N, d),
               oft::MatrixView<float>(grad_in.data(), N, d),
               oft::GeneratorView<float>(grad_theta.data(), r, b, grad_stride), workspace.data(),
               static_cast<oft::Index>(workspace.size()));

  const MatrixD dY =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          grad_out.data(), N, d)
          .cast<double>();
  const MatrixD dX =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          grad_in.data(), N, d)
          .cast<double>();
  // dtheta reference: central differences in double of L(theta) = <dY, X R(theta)>, with the
  // per-generator choices (k, or exact) held fixed, as the backward differentiates them.
  const auto loss = [&] {
    return (dY.cwiseProduct(X * reference_rotation(theta_d.data(), m, rot))).sum();
  };
  const std::vector<double> fd = oft::numerical_gradient(theta_d.data(), r * m, loss);
  double diff = 0.0, norm = 0.0;
  bool padding_untouched = true;
  for (oft::Index i = 0; i < r; ++i) {
    for (oft::Index k = 0; k < m; ++k) {
      const double e = grad_theta[size_t(i * grad_stride + k)] - fd[size_t(i * m + k)];
      diff += e * e;
      norm += fd[size_t(i * m + k)] * fd[size_t(i * m + k)];
    }
    for (oft::Index k = m; k < grad_stride; ++k)
      padding_untouched = padding_untouched && grad_theta[size_t(i * grad_stride + k)] == 12345.0f;
  }
  std::printf("\n  backward (dX, dtheta with row stride %td, raw workspace of %td floats):\n",
              grad_stride, rot.workspace_size());
  check(relative_error(dX, dY * R.transpose()) < 1e-5, "dX = dY R^T");
  std::printf("    dtheta vs central differences in double: relative error %.1e\n",
              std::sqrt(diff / norm));
  check(std::sqrt(diff / norm) < 1e-4, "dtheta = dL/dtheta (tolerance 1e-4, float)");
  check(padding_untouched, "the padding between dtheta rows is untouched");

  // ---- errors a binding can translate -------------------------------------------------------
  std::printf("\n  errors (the outputs are untouched when one is thrown):\n");
  const std::vector<float> snapshot = activations;
  try {  // Y overlaps X by one column: neither in place nor disjoint
    rot.apply(slice, oft::MatrixView<float>(activations.data() + offset + 1, N, d, width));
    check(false, "partial overlap refused");
  } catch (const std::invalid_argument& e) {
    std::printf("    invalid_argument: %s\n", e.what());
    check(activations == snapshot, "partial overlap refused, nothing written");
  }
  try {  // a framework handed us a tensor of the wrong width
    rot.apply(oft::ConstMatrixView<float>(saved_input.data(), N, d - 1), slice);
    check(false, "shape mismatch refused");
  } catch (const std::invalid_argument& e) {
    std::printf("    invalid_argument: %s\n", e.what());
    check(activations == snapshot, "shape mismatch refused, nothing written");
  }
  const oft::RowMatrix<float> r_before = rot.dense();
  std::vector<float> bad_theta = theta;
  bad_theta[size_t(2 * m + 5)] = std::nanf("");
  try {
    rot.set_generators(oft::GeneratorView<const float>(bad_theta.data(), r, b));
    check(false, "non-finite theta refused");
  } catch (const std::domain_error& e) {
    std::printf("    domain_error: %s\n", e.what());
    check(rot.dense() == r_before, "non-finite theta refused, operator unchanged");
  }

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

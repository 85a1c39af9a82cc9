// The BOFT (Butterfly), GOFT (Givens) and HRA (Householder) operators on the GPU against oft's CPU operators
// (cpu_family_reference.cpp) on the same inputs: apply, apply_transposed, in place and strided,
// backward (dX and the parameter gradients, dX in place), and the refusals.
//
// Tolerances (the c * n * eps * scale form of cuda_test_support.cuh, c stated here):
// - Givens: every turn is a 2 x 2 rotation, which keeps a row's 2-norm, and rounds each of its
//   two outputs with relative error <= 2u (two products and a sum); a row through L stages is
//   off by at most about 2 L u ||x_row||_2 on each side, so |gpu - cpu| <= 8 (L + 1) eps
//   ||x_row||_2 entrywise. Angle gradients sum n rows of such terms: 8 (L + 1) eps
//   sum_rows ||x_row||_2 ||dy_row||_2.
// - Butterfly: each factor is a block operator with b-term dot products over near-orthogonal
//   blocks (generators of row norm 0.3), so m factors give |gpu - cpu| <= 8 m b eps
//   ||x_row||_2 entrywise; generator gradients (b^2-term block products summed over n rows):
//   8 m (b + n) eps max|x| max|dy| b.
// - Householder: X R = X - ((X Q) T^T) Q^T with unit columns q_i: the products over d, r and r
//   terms give |gpu - cpu| <= 8 (d + 2 r) eps ||x_row||_2 (1 + r max|T|) entrywise. dU sums
//   N rows of such products and divides by the column norms (the Gram-Schmidt residuals):
//   16 (d + N + 2 r) eps (1 + r max|T|)^2 sum_rows ||x_row|| ||dy_row|| / min residual.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <oft/butterfly_spec.hpp>
#include <oft/cuda.hpp>
#include <oft/givens_spec.hpp>
#include <string>
#include <vector>

#include "cpu_family_reference.hpp"
#include "cuda_test_support.cuh"

namespace oft_cuda_test {
namespace {

/// ||row||_2 of every row of an n x d matrix.
std::vector<double> row_norms(const std::vector<double>& m, Index n, Index d) {
  std::vector<double> out(static_cast<std::size_t>(n), 0.0);
  for (Index i = 0; i < n; ++i) {
    double sum = 0.0;
    for (Index j = 0; j < d; ++j) sum += m[static_cast<std::size_t>(i * d + j)] * m[static_cast<std::size_t>(i * d + j)];
    out[static_cast<std::size_t>(i)] = std::sqrt(sum);
  }
  return out;
}

/// Entrywise bound c * ||x_row||_2 for an n x d result.
std::vector<double> row_bound(const std::vector<double>& norms, Index d, double c) {
  std::vector<double> out;
  out.reserve(norms.size() * static_cast<std::size_t>(d));
  for (double norm : norms) out.insert(out.end(), static_cast<std::size_t>(d), c * norm);
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double e : v) m = std::max(m, std::abs(e));
  return m;
}

/// A device workspace of `bytes` (at least one byte, so the pointer is never null).
struct Workspace {
  explicit Workspace(std::size_t bytes) : array(std::max<std::size_t>(bytes, 1)), size(bytes) {}
  DeviceArray<unsigned char> array;
  std::size_t size;
  void* data() const { return array.data(); }
};

// ---------------------------------------------------------------------------------------------
// Givens
// ---------------------------------------------------------------------------------------------

struct GivensCase {
  Index d;
  bool butterfly_layout;
};

template <class T>
void check_givens(const GivensCase& c, Index n, std::uint64_t seed) {
  SCOPED_TRACE("d=" + std::to_string(c.d) + (c.butterfly_layout ? " butterfly" : " goft") +
               " n=" + std::to_string(n) + " " + type_name<T>());
  const oft::GivensSpec spec(c.d, c.butterfly_layout ? oft::GivensLayout::Butterfly
                                                     : oft::GivensLayout::Goft);
  const Index d = c.d, stages = static_cast<Index>(spec.stages().size());
  Rng rng(seed);
  const std::vector<T> angles = random_values<T>(spec.angles(), rng);
  const std::vector<T> x = random_values<T>(n * d, rng), dy = random_values<T>(n * d, rng);
  const double eps = eps_of<T>();
  const std::vector<double> xn = row_norms(to_double(x), n, d), dyn = row_norms(to_double(dy), n, d);
  const double c_rows = 8.0 * static_cast<double>(stages + 1) * eps;

  oft::Givens<T, oft::cuda> op(spec);
  op.set_angles(angles);
  // Strided, offset views: the padding must come back untouched.
  const Index ld = d + 3;
  for (bool transposed : {false, true}) {
    const std::vector<T> expected = cpu_givens_apply<T>(d, c.butterfly_layout, angles, x, n, transposed);
    DeviceMatrix<T> in(x, n, d, ld, T(7), 1), out(std::vector<T>(x.size(), T(0)), n, d, ld, T(9), 2);
    if (transposed)
      op.apply_transposed(in.cview(), out.view(), nullptr);
    else
      op.apply(in.cview(), out.view(), nullptr);
    sync_device();
    EXPECT_TRUE(within_bound(to_double(out.dense()), to_double(expected), row_bound(xn, d, c_rows), d))
        << (transposed ? "apply_transposed" : "apply");
    EXPECT_TRUE(out.padding_intact());
    // In place gives the same bits as out of place.
    DeviceMatrix<T> same(x, n, d, ld, T(5));
    if (transposed)
      op.apply_transposed(same.cview(), same.view(), nullptr);
    else
      op.apply(same.cview(), same.view(), nullptr);
    sync_device();
    EXPECT_TRUE(bitwise_equal(same.dense(), out.dense())) << "in place";
  }

  std::vector<T> dx_expected, dangles_expected;
  cpu_givens_backward<T>(d, c.butterfly_layout, angles, x, dy, n, &dx_expected, &dangles_expected);
  DeviceMatrix<T> dx_in(x, n, d, d, T(0)), dy_in(dy, n, d, ld, T(3));
  DeviceMatrix<T> dx_out(std::vector<T>(x.size(), T(0)), n, d, ld, T(4));
  DeviceArray<T> dangles(static_cast<std::size_t>(spec.angles()));
  Workspace ws(op.workspace_bytes(n));
  op.backward(dx_in.cview(), dy_in.cview(), dx_out.view(), dangles.data(), ws.data(), ws.size,
              nullptr);
  sync_device();
  EXPECT_TRUE(within_bound(to_double(dx_out.dense()), to_double(dx_expected), row_bound(dyn, d, c_rows), d))
      << "dX";
  EXPECT_TRUE(dx_out.padding_intact());
  double grad_scale = 0.0;
  for (Index i = 0; i < n; ++i) grad_scale += xn[static_cast<std::size_t>(i)] * dyn[static_cast<std::size_t>(i)];
  const std::vector<double> grad_bound(static_cast<std::size_t>(spec.angles()), c_rows * grad_scale);
  const std::vector<T> dangles_gpu = dangles.download();
  EXPECT_TRUE(within_bound(to_double(dangles_gpu), to_double(dangles_expected), grad_bound,
                           spec.angles()))
      << "d angles";
  // dX in place over dY: the same dX bits, the same angle gradients (the grid is the same).
  DeviceMatrix<T> dy_again(dy, n, d, ld, T(3));
  DeviceArray<T> dangles_again(static_cast<std::size_t>(spec.angles()));
  op.backward(dx_in.cview(), dy_again.cview(), dy_again.view(), dangles_again.data(), ws.data(),
              ws.size, nullptr);
  sync_device();
  EXPECT_TRUE(bitwise_equal(dy_again.dense(), dx_out.dense())) << "dX in place over dY";
  EXPECT_TRUE(bitwise_equal(dangles_again.download(), dangles_gpu)) << "deterministic d angles";
}

class CudaGivens : public CudaTest {};

TEST_F(CudaGivens, MatchesTheCpuOperatorFloat) {
  for (const GivensCase c : {GivensCase{8, false}, GivensCase{8, true}, GivensCase{64, true},
                             GivensCase{100, false}, GivensCase{512, false}, GivensCase{1024, true}})
    for (Index n : {Index{1}, Index{37}, Index{300}}) check_givens<float>(c, n, 11);
}

TEST_F(CudaGivens, MatchesTheCpuOperatorDouble) {
  for (const GivensCase c : {GivensCase{2, true}, GivensCase{16, false}, GivensCase{256, true},
                             GivensCase{4096, true}})
    for (Index n : {Index{3}, Index{37}}) check_givens<double>(c, n, 12);
}

TEST_F(CudaGivens, DeviceAnglesMatchHostAngles) {
  const oft::GivensSpec spec(128, oft::GivensLayout::Butterfly);
  Rng rng(5);
  const std::vector<float> angles = random_values<float>(spec.angles(), rng);
  const std::vector<float> x = random_values<float>(9 * 128, rng);
  oft::Givens<float, oft::cuda> host_set(spec), device_set(spec);
  host_set.set_angles(angles);
  const DeviceArray<float> on_device(angles);
  Stream stream;
  device_set.set_angles(on_device.data(), stream.get());
  DeviceMatrix<float> a(x, 9, 128, 128, 0.f), b(x, 9, 128, 128, 0.f);
  host_set.apply(a.cview(), a.view(), nullptr);
  sync_device();
  device_set.apply(b.cview(), b.view(), stream.get());
  stream.sync();
  EXPECT_TRUE(bitwise_equal(a.dense(), b.dense()));
}

TEST_F(CudaGivens, RefusesBadInputBeforeEnqueueing) {
  oft::Givens<float, oft::cuda> op(oft::GivensSpec(16, oft::GivensLayout::Goft));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { op.set_angles(std::vector<float>(3)); },
                                                 {"3 angles", "expected 15"}));
  std::vector<float> bad(15, 0.f);
  bad[4] = std::nanf("");
  EXPECT_TRUE(throws_with<std::domain_error>([&] { op.set_angles(bad); }, {"angle 4"}));
  DeviceMatrix<float> x(std::vector<float>(4 * 8), 4, 8, 8, 0.f), y(std::vector<float>(4 * 16), 4, 16, 16, 0.f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op.apply(x.cview(), y.view(), nullptr); }, {"8 columns", "d=16"}));
  std::vector<float> host(4 * 16);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op.apply(oft::DeviceMatrixView<const float>(host.data(), 4, 16), y.view(), nullptr);
      },
      {"host memory"}));
  DeviceArray<float> dangles(15);
  Workspace small(op.workspace_bytes(4) / 2);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op.backward(y.cview(), y.cview(), y.view(), dangles.data(), small.data(), small.size, nullptr);
      },
      {"workspace of"}));
}

// ---------------------------------------------------------------------------------------------
// Butterfly
// ---------------------------------------------------------------------------------------------

std::string describe(const ButterflyConfig& c) {
  return "N=" + std::to_string(c.blocks) + " b=" + std::to_string(c.b) + " m=" +
         std::to_string(c.factors) +
         (c.terms == kExactCayley ? std::string(" exact") : " k=" + std::to_string(c.terms));
}

template <class T, class Policy>
void check_butterfly(const ButterflyConfig& c, Policy policy, Index n, std::uint64_t seed) {
  SCOPED_TRACE(describe(c) + " n=" + std::to_string(n) + " " + type_name<T>());
  const Index d = c.features(), m = c.factors;
  Rng rng(seed);
  std::vector<T> theta = random_values<T>(c.generators() * c.packed(), rng);
  for (T& v : theta) v = static_cast<T>(0.3 * static_cast<double>(v) / std::sqrt(static_cast<double>(c.packed())));
  const std::vector<T> x = random_values<T>(n * d, rng), dy = random_values<T>(n * d, rng);
  const double eps = eps_of<T>();
  const std::vector<double> xn = row_norms(to_double(x), n, d), dyn = row_norms(to_double(dy), n, d);
  const double c_rows = 8.0 * static_cast<double>(m * c.b) * eps;

  oft::Butterfly<T, Policy, oft::cuda> op(oft::ButterflySpec{c.blocks, c.b, c.factors}, policy);
  const DeviceArray<T> theta_device(theta);
  op.set_generators(oft::DeviceMatrixView<const T>(theta_device.data(), c.generators(), c.packed()),
                    nullptr);
  Workspace plane(op.apply_workspace_bytes(n));
  const Index ld = d + 2;
  for (bool transposed : {false, true}) {
    const std::vector<T> expected = cpu_butterfly_apply<T>(c, theta, x, n, transposed);
    DeviceMatrix<T> in(x, n, d, ld, T(7), 1), out(std::vector<T>(x.size(), T(0)), n, d, ld, T(9));
    DeviceMatrix<T> same(x, n, d, ld, T(5));
    if (transposed) {
      op.apply_transposed(in.cview(), out.view(), plane.data(), plane.size, nullptr);
      op.apply_transposed(same.cview(), same.view(), plane.data(), plane.size, nullptr);
    } else {
      op.apply(in.cview(), out.view(), plane.data(), plane.size, nullptr);
      op.apply(same.cview(), same.view(), plane.data(), plane.size, nullptr);
    }
    sync_device();
    const char* what = transposed ? "apply_transposed" : "apply";
    EXPECT_TRUE(within_bound(to_double(out.dense()), to_double(expected), row_bound(xn, d, c_rows), d))
        << what;
    EXPECT_TRUE(out.padding_intact()) << what;
    EXPECT_TRUE(bitwise_equal(same.dense(), out.dense())) << what << " in place";
  }

  std::vector<T> dx_expected, dtheta_expected;
  cpu_butterfly_backward<T>(c, theta, x, dy, n, &dx_expected, &dtheta_expected);
  DeviceMatrix<T> x_in(x, n, d, ld, T(0)), dy_in(dy, n, d, d, T(0));
  DeviceMatrix<T> dx_out(std::vector<T>(x.size(), T(0)), n, d, ld, T(4));
  DeviceArray<T> dtheta(static_cast<std::size_t>(c.generators() * c.packed()));
  const oft::DeviceMatrixView<T> dtheta_view(dtheta.data(), c.generators(), c.packed());
  Workspace ws(op.workspace_bytes(n));
  op.backward(x_in.cview(), dy_in.cview(), dx_out.view(), dtheta_view, ws.data(), ws.size, nullptr);
  sync_device();
  EXPECT_TRUE(within_bound(to_double(dx_out.dense()), to_double(dx_expected), row_bound(dyn, d, c_rows), d))
      << "dX";
  EXPECT_TRUE(dx_out.padding_intact());
  const double grad_scale = 8.0 * static_cast<double>(m * (c.b + n) * c.b) * eps *
                            max_abs(to_double(x)) * max_abs(to_double(dy));
  const std::vector<T> dtheta_gpu = dtheta.download();
  EXPECT_TRUE(within_bound(to_double(dtheta_gpu), to_double(dtheta_expected),
                           std::vector<double>(dtheta_gpu.size(), grad_scale), c.packed()))
      << "dtheta";
  // dX in place over dY, and dX alone.
  DeviceMatrix<T> dy_again(dy, n, d, d, T(0));
  op.backward(x_in.cview(), dy_again.cview(), dy_again.view(), dtheta_view, ws.data(), ws.size,
              nullptr);
  DeviceMatrix<T> dx_alone(std::vector<T>(x.size(), T(0)), n, d, d, T(0));
  op.backward(x_in.cview(), dy_in.cview(), dx_alone.view(), oft::DeviceMatrixView<T>(), ws.data(),
              ws.size, nullptr);
  sync_device();
  EXPECT_TRUE(bitwise_equal(dy_again.dense(), dx_out.dense())) << "dX in place over dY";
  EXPECT_TRUE(within_bound(to_double(dx_alone.dense()), to_double(dx_expected), row_bound(dyn, d, c_rows), d))
      << "dX alone";
}

const std::vector<ButterflyConfig>& butterfly_cases() {
  static const std::vector<ButterflyConfig> cases = {
      {4, 4, 1, 4},              // plain block OFT
      {8, 4, 2, kExactCayley},   // even m: the last gather lands in y directly
      {8, 4, 3, 4},              // odd m: in place goes through the plane and back
      {16, 8, 4, kExactCayley},  // N = 2^(m-1) * 2
      {32, 2, 3, 5},             // b = 2: runs of one feature
      {8, 16, 2, 4},
  };
  return cases;
}

template <class T>
void check_all_butterflies(Index n, std::uint64_t seed) {
  for (const ButterflyConfig& c : butterfly_cases()) {
    if (c.terms == kExactCayley)
      check_butterfly<T>(c, oft::ExactCayley{}, n, seed);
    else
      check_butterfly<T>(c, oft::CayleyNeumann{c.terms}, n, seed);
  }
}

class CudaButterfly : public CudaTest {};

TEST_F(CudaButterfly, MatchesTheCpuOperatorFloat) {
  for (Index n : {Index{1}, Index{37}, Index{257}}) check_all_butterflies<float>(n, 21);
}

TEST_F(CudaButterfly, MatchesTheCpuOperatorDouble) {
  for (Index n : {Index{5}, Index{64}}) check_all_butterflies<double>(n, 22);
}

TEST_F(CudaButterfly, RefusesBadInputBeforeEnqueueing) {
  using Op = oft::Butterfly<float, oft::CayleyNeumann, oft::cuda>;
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { Op(oft::ButterflySpec{6, 4, 3}); },
                                                 {"N=6", "2^(m-1)=4"}));
  Op op(oft::ButterflySpec{8, 4, 2});
  DeviceMatrix<float> x(std::vector<float>(3 * 32), 3, 32, 32, 0.f);
  Workspace small(op.apply_workspace_bytes(3) / 2);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op.apply(x.cview(), x.view(), small.data(), small.size, nullptr); }, {"workspace of"}));
  Workspace plane(op.apply_workspace_bytes(3));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op.apply(x.cview(), oft::DeviceMatrixView<float>(x.data(), 3, 32), x.data(), plane.size,
                 nullptr);
      },
      {"workspace", "overlaps"}));
  DeviceArray<float> theta(5);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op.set_generators(oft::DeviceMatrixView<const float>(theta.data(), 1, 5), nullptr); },
      {"theta has shape 1x5", "expected 16x6"}));
}

// ---------------------------------------------------------------------------------------------
// Householder
// ---------------------------------------------------------------------------------------------

struct HouseholderCase {
  Index d;
  Index r;
  bool gram_schmidt;
};

/// max |T| and the smallest column norm after modified Gram-Schmidt (or of U itself), in
/// double, for the tolerances.
std::pair<double, double> householder_scales(const HouseholderCase& c, const std::vector<double>& u) {
  const Index d = c.d, r = c.r;
  std::vector<double> q(static_cast<std::size_t>(d * r));
  double smallest = std::numeric_limits<double>::infinity();
  for (Index i = 0; i < r; ++i) {
    double* v = q.data() + i * d;
    for (Index p = 0; p < d; ++p) v[p] = u[static_cast<std::size_t>(p * r + i)];
    if (c.gram_schmidt)
      for (Index j = 0; j < i; ++j) {
        double dot = 0.0;
        for (Index p = 0; p < d; ++p) dot += q[static_cast<std::size_t>(j * d + p)] * v[p];
        for (Index p = 0; p < d; ++p) v[p] -= dot * q[static_cast<std::size_t>(j * d + p)];
      }
    double norm = 0.0;
    for (Index p = 0; p < d; ++p) norm += v[p] * v[p];
    norm = std::sqrt(norm);
    smallest = std::min(smallest, norm);
    for (Index p = 0; p < d; ++p) v[p] /= norm;
  }
  // T: 2 on the diagonal, T(0:i, i) = -2 T(0:i, 0:i) Q(:, 0:i)^T q_i (no Gram-Schmidt).
  std::vector<double> t(static_cast<std::size_t>(r * r), 0.0);
  double largest = 2.0;
  for (Index i = 0; i < r; ++i) {
    t[static_cast<std::size_t>(i * r + i)] = 2.0;
    if (c.gram_schmidt) continue;
    std::vector<double> overlap(static_cast<std::size_t>(i), 0.0);
    for (Index j = 0; j < i; ++j)
      for (Index p = 0; p < d; ++p)
        overlap[static_cast<std::size_t>(j)] += q[static_cast<std::size_t>(j * d + p)] * q[static_cast<std::size_t>(i * d + p)];
    for (Index j = 0; j < i; ++j) {
      double sum = 0.0;
      for (Index k = j; k < i; ++k) sum += t[static_cast<std::size_t>(j * r + k)] * overlap[static_cast<std::size_t>(k)];
      t[static_cast<std::size_t>(j * r + i)] = -2.0 * sum;
      largest = std::max(largest, std::abs(-2.0 * sum));
    }
  }
  return {largest, smallest};
}

template <class T>
void check_householder(const HouseholderCase& c, Index n, std::uint64_t seed) {
  SCOPED_TRACE("d=" + std::to_string(c.d) + " r=" + std::to_string(c.r) +
               (c.gram_schmidt ? " apply_GS" : "") + " n=" + std::to_string(n) + " " + type_name<T>());
  const Index d = c.d, r = c.r;
  Rng rng(seed);
  const std::vector<T> u = random_values<T>(d * r, rng);
  const std::vector<T> x = random_values<T>(n * d, rng), dy = random_values<T>(n * d, rng);
  const double eps = eps_of<T>();
  const auto [t_max, smallest] = householder_scales(c, to_double(u));
  const std::vector<double> xn = row_norms(to_double(x), n, d), dyn = row_norms(to_double(dy), n, d);
  const double growth = 1.0 + static_cast<double>(r) * t_max;
  const double c_rows = 8.0 * static_cast<double>(d + 2 * r) * eps * growth;

  oft::Householder<T, oft::cuda> op(d, r, c.gram_schmidt);
  op.set_vectors(u);
  Workspace panels(op.apply_workspace_bytes(n));
  const Index ld = d + 1;
  for (bool transposed : {false, true}) {
    const std::vector<T> expected = cpu_householder_apply<T>(d, r, c.gram_schmidt, u, x, n, transposed);
    DeviceMatrix<T> in(x, n, d, ld, T(7), 1), out(std::vector<T>(x.size(), T(0)), n, d, ld, T(9));
    DeviceMatrix<T> same(x, n, d, ld, T(5));
    if (transposed) {
      op.apply_transposed(in.cview(), out.view(), panels.data(), panels.size, nullptr);
      op.apply_transposed(same.cview(), same.view(), panels.data(), panels.size, nullptr);
    } else {
      op.apply(in.cview(), out.view(), panels.data(), panels.size, nullptr);
      op.apply(same.cview(), same.view(), panels.data(), panels.size, nullptr);
    }
    sync_device();
    const char* what = transposed ? "apply_transposed" : "apply";
    EXPECT_TRUE(within_bound(to_double(out.dense()), to_double(expected), row_bound(xn, d, c_rows), d))
        << what;
    EXPECT_TRUE(out.padding_intact()) << what;
    EXPECT_TRUE(within_bound(to_double(same.dense()), to_double(expected), row_bound(xn, d, c_rows), d))
        << what << " in place";
  }

  std::vector<T> dx_expected, du_expected;
  cpu_householder_backward<T>(d, r, c.gram_schmidt, u, x, dy, n, &dx_expected, &du_expected);
  DeviceMatrix<T> x_in(x, n, d, ld, T(0)), dy_in(dy, n, d, d, T(0));
  DeviceMatrix<T> dx_out(std::vector<T>(x.size(), T(0)), n, d, ld, T(4));
  DeviceMatrix<T> du(std::vector<T>(u.size(), T(0)), d, r, r + 2, T(6));
  Workspace ws(op.workspace_bytes(n));
  op.backward(x_in.cview(), dy_in.cview(), dx_out.view(), du.view(), ws.data(), ws.size, nullptr);
  sync_device();
  EXPECT_TRUE(within_bound(to_double(dx_out.dense()), to_double(dx_expected), row_bound(dyn, d, c_rows), d))
      << "dX";
  EXPECT_TRUE(dx_out.padding_intact());
  EXPECT_TRUE(du.padding_intact());
  double grad_scale = 0.0;
  for (Index i = 0; i < n; ++i) grad_scale += xn[static_cast<std::size_t>(i)] * dyn[static_cast<std::size_t>(i)];
  const double du_tol = 16.0 * static_cast<double>(d + n + 2 * r) * eps * growth * growth * grad_scale /
                        smallest;
  EXPECT_TRUE(within_bound(to_double(du.dense()), to_double(du_expected),
                           std::vector<double>(u.size(), du_tol), r))
      << "dU";
  // dX in place over dY gives the same dX; dX alone too.
  DeviceMatrix<T> dy_again(dy, n, d, d, T(0));
  op.backward(x_in.cview(), dy_again.cview(), dy_again.view(), du.view(), ws.data(), ws.size, nullptr);
  sync_device();
  EXPECT_TRUE(within_bound(to_double(dy_again.dense()), to_double(dx_expected), row_bound(dyn, d, c_rows), d))
      << "dX in place over dY";
}

class CudaHouseholder : public CudaTest {};

const std::vector<HouseholderCase>& householder_cases() {
  static const std::vector<HouseholderCase> cases = {
      {16, 4, false}, {64, 8, true}, {100, 32, false}, {256, 16, true}, {8, 20, false}, {513, 1, true},
  };
  return cases;
}

TEST_F(CudaHouseholder, MatchesTheCpuOperatorFloat) {
  for (const HouseholderCase& c : householder_cases())
    for (Index n : {Index{1}, Index{37}, Index{300}}) check_householder<float>(c, n, 31);
}

TEST_F(CudaHouseholder, MatchesTheCpuOperatorDouble) {
  for (const HouseholderCase& c : householder_cases())
    for (Index n : {Index{0}, Index{5}, Index{64}}) check_householder<double>(c, n, 32);
}

TEST_F(CudaHouseholder, DeviceVectorsMatchHostVectors) {
  Rng rng(7);
  const std::vector<double> u = random_values<double>(64 * 8, rng), x = random_values<double>(9 * 64, rng);
  oft::Householder<double, oft::cuda> host_set(64, 8, true), device_set(64, 8, true);
  host_set.set_vectors(u);
  const DeviceArray<double> on_device(u);
  Stream stream;
  device_set.set_vectors(oft::DeviceMatrixView<const double>(on_device.data(), 64, 8), stream.get());
  Workspace panels(host_set.apply_workspace_bytes(9));
  DeviceMatrix<double> a(x, 9, 64, 64, 0.0), b(x, 9, 64, 64, 0.0);
  host_set.apply(a.cview(), a.view(), panels.data(), panels.size, nullptr);
  sync_device();
  device_set.apply(b.cview(), b.view(), panels.data(), panels.size, stream.get());
  stream.sync();
  EXPECT_TRUE(bitwise_equal(a.dense(), b.dense()));
}

TEST_F(CudaHouseholder, RefusesBadInputBeforeEnqueueing) {
  using Op = oft::Householder<float, oft::cuda>;
  EXPECT_TRUE(throws_with<std::invalid_argument>([] { Op(4, 5, true); }, {"r=5", "d=4"}));
  Op op(8, 2, true);
  std::vector<float> dependent(16, 0.f);  // u_1 = 3 u_0 = 3 e_0: an exactly zero residual
  dependent[0] = 1.f;
  dependent[1] = 3.f;
  EXPECT_TRUE(throws_with<std::domain_error>([&] { op.set_vectors(dependent); }, {"column 1", "span"}));
  Op plain(8, 2);
  std::vector<float> zero_column(16, 1.f);
  for (Index p = 0; p < 8; ++p) zero_column[static_cast<std::size_t>(p * 2 + 1)] = 0.f;
  EXPECT_TRUE(throws_with<std::domain_error>([&] { plain.set_vectors(zero_column); }, {"column 1", "zero"}));
  DeviceMatrix<float> x(std::vector<float>(3 * 8), 3, 8, 8, 0.f);
  Workspace small(plain.apply_workspace_bytes(3) / 2);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { plain.apply(x.cview(), x.view(), small.data(), small.size, nullptr); }, {"workspace of"}));
}

}  // namespace
}  // namespace oft_cuda_test

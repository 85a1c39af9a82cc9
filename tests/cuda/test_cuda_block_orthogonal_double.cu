// BlockOrthogonal<double, Policy, oft::cuda>: the same checks against the CPU backend as the
// float file (block_orthogonal_checks.cuh), and the GPU backward against central finite
// differences of the GPU forward, in double.
//
// Gradient check. Loss L(theta) = sum(W .* apply(X)) for a random W, so dL/dtheta is exactly
// what backward returns for dY = W. Generators have ||theta_row||_2 = 0.3 (rho <= 0.3). As in
// tests/test_backward_gradcheck.cpp: central differences with h = 1e-6 have truncation error
// h^2/6 |L'''| (about 1e-13 of the gradient scale: L is a polynomial or rational function of
// theta with O(1) derivatives at rho <= 0.3) and rounding error about eps |L|_abs / h with
// |L|_abs = sum |W| (|X| |R|) bounding the rounding of one loss evaluation, so
//     |fd_j - analytic_j| <= 1e-6 ||analytic||_inf + 4 eps |L|_abs / h,
// a 100-1000x margin over the observed 1e-9..1e-8 relative error of such checks that still
// catches any wrong term of the gradient.

#include <algorithm>
#include <oft/finite_difference.hpp>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::kExactCayley;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaBlockOrthogonalDouble : public oft_cuda_test::CudaTest {};

TEST_F(CudaBlockOrthogonalDouble, RotationBlocksMatchCpu) {
  oft_cuda_test::check_rotation_blocks<double, oft::CayleyNeumann>({0, 1, 3, 4}, 20);
  oft_cuda_test::check_rotation_blocks<double, oft::ExactCayley>({kExactCayley}, 21);
}

OFT_CUDA_BLOCK_ORTHOGONAL_TESTS(CudaBlockOrthogonalDouble, double, 200)

// --- gradient check ---------------------------------------------------------------------------

constexpr double kStep = 1e-6;
constexpr double kRelative = 1e-6;
constexpr double kRowNorm = 0.3;
constexpr Index kSampled = 24;
constexpr int kDirections = 3;

std::vector<Index> pick_coordinates(Index count, bool all, Rng& rng) {
  std::vector<Index> picked;
  if (all || count <= kSampled) {
    for (Index j = 0; j < count; ++j) picked.push_back(j);
    return picked;
  }
  while (static_cast<Index>(picked.size()) < kSampled) {
    const Index j = rng.index(count);
    if (std::find(picked.begin(), picked.end(), j) == picked.end()) picked.push_back(j);
  }
  return picked;
}

template <class Policy>
void gradcheck(const OpConfig& config, Index n, Rng& rng) {
  const Index d = config.features(), m = config.packed(), count = config.generators() * m;
  SCOPED_TRACE(oft_cuda_test::describe(config) + " N=" + std::to_string(n));
  oft_cuda_test::GpuOperator<double, Policy> gpu(
      config, oft_cuda_test::random_theta<double>(config, kRowNorm, rng));
  const std::vector<double> x = oft_cuda_test::random_values<double>(n * d, rng);
  const std::vector<double> w = oft_cuda_test::random_values<double>(n * d, rng);
  const DeviceArray<double> x_dev(x), w_dev(w);
  const oft::DeviceMatrixView<const double> xv(x_dev.data(), n, d), wv(w_dev.data(), n, d);

  // Analytic dL/dtheta from the GPU backward with dY = W (dX skipped).
  DeviceArray<double> dtheta_dev(static_cast<std::size_t>(count));
  const std::size_t bytes = gpu.op.workspace_bytes(n);
  DeviceArray<unsigned char> workspace(bytes);
  gpu.op.backward(xv, wv, {},
                  oft::DeviceMatrixView<double>(dtheta_dev.data(), config.generators(), m),
                  workspace.data(), bytes, nullptr);
  oft_cuda_test::sync_device("backward");
  const std::vector<double> analytic = dtheta_dev.download();

  // L(theta) evaluated on the GPU: a second operator, theta uploaded per evaluation.
  std::vector<double> work = gpu.theta;
  DeviceArray<double> theta_dev(work);
  DeviceArray<double> y_dev(static_cast<std::size_t>(n * d));
  typename oft_cuda_test::GpuOperator<double, Policy>::Op probe(
      oft_cuda_test::spec_of(config), oft_cuda_test::make_policy<Policy>(config));
  auto loss = [&] {
    theta_dev.upload(work);
    probe.set_generators(
        oft::DeviceMatrixView<const double>(theta_dev.data(), config.generators(), m), nullptr);
    probe.apply(xv, oft::DeviceMatrixView<double>(y_dev.data(), n, d), nullptr);
    const std::vector<double> y = y_dev.download();  // synchronizes with the legacy stream
    double sum = 0.0;
    for (std::size_t e = 0; e < y.size(); ++e) sum += w[e] * y[e];
    return sum;
  };

  // |L|_abs = sum |W| (|X| |R|) with the reference blocks.
  const std::vector<double> blocks = oft_cuda_test::cpu_rotation_blocks<double>(config, work);
  const std::vector<double> zero_rt(static_cast<std::size_t>(config.generators()), 0.0);
  const oft_cuda_test::ApplyMagnitudes mag =
      oft_cuda_test::apply_magnitudes(config, {}, x, n, blocks, zero_rt, false);
  double loss_abs = 0.0;
  for (std::size_t e = 0; e < w.size(); ++e) loss_abs += std::abs(w[e]) * mag.mag[e];

  double scale = 0.0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  ASSERT_GT(scale, 0.0) << "analytic gradient is identically zero";
  const double tol =
      kRelative * scale + 4.0 * oft_cuda_test::eps_of<double>() * loss_abs / kStep;

  for (Index j : pick_coordinates(count, config.b <= 8, rng)) {
    const double fd = oft::numerical_gradient(work.data() + j, 1, loss, kStep)[0];
    EXPECT_NEAR(analytic[static_cast<std::size_t>(j)], fd, tol)
        << "coordinate " << j << " of " << count << " (scale " << scale << ")";
  }
  // Random unit directions over all coordinates: catches errors in unsampled coordinates.
  const std::vector<double> base = work;
  for (int k = 0; k < kDirections; ++k) {
    std::vector<double> direction(static_cast<std::size_t>(count));
    double norm = 0.0;
    for (double& v : direction) {
      v = rng.uniform();
      norm += v * v;
    }
    double expected = 0.0;
    for (std::size_t j = 0; j < direction.size(); ++j) {
      direction[j] /= std::sqrt(norm);
      expected += analytic[j] * direction[j];
    }
    double t = 0.0;
    auto along = [&] {
      for (std::size_t j = 0; j < work.size(); ++j) work[j] = base[j] + t * direction[j];
      return loss();
    };
    const double fd = oft::numerical_gradient(&t, 1, along, kStep)[0];
    work = base;
    EXPECT_NEAR(expected, fd,
                kRelative * scale * std::sqrt(static_cast<double>(count)) +
                    4.0 * oft_cuda_test::eps_of<double>() * loss_abs / kStep)
        << "direction " << k;
  }
}

template <class Policy>
void gradcheck_grid(int terms, std::uint64_t seed) {
  Rng rng(seed);
  for (Index b : {2, 3, 8, 32})
    for (bool shared : {false, true})
      for (Index n : {1, 7, 128}) gradcheck<Policy>(OpConfig{3, b, shared, terms}, n, rng);
}

TEST_F(CudaBlockOrthogonalDouble, BackwardMatchesFiniteDifferencesExactCayley) {
  gradcheck_grid<oft::ExactCayley>(kExactCayley, 30);
}
TEST_F(CudaBlockOrthogonalDouble, BackwardMatchesFiniteDifferencesNeumannK4) {
  gradcheck_grid<oft::CayleyNeumann>(4, 31);
}

}  // namespace

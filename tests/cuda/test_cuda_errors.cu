// Bad input at the CUDA backend's boundary (cuda/block_orthogonal.hpp, device_view.hpp): shapes,
// host pointers, too-small or misaligned workspaces, partial overlaps, masks, block specs and
// too-large blocks raise std::invalid_argument whose what() names the values at fault, before
// anything is enqueued (outputs keep a sentinel, the operator keeps its previous R). A failing
// CUDA call raises oft::cuda_error naming the call.
//
// Note for compute-sanitizer runs: CudaErrors.FailedCudaCallThrowsCudaError makes a deliberately
// failing cudaMalloc, which the sanitizer reports as an API error; run it with
// --report-api-errors no or exclude that test.

#include <cstdint>
#include <memory>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;
using oft_cuda_test::throws_with;

constexpr Index kB = 4, kR = 3, kD = kB * kR, kN = 5, kM = kB * (kB - 1) / 2;
constexpr float kSentinel = -12345.5f;

using Op = oft::BlockOrthogonal<float, oft::ExactCayley, oft::cuda>;
template <class E>
using View = oft::DeviceMatrixView<E>;

class CudaErrors : public oft_cuda_test::CudaTest {
 protected:
  void SetUp() override {
    oft_cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    Rng rng(1);
    config = OpConfig{kR, kB, false, oft_cuda_test::kExactCayley};
    theta = oft_cuda_test::random_theta<float>(config, 0.5, rng);
    theta_dev = DeviceArray<float>(theta);
    op = std::make_unique<Op>(oft::BlockSpec::from_features(kD, kB));
    op->set_generators(View<const float>(theta_dev.data(), kR, kM), nullptr);
    x = DeviceArray<float>(oft_cuda_test::random_values<float>(kN * kD, rng));
    dy = DeviceArray<float>(oft_cuda_test::random_values<float>(kN * kD, rng));
    out = DeviceArray<float>(sentinel(kN * kD + 64));
    dtheta = DeviceArray<float>(sentinel(kR * kM));
    workspace = DeviceArray<unsigned char>(op->workspace_bytes(kN) + 512);
    blocks_before = op->rotation_blocks_host(nullptr);
  }
  static std::vector<float> sentinel(Index count) {
    return std::vector<float>(static_cast<std::size_t>(count), kSentinel);
  }
  View<const float> xv(Index rows = kN, Index cols = kD) const {
    return View<const float>(x.data(), rows, cols);
  }
  View<const float> dyv() const { return View<const float>(dy.data(), kN, kD); }
  View<float> outv(Index rows = kN, Index cols = kD, Index offset = 0) const {
    return View<float>(out.data() + offset, rows, cols);
  }
  View<float> dthetav() const { return View<float>(dtheta.data(), kR, kM); }
  /// Outputs still hold the sentinel and the operator's R is unchanged.
  void expect_untouched() const {
    oft_cuda_test::sync_device();
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(out.download(), sentinel(kN * kD + 64))) << "out";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(dtheta.download(), sentinel(kR * kM))) << "dtheta";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(op->rotation_blocks_host(nullptr), blocks_before))
        << "rotation blocks";
  }

  OpConfig config;
  std::vector<float> theta;
  DeviceArray<float> theta_dev, x, dy, out, dtheta;
  DeviceArray<unsigned char> workspace;
  std::unique_ptr<Op> op;
  std::vector<float> blocks_before;
};

TEST_F(CudaErrors, ApplyShapes) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->apply(xv(kN, kD + 1), outv(kN, kD + 1), nullptr); },
      {"apply", "x has shape 5x13", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { op->apply(xv(), outv(kN - 1), nullptr); },
                                                 {"apply", "y has shape 4x12", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->apply_transposed(xv(), outv(kN, kD - 1), nullptr); },
      {"apply_transposed", "y has shape 5x11", "expected 5x12"}));
  expect_untouched();
}

TEST_F(CudaErrors, SetGeneratorsShapeLeavesOperatorUnchanged) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->set_generators(View<const float>(theta_dev.data(), kR, kM - 1), nullptr); },
      {"set_generators", "theta has shape 3x5", "expected 3x6"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->set_generators(View<const float>(theta_dev.data(), 1, kM), nullptr); },
      {"theta has shape 1x6", "expected 3x6"}));
  expect_untouched();
}

TEST_F(CudaErrors, BackwardShapes) {
  const std::size_t bytes = workspace.size();
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), View<const float>(dy.data(), kN, kD + 1), outv(), dthetav(),
                     workspace.data(), bytes, nullptr);
      },
      {"backward", "dy has shape 5x13", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(kN - 1, kD), dyv(), outv(), dthetav(), workspace.data(), bytes, nullptr);
      },
      {"backward", "x has shape 4x12", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), dyv(), outv(kN, kD + 1), dthetav(), workspace.data(), bytes, nullptr);
      },
      {"backward", "dx has shape 5x13", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), dyv(), outv(), View<float>(dtheta.data(), kR - 1, kM),
                     workspace.data(), bytes, nullptr);
      },
      {"backward", "dtheta has shape 2x6", "expected 3x6"}));
  expect_untouched();
}

TEST_F(CudaErrors, HostPointers) {
  std::vector<float> host(static_cast<std::size_t>(kN * kD + 64), 1.0f);
  std::vector<float> host_theta(static_cast<std::size_t>(kR * kM), 0.25f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->apply(View<const float>(host.data(), kN, kD), outv(), nullptr); },
      {"apply", "x points to host memory"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->apply(xv(), View<float>(host.data(), kN, kD), nullptr); },
      {"apply", "y points to host memory"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->set_generators(View<const float>(host_theta.data(), kR, kM), nullptr); },
      {"set_generators", "theta points to host memory"}));
  const std::size_t bytes = workspace.size();
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), dyv(), outv(), View<float>(host_theta.data(), kR, kM),
                     workspace.data(), bytes, nullptr);
      },
      {"backward", "dtheta points to host memory"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), View<const float>(host.data(), kN, kD), outv(), dthetav(),
                     workspace.data(), bytes, nullptr);
      },
      {"backward", "dy points to host memory"}));
  std::vector<unsigned char> host_workspace(bytes);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), dyv(), outv(), dthetav(), host_workspace.data(), bytes, nullptr);
      },
      {"backward", "workspace points to host memory"}));
  expect_untouched();
}

TEST_F(CudaErrors, TooSmallOrMisalignedWorkspace) {
  const std::size_t need = op->workspace_bytes(kN);
  ASSERT_GT(need, 0u);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->backward(xv(), dyv(), outv(), dthetav(), workspace.data(), need - 1, nullptr); },
      {"backward", "workspace of " + std::to_string(need - 1) + " bytes",
       "workspace_bytes(5) = " + std::to_string(need)}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->backward(xv(), dyv(), outv(), dthetav(), nullptr, need, nullptr); },
      {"backward", "null workspace"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), dyv(), outv(), dthetav(), workspace.data() + 16, need, nullptr);
      },
      {"backward", "256-byte aligned"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { (void)op->workspace_bytes(-1); },
                                                 {"negative token count -1"}));
  expect_untouched();
}

TEST_F(CudaErrors, PartialOverlapIsRefused) {
  // y one element past x: overlaps without being the same view.
  Rng rng(2);
  DeviceArray<float> buffer(oft_cuda_test::random_values<float>(kN * kD + 8, rng));
  const View<float> a(buffer.data(), kN, kD), shifted(buffer.data() + 1, kN, kD);
  const std::vector<float> before = buffer.download();
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { op->apply(a, shifted, nullptr); },
                                                 {"apply", "y partially overlaps x"}));
  // Same pointer but a different leading dimension is not "the same view" either.
  const View<float> a_strided(buffer.data(), kN - 1, kD, kD + 1);
  const View<float> a_short(buffer.data(), kN - 1, kD);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { op->apply(a_strided, a_short, nullptr); },
                                                 {"y partially overlaps x"}));
  const std::size_t bytes = workspace.size();
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        op->backward(xv(), a, shifted, dthetav(), workspace.data(), bytes, nullptr);
      },
      {"backward", "dx partially overlaps dy"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->backward(a, dyv(), shifted, dthetav(), workspace.data(), bytes, nullptr); },
      {"backward", "dx partially overlaps x"}));
  oft_cuda_test::sync_device();
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(buffer.download(), before));
  expect_untouched();
}

TEST_F(CudaErrors, ActiveMaskSize) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { op->set_active_blocks(std::vector<unsigned char>{1, 0}, nullptr); },
      {"set_active_blocks", "active-block mask has 2 entries, expected r=3"}));
  expect_untouched();
}

TEST_F(CudaErrors, BadSpecsAndViews) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { Op bad(oft::BlockSpec{0, 4, false}); }, {"r=0", "b=4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { (void)oft::BlockSpec::from_features(10, 4); }, {"d=10", "b=4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { View<float> bad(out.data(), 2, 4, 3); },
      {"leading dimension 3", "smaller than its width 4"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] { View<float> bad(nullptr, 2, 4); }, {"2x4", "null pointer"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { View<float> bad(out.data(), -1, 4); }, {"negative shape -1x4"}));
}

// b beyond the shared-memory limit of the generator kernels: invalid_argument naming b and the
// limit (b = 1024 needs megabytes of shared memory on any GPU).
TEST_F(CudaErrors, TooLargeBlockSize) {
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] {
        oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda> big(
            oft::BlockSpec::from_features(1024, 1024), oft::CayleyNeumann{4});
      },
      {"b=1024", "shared memory", "largest supported b"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] {
        oft::BlockOrthogonal<double, oft::ExactCayley, oft::cuda> big(
            oft::BlockSpec::from_features(2048, 1024, true));
      },
      {"b=1024", "shared memory"}));
}

// A failing CUDA call is an oft::cuda_error naming the oft call and the CUDA call; afterwards
// the backend keeps working (the failure must not poison later calls' error checks).
TEST_F(CudaErrors, FailedCudaCallThrowsCudaError) {
  bool thrown = false;
  try {
    oft::DeviceBuffer<float> huge(std::size_t(1) << 60);  // 4 EiB
  } catch (const oft::cuda_error& e) {
    thrown = true;
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaMalloc"), std::string::npos) << what;
    EXPECT_NE(what.find("DeviceBuffer"), std::string::npos) << what;
    EXPECT_EQ(e.code(), static_cast<int>(cudaErrorMemoryAllocation)) << what;
  }
  EXPECT_TRUE(thrown) << "a 4 EiB cudaMalloc did not throw oft::cuda_error";
  // A new operator (construction launches and checks kernels) and an apply still work.
  Op fresh(oft::BlockSpec::from_features(kD, kB));
  fresh.set_generators(View<const float>(theta_dev.data(), kR, kM), nullptr);
  fresh.apply(xv(), outv(), nullptr);
  oft_cuda_test::sync_device();
  const std::vector<float> all = out.download();
  const std::vector<float> y(all.begin(), all.begin() + kN * kD);
  const std::vector<double> xd = oft_cuda_test::to_double(x.download());
  const std::vector<double> thetad = oft_cuda_test::to_double(theta);
  const std::vector<double> ref = oft_cuda_test::cpu_apply<double>(config, thetad, {}, xd, kN, false);
  const std::vector<double> rt = oft_cuda_test::rotation_tolerances(
      config, oft_cuda_test::row_rho_bounds(config, theta), oft_cuda_test::eps_of<float>());
  const auto mag = oft_cuda_test::apply_magnitudes(
      config, {}, xd, kN, oft_cuda_test::cpu_rotation_blocks<double>(config, thetad), rt, false);
  EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(y), ref,
                                          oft_cuda_test::apply_bound<float>(mag, ref, kB), kD));
}

}  // namespace

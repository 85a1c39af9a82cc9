// The dynamic shared-memory limit of the backend's kernels (cuda/launch.hpp).
//
// A kernel may use more than 48 KiB of dynamic shared memory only after
// cudaFuncSetAttribute(MaxDynamicSharedMemorySize), a process-wide setting per kernel. The
// backend used to set it on every launch to that launch's size, so a launch for a smaller b
// (from another operator, possibly another host thread) lowered it, and a launch for a larger b
// racing with it failed ("invalid argument"). Now it is raised once per (kernel, device) to the
// device's limit and never lowered:
//  - LimitIsNotLoweredBySmallerBlocks: after operators with b = 64 and b = 48 (both above
//    48 KiB in the Neumann VJP) have run, the VJP kernel's attribute is still the device limit,
//    and the b = 64 operator still runs and gives the same dtheta;
//  - ConcurrentOperatorsWithDifferentBlockSizes: two host threads, one operator each (b = 64 and
//    b = 48), many backward passes on their own streams: no launch fails and every result equals
//    the single-threaded one bit for bit (same kernels, same inputs, fixed reduction order);
//  - NeededBytesBeyondTheLimitThrowBeforeLaunch: the per-launch check names b and the bytes.

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <thread>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaSharedMemory : public oft_cuda_test::CudaTest {};

using Op = oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda>;
constexpr int kTerms = 2;
constexpr Index kTokens = 96;

/// An operator with its generators and backward inputs and outputs.
struct Backward {
  OpConfig config;
  DeviceArray<float> theta, x, dy, dx, dtheta;
  DeviceArray<unsigned char> workspace;
  Op op;

  Backward(Index b, Rng& rng)
      : config{2, b, false, kTerms},
        theta(oft_cuda_test::random_theta<float>(config, 0.5, rng)),
        x(oft_cuda_test::random_values<float>(kTokens * config.features(), rng)),
        dy(oft_cuda_test::random_values<float>(kTokens * config.features(), rng)),
        dx(static_cast<std::size_t>(kTokens * config.features())),
        dtheta(static_cast<std::size_t>(config.generators() * config.packed())),
        op(oft_cuda_test::spec_of(config), oft::CayleyNeumann{kTerms}) {
    op.set_generators(oft::DeviceMatrixView<const float>(theta.data(), config.generators(),
                                                         config.packed()),
                      nullptr);
    workspace = DeviceArray<unsigned char>(op.workspace_bytes(kTokens));
    oft_cuda_test::sync_device("set_generators");
  }
  oft::DeviceMatrixView<float> act(const DeviceArray<float>& a) const {
    return oft::DeviceMatrixView<float>(a.data(), kTokens, config.features());
  }
  void run(cudaStream_t stream) {
    op.backward(act(x), act(dy), act(dx),
                oft::DeviceMatrixView<float>(dtheta.data(), config.generators(), config.packed()),
                workspace.data(), workspace.size(), stream);
  }
};

std::size_t vjp_bytes(Index b) { return oft::detail::cuda::generator_shared_bytes<float>(b, false); }

/// The VJP kernel's MaxDynamicSharedMemorySize and static shared bytes as the runtime reports.
cudaFuncAttributes vjp_attributes() {
  cudaFuncAttributes attributes{};
  oft_cuda_test::cuda_check(
      cudaFuncGetAttributes(&attributes, oft::detail::cuda::rotation_vjp_kernel<float>),
      "cudaFuncGetAttributes");
  return attributes;
}

int optin_shared_bytes() {
  int device = 0, optin = 0;
  oft_cuda_test::cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  oft_cuda_test::cuda_check(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "cudaDeviceGetAttribute");
  return optin;
}

TEST_F(CudaSharedMemory, LimitIsNotLoweredBySmallerBlocks) {
  // Both sizes need the opt-in; the old per-launch setting left the attribute at the last size.
  ASSERT_GT(vjp_bytes(48), oft::detail::cuda::kDefaultSharedBytes);
  ASSERT_GT(vjp_bytes(64), vjp_bytes(48));
  Rng rng(1);
  Backward big(64, rng), small(48, rng);
  big.run(nullptr);
  oft_cuda_test::sync_device("backward b=64");
  const std::vector<float> first = big.dtheta.download();
  small.run(nullptr);
  oft_cuda_test::sync_device("backward b=48");

  const cudaFuncAttributes attributes = vjp_attributes();
  EXPECT_GE(static_cast<std::size_t>(attributes.maxDynamicSharedSizeBytes), vjp_bytes(64))
      << "a launch with b=48 lowered the limit below what b=64 needs";
  EXPECT_EQ(attributes.maxDynamicSharedSizeBytes,
            optin_shared_bytes() - static_cast<int>(attributes.sharedSizeBytes))
      << "the limit is the device's opt-in maximum less the kernel's static shared memory";

  big.run(nullptr);
  oft_cuda_test::sync_device("backward b=64 again");
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(big.dtheta.download(), first));
}

TEST_F(CudaSharedMemory, ConcurrentOperatorsWithDifferentBlockSizes) {
  constexpr int kRounds = 200;
  // Operators are constructed concurrently too: both register kernels in the shared registry.
  std::unique_ptr<Backward> lanes[2];
  std::exception_ptr failures[2];
  {
    auto make = [&](int l, Index b, std::uint64_t seed) {
      try {
        Rng rng(seed);
        lanes[l] = std::make_unique<Backward>(b, rng);
      } catch (...) {
        failures[l] = std::current_exception();
      }
    };
    std::thread make_a(make, 0, Index{64}, 3), make_b(make, 1, Index{48}, 4);
    make_a.join();
    make_b.join();
  }
  for (const std::exception_ptr& failure : failures)
    if (failure) std::rethrow_exception(failure);  // GoogleTest reports it as a failure
  std::vector<float> expected[2];
  for (int l = 0; l < 2; ++l) {
    lanes[l]->run(nullptr);
    oft_cuda_test::sync_device("single-threaded backward");
    expected[l] = lanes[l]->dtheta.download();
  }

  std::atomic<int> ready{0};
  auto work = [&](int l) {
    try {
      oft_cuda_test::Stream stream;
      ++ready;
      while (ready.load() < 2) {
      }  // start together, so that the launches interleave
      for (int round = 0; round < kRounds; ++round) lanes[l]->run(stream.get());
      stream.sync();
    } catch (...) {
      failures[l] = std::current_exception();
    }
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  for (int l = 0; l < 2; ++l) {
    SCOPED_TRACE("b=" + std::to_string(lanes[l]->config.b));
    if (failures[l]) {
      try {
        std::rethrow_exception(failures[l]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "a launch failed: " << e.what();
      }
      continue;
    }
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(lanes[l]->dtheta.download(), expected[l]));
  }
}

TEST_F(CudaSharedMemory, NeededBytesBeyondTheLimitThrowBeforeLaunch) {
  const std::size_t limit = oft::detail::cuda::dynamic_shared_limit(
      oft::detail::cuda::apply_simt_kernel<float, float>, "test");
  EXPECT_GE(limit, oft::detail::cuda::kDefaultSharedBytes);
  EXPECT_NO_THROW(oft::detail::cuda::require_dynamic_shared(
      oft::detail::cuda::apply_simt_kernel<float, float>, limit, 7, "apply_simt_kernel", "test"));
  EXPECT_TRUE(oft_cuda_test::throws_with<std::invalid_argument>(
      [&] {
        oft::detail::cuda::require_dynamic_shared(oft::detail::cuda::apply_simt_kernel<float, float>,
                                                 limit + 1, 999, "apply_simt_kernel", "test");
      },
      {"b=999", std::to_string(limit + 1) + " bytes", "apply_simt_kernel",
       "this GPU allows " + std::to_string(limit)}));
}

}  // namespace

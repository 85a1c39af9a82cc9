// set_active_blocks (cuda/block_orthogonal.hpp):
//  - the host-vector overload copies through the operator's pinned staging buffer with
//    cudaMemcpyAsync: it returns while the stream is still busy (the old pageable copy could
//    make the runtime synchronize), and a second call waits for the first call's copy before it
//    refills the buffer (without that event guard the first apply would see the second mask);
//  - the device-pointer overload copies device to device, and can be captured in a CUDA graph
//    that re-reads the device mask at every replay.
// Results are compared with the CPU operator under the same mask (apply_bound, as in
// block_orthogonal_checks.cuh); inactive blocks must be bit-exact copies of X.
//
// The stream is held busy by a kernel that spins on a flag in mapped pinned host memory, which
// the test sets from the host; the kernel gives up after kSpinTimeoutNs and reports it, so a
// set_active_blocks that blocks the host (the bug) fails the test instead of hanging it.

#include <chrono>
#include <cstdint>
#include <thread>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaActiveBlocks : public oft_cuda_test::CudaTest {};

using Op = oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda>;
constexpr Index kTokens = 64;
constexpr long long kSpinTimeoutNs = 10'000'000'000;  // 10 s

__device__ long long global_time_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// Spins until *release != 0 or the timeout has passed (then *timed_out = 1).
__global__ void hold_stream_kernel(const volatile int* release, long long timeout_ns,
                                   int* timed_out) {
  const long long start = global_time_ns();
  while (*release == 0) {
    if (global_time_ns() - start > timeout_ns) {
      *timed_out = 1;
      return;
    }
  }
}

/// Two ints in mapped pinned host memory: the release flag and the timeout report.
class StreamHold {
 public:
  StreamHold() {
    oft_cuda_test::cuda_check(cudaHostAlloc(&flags_, 2 * sizeof(int), cudaHostAllocMapped),
                              "cudaHostAlloc");
    flags_[0] = 0;
    flags_[1] = 0;
    oft_cuda_test::cuda_check(cudaHostGetDevicePointer(&device_flags_, flags_, 0),
                              "cudaHostGetDevicePointer");
  }
  ~StreamHold() { (void)cudaFreeHost(flags_); }
  StreamHold(const StreamHold&) = delete;
  StreamHold& operator=(const StreamHold&) = delete;

  void hold(cudaStream_t stream) {
    hold_stream_kernel<<<1, 1, 0, stream>>>(device_flags_, kSpinTimeoutNs, device_flags_ + 1);
    oft_cuda_test::cuda_check(cudaGetLastError(), "hold_stream_kernel launch");
  }
  void release() { static_cast<volatile int*>(flags_)[0] = 1; }
  bool timed_out() const { return static_cast<volatile int*>(flags_)[1] != 0; }

 private:
  int* flags_ = nullptr;
  int* device_flags_ = nullptr;
};

/// An operator with random generators and input X, and the CPU reference under any mask.
struct Fixture {
  OpConfig config{3, 8, false, 4};
  std::vector<float> theta, x;
  DeviceArray<float> theta_dev, x_dev;
  Op op;

  explicit Fixture(Rng& rng)
      : theta(oft_cuda_test::random_theta<float>(config, 0.6, rng)),
        x(oft_cuda_test::random_values<float>(kTokens * config.features(), rng)),
        theta_dev(theta),
        x_dev(x),
        op(oft_cuda_test::spec_of(config), oft::CayleyNeumann{config.terms}) {
    op.set_generators(oft::DeviceMatrixView<const float>(theta_dev.data(), config.generators(),
                                                         config.packed()),
                      nullptr);
    oft_cuda_test::sync_device("set_generators");
  }
  oft::DeviceMatrixView<const float> xv() const {
    return oft::DeviceMatrixView<const float>(x_dev.data(), kTokens, config.features());
  }
  oft::DeviceMatrixView<float> view(const DeviceArray<float>& y) const {
    return oft::DeviceMatrixView<float>(y.data(), kTokens, config.features());
  }

  /// y (downloaded) is X R under `mask` within apply_bound, inactive blocks bit-exact copies.
  ::testing::AssertionResult matches(const std::vector<float>& y,
                                     const std::vector<unsigned char>& mask) const {
    const std::vector<double> xd = oft_cuda_test::to_double(x);
    const std::vector<double> thetad = oft_cuda_test::to_double(theta);
    const std::vector<double> ref =
        oft_cuda_test::cpu_apply<double>(config, thetad, mask, xd, kTokens, false);
    const std::vector<double> rt = oft_cuda_test::rotation_tolerances(
        config, oft_cuda_test::row_rho_bounds(config, theta), oft_cuda_test::eps_of<float>());
    const auto mag = oft_cuda_test::apply_magnitudes(
        config, mask, xd, kTokens, oft_cuda_test::cpu_rotation_blocks<double>(config, thetad), rt,
        false);
    ::testing::AssertionResult close = oft_cuda_test::within_bound(
        oft_cuda_test::to_double(y), ref, oft_cuda_test::apply_bound<float>(mag, ref, config.b),
        config.features());
    if (!close) return close;
    const Index d = config.features();
    for (Index i = 0; i < config.blocks; ++i) {
      if (oft_cuda_test::block_active(mask, i)) continue;
      for (Index t = 0; t < kTokens; ++t)
        for (Index j = 0; j < config.b; ++j) {
          const std::size_t at = static_cast<std::size_t>(t * d + i * config.b + j);
          if (y[at] != x[at])
            return ::testing::AssertionFailure()
                   << "inactive block " << i << " token " << t << " is not a copy of X";
        }
    }
    return ::testing::AssertionSuccess();
  }
};

// Masks that differ in every block, so each apply below can only match its own.
const std::vector<unsigned char> kMaskA = {0, 1, 0};
const std::vector<unsigned char> kMaskB = {1, 0, 1};

TEST_F(CudaActiveBlocks, HostMaskCopyIsAsynchronousAndItsStagingIsNotOverwrittenInFlight) {
  Rng rng(1);
  Fixture f(rng);
  oft_cuda_test::Stream stream;
  const Index size = kTokens * f.config.features();
  DeviceArray<float> y_a(static_cast<std::size_t>(size)), y_b(static_cast<std::size_t>(size));
  StreamHold hold;

  hold.hold(stream.get());
  std::vector<unsigned char> mask = kMaskA;
  f.op.set_active_blocks(mask, stream.get());
  // The call returned while the stream is still held: it did not synchronize.
  const bool stream_busy = cudaStreamQuery(stream.get()) == cudaErrorNotReady;
  (void)cudaGetLastError();  // in case the runtime recorded cudaErrorNotReady as the last error
  mask.assign(mask.size(), 1);  // the caller may reuse its vector at once
  f.op.apply(f.xv(), f.view(y_a), stream.get());

  // The second call must wait for the first call's copy (still behind the held kernel) before
  // it refills the staging buffer; release the stream from another thread while it waits.
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    hold.release();
  });
  f.op.set_active_blocks(kMaskB, stream.get());
  f.op.apply(f.xv(), f.view(y_b), stream.get());
  releaser.join();
  stream.sync();
  oft_cuda_test::sync_device("applies");

  EXPECT_TRUE(stream_busy) << "set_active_blocks(host vector) synchronized the stream";
  EXPECT_FALSE(hold.timed_out()) << "the stream was released only by the kernel's timeout";
  EXPECT_TRUE(f.matches(y_a.download(), kMaskA)) << "first apply (mask A)";
  EXPECT_TRUE(f.matches(y_b.download(), kMaskB)) << "second apply (mask B)";
}

TEST_F(CudaActiveBlocks, DeviceMaskOverload) {
  Rng rng(2);
  Fixture f(rng);
  oft_cuda_test::Stream stream;
  DeviceArray<unsigned char> mask_dev(kMaskA);
  DeviceArray<float> y(static_cast<std::size_t>(kTokens * f.config.features()));
  oft_cuda_test::sync_device("mask upload");  // the non-blocking stream does not wait for it

  f.op.set_active_blocks(mask_dev.data(), stream.get());
  f.op.apply(f.xv(), f.view(y), stream.get());
  stream.sync();
  EXPECT_TRUE(f.matches(y.download(), kMaskA));

  // nullptr (and so `{}`) re-activates every block.
  f.op.set_active_blocks(nullptr, stream.get());
  f.op.apply(f.xv(), f.view(y), stream.get());
  stream.sync();
  EXPECT_TRUE(f.matches(y.download(), {}));

  const std::vector<unsigned char> host_mask = kMaskB;
  EXPECT_TRUE(oft_cuda_test::throws_with<std::invalid_argument>(
      [&] { f.op.set_active_blocks(host_mask.data(), stream.get()); },
      {"set_active_blocks", "active points to host memory"}));
}

// set_active_blocks(device pointer) + apply captured into a CUDA graph: each replay copies the
// mask from device memory, so changing the device mask between replays changes the result.
TEST_F(CudaActiveBlocks, DeviceMaskOverloadIsGraphCapturable) {
  Rng rng(3);
  Fixture f(rng);
  oft_cuda_test::Stream stream;
  DeviceArray<unsigned char> mask_dev(kMaskA);
  DeviceArray<float> y(static_cast<std::size_t>(kTokens * f.config.features()));
  oft_cuda_test::sync_device("mask upload");

  cudaGraph_t graph = nullptr;
  oft_cuda_test::cuda_check(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal),
                            "cudaStreamBeginCapture");
  try {
    f.op.set_active_blocks(mask_dev.data(), stream.get());
    f.op.apply(f.xv(), f.view(y), stream.get());
  } catch (...) {
    (void)cudaStreamEndCapture(stream.get(), &graph);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    throw;
  }
  oft_cuda_test::cuda_check(cudaStreamEndCapture(stream.get(), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  oft_cuda_test::cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  for (const std::vector<unsigned char>& mask : {kMaskB, kMaskA}) {
    mask_dev.upload(mask);
    // A pageable cudaMemcpy may return before its DMA has landed: finish it before the replay.
    oft_cuda_test::sync_device("mask upload");
    oft_cuda_test::cuda_check(cudaGraphLaunch(exec, stream.get()), "cudaGraphLaunch");
    stream.sync();
    EXPECT_TRUE(f.matches(y.download(), mask)) << "replay with mask " << int(mask[0])
                                               << int(mask[1]) << int(mask[2]);
  }
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
}

}  // namespace

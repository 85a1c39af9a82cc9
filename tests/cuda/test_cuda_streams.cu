// Streams: the CUDA backend only enqueues work on the stream it is given, and operators are
// independent of each other (cuda/block_orthogonal.hpp). Two operators with different generators
// and parameterizations run interleaved rounds of set_generators / apply / backward on two
// non-blocking streams; every result must equal, bit for bit, the same call sequence run alone
// on the legacy default stream. Bitwise equality is the right check: the same kernels run on the
// same inputs with the same launch configuration, and the backward reduces its partial sums in a
// fixed order without atomics (kernels_apply.hpp), so any difference is cross-talk (a shared
// buffer, a wrong stream, a missing dependency). float (CUDA cores) and bf16 with b = 32 (tensor
// cores).
//
// Also: set_generators copies theta, so overwriting the caller's theta on the same stream right
// after the call does not change R.

#include <array>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaStreams : public oft_cuda_test::CudaTest {};

constexpr int kRounds = 3;

/// One operator's inputs and per-round outputs.
template <class T, class Policy>
struct Lane {
  using P = oft::cuda_parameter_t<T>;
  using Op = oft::BlockOrthogonal<T, Policy, oft::cuda>;
  OpConfig config;
  Index n;
  std::array<DeviceArray<P>, kRounds> theta;
  DeviceArray<T> x, dy;
  std::array<DeviceArray<T>, kRounds> y, dx;
  std::array<DeviceArray<P>, kRounds> dtheta;
  DeviceArray<unsigned char> workspace;
  Op op;

  Lane(const OpConfig& c, Index tokens, Rng& rng)
      : config(c), n(tokens),
        x(oft_cuda_test::random_values<T>(tokens * c.features(), rng)),
        dy(oft_cuda_test::random_values<T>(tokens * c.features(), rng)),
        op(oft_cuda_test::spec_of(c), oft_cuda_test::make_policy<Policy>(c)) {
    for (int r = 0; r < kRounds; ++r) {
      theta[r] = DeviceArray<P>(oft_cuda_test::random_theta<P>(c, 0.3 + 0.2 * r, rng));
      y[r] = DeviceArray<T>(static_cast<std::size_t>(n * c.features()));
      dx[r] = DeviceArray<T>(static_cast<std::size_t>(n * c.features()));
      dtheta[r] = DeviceArray<P>(static_cast<std::size_t>(c.generators() * c.packed()));
    }
    workspace = DeviceArray<unsigned char>(op.workspace_bytes(n));
  }

  oft::DeviceMatrixView<T> act(const DeviceArray<T>& a) const {
    return oft::DeviceMatrixView<T>(a.data(), n, config.features());
  }
  void set(int r, cudaStream_t s) {
    op.set_generators(oft::DeviceMatrixView<const P>(theta[r].data(), config.generators(),
                                                     config.packed()),
                      s);
  }
  void apply(int r, cudaStream_t s) { op.apply(act(x), act(y[r]), s); }
  void backward(int r, cudaStream_t s) {
    op.backward(act(x), act(dy), act(dx[r]),
                oft::DeviceMatrixView<P>(dtheta[r].data(), config.generators(), config.packed()),
                workspace.data(), workspace.size(), s);
  }
  struct Results {
    std::vector<std::vector<T>> y, dx;
    std::vector<std::vector<P>> dtheta;
  };
  Results results() const {
    Results out;
    for (int r = 0; r < kRounds; ++r) {
      out.y.push_back(y[r].download());
      out.dx.push_back(dx[r].download());
      out.dtheta.push_back(dtheta[r].download());
    }
    return out;
  }
};

template <class T>
void check_two_streams(Index b, std::uint64_t seed) {
  Rng rng(seed);
  const OpConfig config_a{16, b, false, oft_cuda_test::kExactCayley};
  const OpConfig config_b{16, b, true, 4};
  const Index n = 4096;  // enough tokens that kernels of the two streams can overlap
  Lane<T, oft::ExactCayley> a(config_a, n, rng);
  Lane<T, oft::CayleyNeumann> c(config_b, n, rng);

  // Alone, on the legacy default stream.
  for (int r = 0; r < kRounds; ++r) {
    a.set(r, nullptr);
    a.apply(r, nullptr);
    a.backward(r, nullptr);
  }
  for (int r = 0; r < kRounds; ++r) {
    c.set(r, nullptr);
    c.apply(r, nullptr);
    c.backward(r, nullptr);
  }
  oft_cuda_test::sync_device("serial rounds");
  const auto serial_a = a.results();
  const auto serial_c = c.results();
  // Clear the outputs so stale serial results cannot pass for interleaved ones.
  for (int r = 0; r < kRounds; ++r)
    for (auto* lane_y : {&a.y[r], &a.dx[r], &c.y[r], &c.dx[r]})
      oft_cuda_test::cuda_check(cudaMemset(lane_y->data(), 0, lane_y->size() * sizeof(T)),
                                "cudaMemset");
  for (int r = 0; r < kRounds; ++r) {
    oft_cuda_test::cuda_check(
        cudaMemset(a.dtheta[r].data(), 0, a.dtheta[r].size() * sizeof(a.dtheta[r].data()[0])),
        "cudaMemset");
    oft_cuda_test::cuda_check(
        cudaMemset(c.dtheta[r].data(), 0, c.dtheta[r].size() * sizeof(c.dtheta[r].data()[0])),
        "cudaMemset");
  }

  // The memsets ran on the legacy stream, which non-blocking streams do not wait for.
  oft_cuda_test::sync_device("clearing outputs");

  // Interleaved on two non-blocking streams; the host enqueues alternately.
  oft_cuda_test::Stream s1, s2;
  for (int r = 0; r < kRounds; ++r) {
    a.set(r, s1.get());
    c.set(r, s2.get());
    a.apply(r, s1.get());
    c.apply(r, s2.get());
    a.backward(r, s1.get());
    c.backward(r, s2.get());
  }
  s1.sync();
  s2.sync();
  oft_cuda_test::sync_device("interleaved rounds");
  const auto inter_a = a.results();
  const auto inter_c = c.results();
  for (int r = 0; r < kRounds; ++r) {
    SCOPED_TRACE("round " + std::to_string(r) + " " + oft_cuda_test::type_name<T>());
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_a.y[r], serial_a.y[r])) << "A y";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_a.dx[r], serial_a.dx[r])) << "A dx";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_a.dtheta[r], serial_a.dtheta[r])) << "A dtheta";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_c.y[r], serial_c.y[r])) << "B y";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_c.dx[r], serial_c.dx[r])) << "B dx";
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(inter_c.dtheta[r], serial_c.dtheta[r])) << "B dtheta";
  }
  // The rounds differ from each other (different theta), so equality above is not vacuous.
  EXPECT_FALSE(oft_cuda_test::bitwise_equal(serial_a.y[0], serial_a.y[1]));
  EXPECT_FALSE(oft_cuda_test::bitwise_equal(serial_c.dtheta[0], serial_c.dtheta[1]));
}

TEST_F(CudaStreams, TwoOperatorsOnTwoStreamsMatchSingleStreamFloat) {
  check_two_streams<float>(32, 1);
}
TEST_F(CudaStreams, TwoOperatorsOnTwoStreamsMatchSingleStreamBfloat16TensorCores) {
  check_two_streams<__nv_bfloat16>(32, 2);
}

// set_generators copies theta (in stream order): zeroing the caller's theta on the same stream
// right after the call leaves R as theta gave it, not the identity.
TEST_F(CudaStreams, SetGeneratorsCopiesTheta) {
  Rng rng(3);
  const OpConfig config{4, 8, false, 4};
  const std::vector<float> theta = oft_cuda_test::random_theta<float>(config, 0.5, rng);
  DeviceArray<float> theta_dev(theta);
  oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda> op(oft_cuda_test::spec_of(config),
                                                                oft::CayleyNeumann{4});
  oft_cuda_test::Stream s;
  op.set_generators(
      oft::DeviceMatrixView<const float>(theta_dev.data(), config.generators(), config.packed()),
      s.get());
  oft_cuda_test::cuda_check(
      cudaMemsetAsync(theta_dev.data(), 0, theta_dev.size() * sizeof(float), s.get()),
      "cudaMemsetAsync");
  const std::vector<float> blocks = op.rotation_blocks_host(s.get());
  const std::vector<float> expected = oft_cuda_test::cpu_rotation_blocks<float>(config, theta);
  const std::vector<double> rt = oft_cuda_test::rotation_tolerances(
      config, oft_cuda_test::row_rho_bounds(config, theta), oft_cuda_test::eps_of<float>());
  std::vector<double> bound(blocks.size());
  for (std::size_t e = 0; e < bound.size(); ++e) bound[e] = rt[e / 64];
  EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(blocks),
                                          oft_cuda_test::to_double(expected), bound, 8));
}

}  // namespace

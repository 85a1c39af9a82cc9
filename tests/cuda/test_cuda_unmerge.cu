// OftLinear<T, Policy, oft::cuda>::unmerge beyond unmerge(merge(W0)) == W0 of linear_checks.cuh:
//
//  - UnmergeInvertsMergeUnderDropoutMask*: with an active-block mask, merge treats inactive
//    blocks as the identity (W'_i = W0_i); unmerge must too (it used to apply (R_i^T)^-1 to every
//    block). Checked: merge against the CPU apply_transposed under the same mask; unmerge's
//    active blocks within the unmerge bound of linear_checks.cuh; inactive blocks bit-exact
//    copies of W0 after the round trip. A visibly non-orthogonal Neumann R (k = 1, rho = 0.9)
//    makes (R_i^T)^-1 far from I, so a block wrongly unmerged cannot pass.
//  - SingularBlockThrowsDomainError*: Cayley-Neumann k = 3 of Q = [[0, 1], [-1, 0]] is exactly
//    zero (Q^2 = -I: R = I + 2Q + 2Q^2 + 2Q^3 + Q^4 = 0), so a generator whose Q holds that 2 x 2
//    block next to a regular one is singular (rank b - 2). The CPU unmerge throws
//    std::domain_error("cannot invert R: block 1 of 3 is singular"); the GPU must throw the same
//    (it used to return NaN), with the output untouched (sentinel) also in place, and succeed
//    once that block is made inactive (then it is the identity, as on the CPU).

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "linear_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::GpuLayer;
using oft_cuda_test::Index;
using oft_cuda_test::kExactCayley;
using oft_cuda_test::kOutputs;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaUnmerge : public oft_cuda_test::CudaTest {};

/// Per block i of W (n_out x d): ||back_i - w0_i||_F within unmerge_bound for active blocks,
/// bit-exact equality for inactive ones.
template <class T>
void expect_unmerged(const OpConfig& config, const std::vector<unsigned char>& mask,
                     const std::vector<double>& cond, const std::vector<T>& back,
                     const std::vector<T>& w0, const char* what) {
  const Index b = config.b, d = config.features();
  for (Index i = 0; i < config.blocks; ++i) {
    const bool active = oft_cuda_test::block_active(mask, i);
    double err = 0.0, norm = 0.0;
    bool copied = true;
    for (Index o = 0; o < kOutputs; ++o)
      for (Index j = 0; j < b; ++j) {
        const std::size_t at = static_cast<std::size_t>(o * d + i * b + j);
        const double e = oft_cuda_test::to_double(back[at]) - oft_cuda_test::to_double(w0[at]);
        err += e * e;
        norm += oft_cuda_test::to_double(w0[at]) * oft_cuda_test::to_double(w0[at]);
        copied = copied && std::memcmp(&back[at], &w0[at], sizeof(T)) == 0;
      }
    if (active) {
      const double k = cond[static_cast<std::size_t>(config.generator_of(i))];
      EXPECT_LE(std::sqrt(err), oft_cuda_test::unmerge_bound<T>(b, k, std::sqrt(norm)))
          << what << " active block " << i << " cond " << k;
    } else {
      EXPECT_TRUE(copied) << what << " inactive block " << i << " is not W0 bit for bit";
    }
  }
}

template <class T, class Policy>
void check_unmerge_with_mask(const OpConfig& config, double rho, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  const Index d = config.features();
  SCOPED_TRACE(oft_cuda_test::describe(config) + " rho=" + std::to_string(rho) + " " +
               oft_cuda_test::type_name<T>());
  Rng rng(seed);
  const std::vector<P> theta = oft_cuda_test::random_theta_with_rho<P>(config, rho, rng);
  const std::vector<T> w0 = oft_cuda_test::random_values<T>(kOutputs * d, rng);
  GpuLayer<T, Policy> l(config, theta, w0, {});
  const std::vector<unsigned char> mask = {0, 1, 0, 1};
  ASSERT_EQ(static_cast<Index>(mask.size()), config.blocks);
  l.layer.rotation().set_active_blocks(mask, nullptr);

  DeviceArray<T> merged(static_cast<std::size_t>(kOutputs * d));
  const oft::DeviceMatrixView<T> merged_view(merged.data(), kOutputs, d);
  l.layer.merge(merged_view, nullptr);
  oft_cuda_test::sync_device("merge");

  const std::vector<double> thetad = oft_cuda_test::to_double(theta);
  const std::vector<double> w0d = oft_cuda_test::to_double(w0);
  const std::vector<double> blocks = oft_cuda_test::cpu_rotation_blocks<double>(config, thetad);
  const std::vector<double> rt = oft_cuda_test::rotation_tolerances(
      config, oft_cuda_test::row_rho_bounds(config, theta), oft_cuda_test::eps_of<P>());
  // merge = W0 R^T per block under the mask: the CPU operator's apply_transposed of W0.
  const std::vector<double> merged_ref =
      oft_cuda_test::cpu_apply<double>(config, thetad, mask, w0d, kOutputs, true);
  const auto mag =
      oft_cuda_test::apply_magnitudes(config, mask, w0d, kOutputs, blocks, rt, true);
  const std::vector<T> merged_host = merged.download();
  EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(merged_host), merged_ref,
                                          oft_cuda_test::apply_bound<T>(mag, merged_ref, config.b),
                                          d))
      << "merge";

  const std::vector<double> cond = oft_cuda_test::cpu_condition_numbers(config, blocks);
  DeviceArray<T> back(static_cast<std::size_t>(kOutputs * d));
  l.layer.unmerge(merged_view, oft::DeviceMatrixView<T>(back.data(), kOutputs, d), nullptr);
  expect_unmerged(config, mask, cond, back.download(), w0, "unmerge");
  l.layer.unmerge(merged_view, merged_view, nullptr);
  expect_unmerged(config, mask, cond, merged.download(), w0, "unmerge in place");
}

TEST_F(CudaUnmerge, UnmergeInvertsMergeUnderDropoutMaskFloat) {
  for (Index b : {8, 16}) {
    check_unmerge_with_mask<float, oft::CayleyNeumann>(OpConfig{4, b, false, 1}, 0.9, 1);
    check_unmerge_with_mask<float, oft::CayleyNeumann>(OpConfig{4, b, true, 1}, 0.9, 2);
    check_unmerge_with_mask<float, oft::ExactCayley>(OpConfig{4, b, false, kExactCayley}, 0.6, 3);
  }
}
TEST_F(CudaUnmerge, UnmergeInvertsMergeUnderDropoutMaskDouble) {
  for (Index b : {8, 16})
    check_unmerge_with_mask<double, oft::CayleyNeumann>(OpConfig{4, b, false, 1}, 0.9, 4);
}
TEST_F(CudaUnmerge, UnmergeInvertsMergeUnderDropoutMaskBfloat16) {
  check_unmerge_with_mask<__nv_bfloat16, oft::CayleyNeumann>(OpConfig{4, 16, false, 1}, 0.9, 5);
}

// ---------------------------------------------------------------------------------------------
// A singular block.
// ---------------------------------------------------------------------------------------------

constexpr int kSingularTerms = 3;

/// theta for r = 3 generators of size b (even, >= 4): generators 0 and 2 random with rho 0.3;
/// generator 1 has Q = diag([[0, 1], [-1, 0]], [[0, 0.3], [-0.3, 0]], ...) so that its
/// Cayley-Neumann k = 3 block R_1 = diag(0, R(0.3), ...) is singular.
template <class P>
std::vector<P> theta_with_singular_generator(const OpConfig& config, Rng& rng) {
  std::vector<P> theta = oft_cuda_test::random_theta<P>(config, 0.3, rng);
  const Index m = config.packed(), b = config.b;
  P* row = theta.data() + 1 * m;
  std::fill(row, row + m, P(0));
  row[oft::packed_index(0, 1, b)] = P(1);
  for (Index p = 2; p + 1 < b; p += 2) row[oft::packed_index(p, p + 1, b)] = P(0.3);
  return theta;
}

template <class P>
void check_singular_block(Index b, std::uint64_t seed) {
  using T = P;
  const OpConfig config{3, b, false, kSingularTerms};
  const Index d = config.features();
  SCOPED_TRACE(oft_cuda_test::describe(config) + " " + oft_cuda_test::type_name<T>());
  Rng rng(seed);
  const std::vector<P> theta = theta_with_singular_generator<P>(config, rng);
  const std::vector<T> w0 = oft_cuda_test::random_values<T>(kOutputs * d, rng);
  GpuLayer<T, oft::CayleyNeumann> l(config, theta, w0, {});

  {  // The construction works: the leading 2 x 2 block of R_1 is exactly zero.
    const std::vector<P> r = l.layer.rotation().rotation_blocks_host(nullptr);
    const P* r1 = r.data() + b * b;
    EXPECT_EQ(r1[0], P(0));
    EXPECT_EQ(r1[1], P(0));
    EXPECT_EQ(r1[b], P(0));
    EXPECT_EQ(r1[b + 1], P(0));
  }
  // The CPU unmerge calls the same R singular.
  const std::vector<double> thetad = oft_cuda_test::to_double(theta);
  EXPECT_TRUE(oft_cuda_test::throws_with<std::domain_error>(
      [&] {
        (void)oft_cuda_test::cpu_layer_unmerge<double>(config, thetad,
                                                       oft_cuda_test::to_double(w0), kOutputs);
      },
      {"cannot invert R: block 1 of 3 is singular"}));

  const std::vector<T> merged_host = oft_cuda_test::random_values<T>(kOutputs * d, rng);
  DeviceArray<T> merged(merged_host);
  const std::vector<T> sentinel(merged_host.size(), T(-123));
  DeviceArray<T> out(sentinel);
  const oft::DeviceMatrixView<T> merged_view(merged.data(), kOutputs, d);
  EXPECT_TRUE(oft_cuda_test::throws_with<std::domain_error>(
      [&] {
        l.layer.unmerge(merged_view, oft::DeviceMatrixView<T>(out.data(), kOutputs, d), nullptr);
      },
      {"unmerge", "cannot invert R: block 1 of 3 is singular"}));
  EXPECT_TRUE(oft_cuda_test::throws_with<std::domain_error>(
      [&] { l.layer.unmerge(merged_view, merged_view, nullptr); },
      {"cannot invert R: block 1 of 3 is singular"}));
  oft_cuda_test::sync_device("unmerge");
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(out.download(), sentinel)) << "W0 output written";
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(merged.download(), merged_host))
      << "in-place W0 output written";

  // With block 1 inactive (the identity) the round trip works, as on the CPU.
  const std::vector<unsigned char> mask = {1, 0, 1};
  l.layer.rotation().set_active_blocks(mask, nullptr);
  l.layer.merge(merged_view, nullptr);
  DeviceArray<T> back(out.size());
  l.layer.unmerge(merged_view, oft::DeviceMatrixView<T>(back.data(), kOutputs, d), nullptr);
  // cond of generator 1 (singular) is never used: its block is inactive.
  const std::vector<double> blocks = oft_cuda_test::cpu_rotation_blocks<double>(config, thetad);
  const std::vector<double> cond = oft_cuda_test::cpu_condition_numbers(config, blocks);
  expect_unmerged(config, mask, cond, back.download(), w0, "unmerge with block 1 inactive");
}

TEST_F(CudaUnmerge, SingularBlockThrowsDomainErrorFloat) {
  check_singular_block<float>(4, 11);
  check_singular_block<float>(16, 12);
}
TEST_F(CudaUnmerge, SingularBlockThrowsDomainErrorDouble) {
  check_singular_block<double>(4, 13);
  check_singular_block<double>(16, 14);
}

}  // namespace

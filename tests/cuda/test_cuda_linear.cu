// OftLinear<T, Policy, oft::cuda> for float and double against the CPU OftLinear: forward with
// and without bias, backward (dX, dtheta, in place, skipped outputs), merge, unmerge(merge(W0))
// == W0 (also for a non-orthogonal Neumann R, where only the true inverse works), and bad input.
// Checks and bounds: linear_checks.cuh.

#include "linear_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::Index;
using oft_cuda_test::kExactCayley;
using oft_cuda_test::throws_with;

class CudaOftLinear : public oft_cuda_test::CudaTest {};

const std::vector<Index> kSizes = {2, 8, 32};

TEST_F(CudaOftLinear, ForwardMatchesCpuFloat) {
  oft_cuda_test::check_layer_forward<float, oft::ExactCayley>(kExactCayley, kSizes, 1);
  oft_cuda_test::check_layer_forward<float, oft::CayleyNeumann>(3, kSizes, 2);
}
TEST_F(CudaOftLinear, ForwardMatchesCpuDouble) {
  oft_cuda_test::check_layer_forward<double, oft::ExactCayley>(kExactCayley, kSizes, 3);
  oft_cuda_test::check_layer_forward<double, oft::CayleyNeumann>(3, kSizes, 4);
}
TEST_F(CudaOftLinear, BackwardMatchesCpuFloat) {
  oft_cuda_test::check_layer_backward<float, oft::ExactCayley>(kExactCayley, kSizes, 5);
  oft_cuda_test::check_layer_backward<float, oft::CayleyNeumann>(3, kSizes, 6);
}
TEST_F(CudaOftLinear, BackwardMatchesCpuDouble) {
  oft_cuda_test::check_layer_backward<double, oft::ExactCayley>(kExactCayley, kSizes, 7);
  oft_cuda_test::check_layer_backward<double, oft::CayleyNeumann>(3, kSizes, 8);
}
TEST_F(CudaOftLinear, MergeMatchesCpuAndUnmergeInvertsItFloat) {
  oft_cuda_test::check_merge_unmerge<float>(kSizes, 9);
}
TEST_F(CudaOftLinear, MergeMatchesCpuAndUnmergeInvertsItDouble) {
  oft_cuda_test::check_merge_unmerge<double>(kSizes, 10);
}

// Bad input: std::invalid_argument naming the values at fault, nothing written.
TEST_F(CudaOftLinear, BadInput) {
  using Layer = oft::OftLinear<float, oft::CayleyNeumann, oft::cuda>;
  using CView = oft::DeviceMatrixView<const float>;
  using View = oft::DeviceMatrixView<float>;
  constexpr Index b = 4, r = 3, d = b * r, n_out = 6, n = 5;
  oft_cuda_test::Rng rng(11);
  const auto spec = oft::BlockSpec::from_features(d, b);
  const std::vector<float> w0 = oft_cuda_test::random_values<float>(n_out * d, rng);
  const DeviceArray<float> w0_dev(w0), bias_dev(std::vector<float>(n_out, 0.5f));
  const std::vector<float> host_w0 = w0;

  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Layer bad(CView(w0_dev.data(), n_out - 1, d + 1), nullptr, spec); },
      {"W0 has 13 columns", "d=12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Layer bad(CView(host_w0.data(), n_out, d), nullptr, spec); },
      {"w0 points to host memory"}));
  const std::vector<float> host_bias(n_out, 1.0f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Layer bad(CView(w0_dev.data(), n_out, d), host_bias.data(), spec); },
      {"bias points to host memory"}));

  Layer layer(CView(w0_dev.data(), n_out, d), bias_dev.data(), spec, oft::CayleyNeumann{4});
  const DeviceArray<float> x(oft_cuda_test::random_values<float>(n * d, rng));
  const DeviceArray<float> dz(oft_cuda_test::random_values<float>(n * n_out, rng));
  const std::vector<float> sentinel(static_cast<std::size_t>(n * d + 64), -7.5f);
  DeviceArray<float> out(sentinel);
  const std::size_t bytes = layer.workspace_bytes(n);
  DeviceArray<unsigned char> workspace(bytes + 256);

  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(CView(x.data(), n, d), View(out.data(), n, n_out + 1), workspace.data(), bytes, nullptr); },
      {"forward", "z has shape 5x7", "expected 5x6"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(CView(x.data(), n, d - 1), View(out.data(), n, n_out), workspace.data(), bytes, nullptr); },
      {"forward", "x has shape 5x11", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(CView(x.data(), n, d), View(out.data(), n, n_out), workspace.data(), bytes - 1, nullptr); },
      {"forward", "workspace of " + std::to_string(bytes - 1) + " bytes",
       "workspace_bytes(5) = " + std::to_string(bytes)}));
  std::vector<float> host_z(static_cast<std::size_t>(n * n_out));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.forward(CView(x.data(), n, d), View(host_z.data(), n, n_out), workspace.data(), bytes, nullptr); },
      {"forward", "z points to host memory"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(CView(x.data(), n, d), CView(dz.data(), n, n_out + 1), View(out.data(), n, d),
                       {}, workspace.data(), bytes, nullptr);
      },
      {"backward", "dz has shape 5x7", "expected 5x6"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(CView(x.data(), n, d), CView(dz.data(), n, n_out), View(out.data(), n, d),
                       {}, workspace.data() + 8, bytes, nullptr);
      },
      {"backward", "256-byte aligned"}));
  // unmerge: shapes and partial overlap.
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.unmerge(CView(w0_dev.data(), n_out, d), View(out.data(), n_out - 1, d), nullptr); },
      {"unmerge", "w0_out has shape 5x12", "expected 6x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.unmerge(CView(out.data(), n_out, d), View(out.data() + 1, n_out, d), nullptr); },
      {"unmerge", "w0_out partially overlaps merged"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { layer.merge(View(out.data(), n_out, d + 1), nullptr); }, {"merge", "merged has shape 6x13", "expected 6x12"}));
  oft_cuda_test::sync_device();
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(out.download(), sentinel)) << "an output was written";
}

}  // namespace

// OftLinear<T, Policy, oft::cuda> for __half and __nv_bfloat16 against the CPU OftLinear (in
// double, on the same 16-bit-exact inputs): forward with and without bias, backward, merge and
// unmerge(merge(W0)), on CUDA cores (b = 8) and tensor cores (b = 16, 32). The bounds add, to the
// fp32-level error, the roundings to T of the intermediate Y / dY (stored in T in the workspace)
// and of the result (linear_checks.cuh).

#include "linear_checks.cuh"

namespace {

using oft_cuda_test::Index;
using oft_cuda_test::kExactCayley;

class CudaOftLinearHalf : public oft_cuda_test::CudaTest {};

const std::vector<Index> kSizes = {8, 16, 32};

TEST_F(CudaOftLinearHalf, ForwardMatchesCpuHalf) {
  oft_cuda_test::check_layer_forward<__half, oft::ExactCayley>(kExactCayley, kSizes, 21);
  oft_cuda_test::check_layer_forward<__half, oft::CayleyNeumann>(4, kSizes, 22);
}
TEST_F(CudaOftLinearHalf, ForwardMatchesCpuBfloat16) {
  oft_cuda_test::check_layer_forward<__nv_bfloat16, oft::ExactCayley>(kExactCayley, kSizes, 23);
  oft_cuda_test::check_layer_forward<__nv_bfloat16, oft::CayleyNeumann>(4, kSizes, 24);
}
TEST_F(CudaOftLinearHalf, BackwardMatchesCpuHalf) {
  oft_cuda_test::check_layer_backward<__half, oft::ExactCayley>(kExactCayley, kSizes, 25);
  oft_cuda_test::check_layer_backward<__half, oft::CayleyNeumann>(4, kSizes, 26);
}
TEST_F(CudaOftLinearHalf, BackwardMatchesCpuBfloat16) {
  oft_cuda_test::check_layer_backward<__nv_bfloat16, oft::ExactCayley>(kExactCayley, kSizes, 27);
  oft_cuda_test::check_layer_backward<__nv_bfloat16, oft::CayleyNeumann>(4, kSizes, 28);
}
TEST_F(CudaOftLinearHalf, MergeMatchesCpuAndUnmergeInvertsItHalf) {
  oft_cuda_test::check_merge_unmerge<__half>(kSizes, 29);
}
TEST_F(CudaOftLinearHalf, MergeMatchesCpuAndUnmergeInvertsItBfloat16) {
  oft_cuda_test::check_merge_unmerge<__nv_bfloat16>(kSizes, 30);
}

}  // namespace

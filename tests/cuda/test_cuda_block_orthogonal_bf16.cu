// BlockOrthogonal<__nv_bfloat16, Policy, oft::cuda> against the CPU backend (in double, on the
// same bf16-exact inputs): apply / apply_transposed and backward on CUDA cores (b in
// {1, 2, 3, 8}) and tensor cores (b in {16, 32, 64}), masks, strides, in-place use. Tolerance:
// the result rounded once to bf16 (half an ulp at the value) plus the fp32-level error of the
// accumulation and of the R_hi + R_lo split (apply_bound in cuda_test_support.cuh); dtheta as
// fp32.

#include "block_orthogonal_checks.cuh"

namespace {

class CudaBlockOrthogonalBfloat16 : public oft_cuda_test::CudaTest {};

OFT_CUDA_BLOCK_ORTHOGONAL_TESTS(CudaBlockOrthogonalBfloat16, __nv_bfloat16, 400)

}  // namespace

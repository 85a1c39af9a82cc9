// BlockOrthogonal<float, Policy, oft::cuda> against the CPU backend: rotation blocks for
// Cayley-Neumann k in {0, 1, 3, 4} and exact Cayley, apply / apply_transposed, backward (dX,
// dtheta), masks, strides, in-place use. Checks and tolerances: block_orthogonal_checks.cuh.

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::kExactCayley;

class CudaBlockOrthogonalFloat : public oft_cuda_test::CudaTest {};

TEST_F(CudaBlockOrthogonalFloat, RotationBlocksMatchCpu) {
  oft_cuda_test::check_rotation_blocks<float, oft::CayleyNeumann>({0, 1, 3, 4}, 10);
  oft_cuda_test::check_rotation_blocks<float, oft::ExactCayley>({kExactCayley}, 11);
}

OFT_CUDA_BLOCK_ORTHOGONAL_TESTS(CudaBlockOrthogonalFloat, float, 100)

}  // namespace

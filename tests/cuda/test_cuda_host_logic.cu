// Host-only logic of the CUDA backend: pure functions that decide how kernels are launched,
// tested with made-up device properties. These tests touch no CUDA API, so they run (and must
// pass) on machines without a GPU too, unlike the rest of the suite.
//
//  - use_tensor_core_path: the tensor-core (WMMA) kernels run only where the device and the
//    compiled kernels support WMMA for T (sm_70 for __half, sm_80 for __nv_bfloat16) and their
//    shared memory fits; everywhere else the CUDA-core kernels run (a bf16 WMMA kernel on sm_75
//    would trap).
//  - TensorSharedLayout::wmma_aligned: every WMMA pointer in shared memory is 32-byte aligned.
//  - singular_pivot_floor: the unmerge's singularity threshold is Eigen's default of the CPU
//    unmerge (b * eps * max|R_ij|).
//  - ScopedTokenGridLimit: lowers gridDim.y of the token kernels (used by the many-tiles tests)
//    and restores it.

#include <gtest/gtest.h>

#include <cfloat>
#include <limits>
#include <oft/cuda.hpp>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace {

using oft::Index;
using oft::detail::cuda::TensorCoreEnvironment;
using oft::detail::cuda::TensorSharedLayout;
using oft::detail::cuda::use_tensor_core_path;

constexpr std::size_t kHopperShared = 232448;  // H100 / H200 opt-in shared memory per block
constexpr std::size_t kTuringShared = 65536;   // T4 (sm_75)

TensorCoreEnvironment environment(int device_arch, int kernel_arch, std::size_t shared) {
  TensorCoreEnvironment env;
  env.device_arch = device_arch;
  env.kernel_arch = kernel_arch;
  env.shared_limit = shared;
  return env;
}

TEST(CudaHostLogic, TensorCoresOnlyForSixteenBitTypesAndBlockSizesOfSixteen) {
  const TensorCoreEnvironment hopper = environment(90, 90, kHopperShared);
  for (Index b : {1, 2, 3, 8, 15, 16, 24, 32, 48, 64, 80, 128}) {
    const bool shape = b % 16 == 0 && b <= 64;
    EXPECT_EQ(use_tensor_core_path<__half>(b, hopper), shape) << "half b=" << b;
    EXPECT_EQ(use_tensor_core_path<__nv_bfloat16>(b, hopper), shape) << "bf16 b=" << b;
    EXPECT_FALSE(use_tensor_core_path<float>(b, hopper)) << "float b=" << b;
    EXPECT_FALSE(use_tensor_core_path<double>(b, hopper)) << "double b=" << b;
  }
}

// bf16 WMMA needs sm_80, half WMMA sm_70: on a Turing or Volta GPU bf16 falls back to CUDA
// cores (the old code launched the tensor-core kernel there, which traps).
TEST(CudaHostLogic, TensorCoresNeedTheDevicesComputeCapability) {
  for (int arch : {61, 70, 75, 80, 86, 89, 90, 100}) {
    const TensorCoreEnvironment env = environment(arch, arch, kHopperShared);
    EXPECT_EQ(use_tensor_core_path<__nv_bfloat16>(32, env), arch >= 80) << "bf16 sm_" << arch;
    EXPECT_EQ(use_tensor_core_path<__half>(32, env), arch >= 70) << "half sm_" << arch;
  }
}

// A program built for compute_75 (CMAKE_CUDA_ARCHITECTURES=75) and JIT-compiled for a newer GPU
// runs kernels whose __CUDA_ARCH__ was 750: their bf16 WMMA code was compiled out, so the
// kernels' own architecture decides too, not only the device's.
TEST(CudaHostLogic, TensorCoresNeedTheKernelsCompiledArchitecture) {
  EXPECT_FALSE(use_tensor_core_path<__nv_bfloat16>(16, environment(90, 75, kHopperShared)));
  EXPECT_TRUE(use_tensor_core_path<__half>(16, environment(90, 75, kHopperShared)));
  EXPECT_TRUE(use_tensor_core_path<__nv_bfloat16>(16, environment(90, 80, kHopperShared)));
  // kernel_arch 0: the program has no image of the tensor-core kernels for this device.
  EXPECT_FALSE(use_tensor_core_path<__half>(16, environment(90, 0, kHopperShared)));
}

// The backward of b = 64 needs more shared memory than a T4 allows per thread block: CUDA cores.
TEST(CudaHostLogic, TensorCoresNeedTheirSharedMemoryToFit) {
  const std::size_t need64 = TensorSharedLayout(64, true).bytes();
  ASSERT_GT(need64, kTuringShared);
  EXPECT_FALSE(use_tensor_core_path<__half>(64, environment(75, 75, kTuringShared)));
  EXPECT_TRUE(use_tensor_core_path<__half>(64, environment(75, 75, need64)));
  EXPECT_FALSE(use_tensor_core_path<__half>(64, environment(75, 75, need64 - 1)));
  EXPECT_TRUE(use_tensor_core_path<__half>(16, environment(75, 75, kTuringShared)));
}

// WMMA's load/store_matrix_sync need 32-byte aligned pointers; the dynamic shared memory base
// is 128-byte aligned (launch.hpp), so every region offset and every 16-row / 16-column step
// must be a multiple of 32 bytes. (The header also static_asserts this.)
TEST(CudaHostLogic, TensorSharedLayoutKeepsWmmaAlignment) {
  EXPECT_EQ(oft::detail::cuda::kSharedAlignment % oft::detail::cuda::kWmmaAlignment, 0u);
  for (int b : {16, 32, 48, 64})
    for (bool backward : {false, true}) {
      const TensorSharedLayout s(b, backward);
      SCOPED_TRACE("b=" + std::to_string(b) + (backward ? " backward" : " apply"));
      EXPECT_TRUE(s.wmma_aligned());
      // The regions follow each other without overlap and fill `total` exactly.
      if (backward) EXPECT_EQ(s.x_offset, s.dy_offset + s.x_tile);
      EXPECT_EQ(s.hi_offset, s.x_offset + s.x_tile);
      EXPECT_EQ(s.lo_offset, s.hi_offset + s.r_block);
      EXPECT_EQ(s.out_offset, s.lo_offset + s.r_block);
      EXPECT_EQ(s.g_offset, s.out_offset + s.out_tile);
      EXPECT_EQ(s.bytes(), s.g_offset + s.g_stage);
      EXPECT_EQ(s.g_stage > 0, backward);
    }
  // The check is not vacuous: a layout with a 16-byte-only offset fails it.
  TensorSharedLayout shifted(16, false);
  shifted.hi_offset += 16;
  EXPECT_FALSE(shifted.wmma_aligned());
}

// The unmerge's singularity threshold is Eigen's FullPivLU default: diagonal size * epsilon of
// the scalar type * the largest pivot (max |R_ij| for full pivoting).
TEST(CudaHostLogic, SingularPivotFloorIsEigensDefaultThreshold) {
  EXPECT_EQ(oft::detail::cuda::machine_epsilon<float>(), std::numeric_limits<float>::epsilon());
  EXPECT_EQ(oft::detail::cuda::machine_epsilon<double>(), std::numeric_limits<double>::epsilon());
  EXPECT_EQ(oft::detail::cuda::singular_pivot_floor(16, 2.0f),
            16.0f * std::numeric_limits<float>::epsilon() * 2.0f);
  EXPECT_EQ(oft::detail::cuda::singular_pivot_floor(4, 0.5), 4.0 * DBL_EPSILON * 0.5);
  EXPECT_EQ(oft::detail::cuda::singular_pivot_floor(4, 0.0), 0.0);  // R = 0: every pivot is 0
}

TEST(CudaHostLogic, ScopedTokenGridLimitCapsTheGridAndRestoresIt) {
  using oft::detail::cuda::gradient_chunks;
  using oft::detail::cuda::kMaxGridY;
  using oft::detail::cuda::tile_grid;
  ASSERT_EQ(oft::detail::cuda::token_grid_limit(), kMaxGridY);
  EXPECT_EQ(tile_grid(100000), kMaxGridY);  // more tiles than CUDA's gridDim.y allows
  EXPECT_EQ(tile_grid(100), 100u);
  EXPECT_EQ(tile_grid(0), 1u);
  {
    const oft::detail::cuda::ScopedTokenGridLimit limit(3);
    EXPECT_EQ(oft::detail::cuda::token_grid_limit(), 3u);
    EXPECT_EQ(tile_grid(100), 3u);
    EXPECT_EQ(tile_grid(2), 2u);
    // 1000 tokens, 3 blocks, 132 SMs: 32 tiles, 352 wanted, capped at 3.
    EXPECT_EQ(gradient_chunks(1000, 3, 132, false), 3);
  }
  EXPECT_EQ(oft::detail::cuda::token_grid_limit(), kMaxGridY);
  EXPECT_EQ(gradient_chunks(1000, 3, 132, false), 32);
  EXPECT_THROW(oft::detail::cuda::ScopedTokenGridLimit bad(0), std::invalid_argument);
  EXPECT_THROW(oft::detail::cuda::ScopedTokenGridLimit bad(kMaxGridY + 1), std::invalid_argument);
  EXPECT_EQ(oft::detail::cuda::token_grid_limit(), kMaxGridY);
}

}  // namespace

namespace {

// DeviceMatrixView: only the documented negative leading dimension (kPackedRows) is accepted,
// and the aliasing test is the CPU's exact one (a fake device address: nothing is dereferenced).
TEST(CudaHostLogic, DeviceViewLeadingDimensionAndExactOverlap) {
  using View = oft::DeviceMatrixView<float>;
  float* base = reinterpret_cast<float*>(std::uintptr_t(1) << 20);
  EXPECT_EQ(View(base, 4, 8).ld(), 8);
  EXPECT_EQ(View(base, 4, 8, View::kPackedRows).ld(), 8);
  for (const Index bad : {Index(-2), Index(-8)}) {
    try {
      View(base, 4, 8, bad);
      ADD_FAILURE() << "leading dimension " << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("leading dimension " + std::to_string(bad)),
                std::string::npos)
          << e.what();
    }
  }
  // Columns [0, 8) and [8, 16) of a 4 x 16 buffer: interleaved addresses, no shared element.
  const View left(base, 4, 8, 16), right(base + 8, 4, 8, 16), shifted(base + 7, 4, 8, 16);
  EXPECT_FALSE(oft::detail::cuda::overlaps(left, right));
  EXPECT_FALSE(oft::detail::cuda::overlaps(right, left));
  EXPECT_TRUE(oft::detail::cuda::overlaps(left, shifted));
  EXPECT_TRUE(oft::detail::cuda::overlaps(shifted, right));
}

}  // namespace

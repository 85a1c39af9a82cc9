// Token tiles per thread block. The apply and backward kernels give each thread block of the
// grid's y dimension the token tiles y, y + gridDim.y, ... and the backward accumulates its
// partial G = X_i^T dY_i over all of them. With the suite's usual N every thread block gets one
// tile, so the loop and the cross-tile accumulation were never compared with the CPU. Here:
//
//  - ManyTilesPerThreadBlock*: ScopedTokenGridLimit(3) caps gridDim.y (and the gradient chunks)
//    at 3, so with N = 3000 each thread block loops over ~31 tiles of 32 rows (CUDA cores) or
//    ~8 tiles of 128 rows (tensor cores); apply, apply_transposed, backward (dX and dtheta,
//    dX only, masks, in place, strides) against the CPU operator with the usual bounds
//    (block_orthogonal_checks.cuh).
//  - MoreRowTilesThanGridRows*: N with 65,537 token tiles, two more than CUDA's largest
//    gridDim.y (65,535), so the real cap applies: thread block 0 handles tiles 0 and 65,535,
//    thread block 1 tiles 1 and 65,536 (the ragged last one). To keep the CPU reference cheap,
//    only the rows of a few tiles are nonzero: the first two, the two that share the first
//    gradient chunks' thread blocks, and the last three. Zero rows must come out exactly zero
//    (outputs are pre-filled with NaN, so an unprocessed tile shows); the nonzero rows and
//    dtheta are compared with the CPU operator run on the nonzero rows alone (zero rows add
//    exact zeros to G). Float on CUDA cores, bf16 on tensor cores, d = 32, b = 16.
//
// Cost: the MoreRowTilesThanGridRows tests move about 0.3 GB (float) and 0.5 GB (bf16) per
// array through 3 arrays, a few seconds each on an H100 (mostly host-side checks); under
// compute-sanitizer racecheck their kernels are slow, so a budgeted sanitizer run may exclude
// them: OFT_SANITIZER_FILTER='-CudaTokenGrid.MoreRowTiles*' (scripts/gpu/gpu_bench.sh).

#include <algorithm>
#include <set>

#include "block_orthogonal_checks.cuh"

namespace {

using oft_cuda_test::Alias;
using oft_cuda_test::ApplyCase;
using oft_cuda_test::BackwardCase;
using oft_cuda_test::DeviceArray;
using oft_cuda_test::GpuOperator;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;

class CudaTokenGrid : public oft_cuda_test::CudaTest {};

/// What use_tensor_cores() must say for T and b on this device.
template <class T>
bool expect_tensor_cores(Index b) {
  const oft::detail::cuda::DeviceInfo device = oft::detail::cuda::query_device("test");
  return oft::detail::cuda::use_tensor_core_path<T>(
      b, oft::detail::cuda::tensor_core_environment<T>(device, "test"));
}

// ---------------------------------------------------------------------------------------------
// Several tiles per thread block (forced small gridDim.y).
// ---------------------------------------------------------------------------------------------

constexpr unsigned kForcedGridRows = 3;
constexpr Index kManyTokens = 3000;

template <class T>
void check_many_tiles_per_thread_block(Index b, int terms, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  const oft::detail::cuda::ScopedTokenGridLimit limit(kForcedGridRows);
  Rng rng(seed);
  for (bool shared : {false, true}) {
    const OpConfig config{oft_cuda_test::kBlocks, b, shared, terms};
    SCOPED_TRACE(oft_cuda_test::describe(config) + " " + oft_cuda_test::type_name<T>());
    GpuOperator<T, oft::CayleyNeumann> gpu(config,
                                           oft_cuda_test::random_theta<P>(config, 0.6, rng));
    EXPECT_EQ(gpu.op.use_tensor_cores(), expect_tensor_cores<T>(b));
    EXPECT_EQ(gpu.op.gradient_chunks(kManyTokens), static_cast<Index>(kForcedGridRows));
    const std::vector<double> ref_blocks =
        oft_cuda_test::cpu_rotation_blocks<double>(config, gpu.theta_double());
    const std::vector<double> rho = oft_cuda_test::row_rho_bounds(config, gpu.theta);
    const std::vector<double> rt =
        oft_cuda_test::rotation_tolerances(config, rho, oft_cuda_test::eps_of<P>());
    for (const ApplyCase& c : {ApplyCase{kManyTokens, 0, 0, false, false, false},
                               ApplyCase{kManyTokens, 0, 0, false, true, true},
                               ApplyCase{kManyTokens, 8, 8, true, true, false, 3}})
      oft_cuda_test::run_apply_case(gpu, ref_blocks, rt, c, rng);
    for (const BackwardCase& c :
         {BackwardCase{kManyTokens, 0, 0, false, Alias::None, true, true},
          BackwardCase{kManyTokens, 0, 0, true, Alias::DxIsDy, true, true},
          BackwardCase{kManyTokens, 8, 0, true, Alias::None, true, true, 1},
          BackwardCase{kManyTokens, 0, 0, false, Alias::None, true, false},  // dX only
          BackwardCase{kManyTokens, 0, 0, true, Alias::None, false, true}})  // dtheta only
      oft_cuda_test::run_backward_case(gpu, ref_blocks, rt, rho, c, rng);
  }
}

TEST_F(CudaTokenGrid, ManyTilesPerThreadBlockFloat) {
  check_many_tiles_per_thread_block<float>(8, 4, 1);
  check_many_tiles_per_thread_block<float>(16, 4, 2);
}
TEST_F(CudaTokenGrid, ManyTilesPerThreadBlockHalfTensorCores) {
  check_many_tiles_per_thread_block<__half>(16, 4, 3);
  check_many_tiles_per_thread_block<__half>(32, 4, 4);
}
TEST_F(CudaTokenGrid, ManyTilesPerThreadBlockBfloat16TensorCores) {
  check_many_tiles_per_thread_block<__nv_bfloat16>(16, 4, 5);
  check_many_tiles_per_thread_block<__nv_bfloat16>(64, 4, 6);
}

// ---------------------------------------------------------------------------------------------
// More token tiles than gridDim.y can hold.
// ---------------------------------------------------------------------------------------------

/// Rows [first, first + count) of a token-major matrix with d columns.
struct RowRange {
  Index first, count;
};

/// The rows of the chosen tiles, in order.
std::vector<RowRange> rows_of_tiles(const std::set<Index>& tiles, Index tile_rows, Index n) {
  std::vector<RowRange> out;
  for (Index t : tiles) out.push_back({t * tile_rows, std::min(tile_rows, n - t * tile_rows)});
  return out;
}

/// The nonzero rows of a sparse n x d matrix, gathered.
template <class V>
std::vector<V> gather(const std::vector<V>& dense, const std::vector<RowRange>& rows, Index d) {
  std::vector<V> out;
  for (const RowRange& r : rows)
    out.insert(out.end(), dense.begin() + r.first * d, dense.begin() + (r.first + r.count) * d);
  return out;
}

/// Every entry outside `rows` is exactly zero (NaN pre-fill: an unwritten tile fails).
template <class T>
::testing::AssertionResult zero_outside(const std::vector<T>& dense,
                                        const std::vector<RowRange>& rows, Index n, Index d) {
  std::vector<bool> nonzero(static_cast<std::size_t>(n), false);
  for (const RowRange& r : rows)
    for (Index t = r.first; t < r.first + r.count; ++t) nonzero[static_cast<std::size_t>(t)] = true;
  for (Index t = 0; t < n; ++t) {
    if (nonzero[static_cast<std::size_t>(t)]) continue;
    for (Index j = 0; j < d; ++j) {
      const double v = oft_cuda_test::to_double(dense[static_cast<std::size_t>(t * d + j)]);
      if (!(v == 0.0))
        return ::testing::AssertionFailure()
               << "row " << t << " (tile-aligned zero input) column " << j << " is " << v;
    }
  }
  return ::testing::AssertionSuccess();
}

/// Fills a device array with NaN (all bits set is a NaN in float, half and bf16).
template <class T>
void fill_nan(DeviceArray<T>& a) {
  oft_cuda_test::cuda_check(cudaMemset(a.data(), 0xFF, a.size() * sizeof(T)), "cudaMemset");
}

template <class T>
void check_more_row_tiles_than_grid_rows(std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  constexpr Index kB = 16;
  const OpConfig config{2, kB, false, 4};
  const Index d = config.features(), m = config.packed();
  Rng rng(seed);
  GpuOperator<T, oft::CayleyNeumann> gpu(config, oft_cuda_test::random_theta<P>(config, 0.6, rng));
  ASSERT_EQ(gpu.op.use_tensor_cores(), expect_tensor_cores<T>(kB));
  const Index tile_rows = gpu.op.use_tensor_cores() ? oft::detail::cuda::kTensorTileRows
                                                    : oft::detail::cuda::kSimtTileRows;
  const Index max_grid = oft::detail::cuda::kMaxGridY;
  const Index tiles = max_grid + 2;
  const Index n = (tiles - 1) * tile_rows + 5;  // the last tile is ragged
  ASSERT_EQ(oft::detail::cuda::token_tiles(n, tile_rows), tiles);
  const Index chunks = gpu.op.gradient_chunks(n);
  ASSERT_LT(chunks + 1, max_grid - 1);
  SCOPED_TRACE("N=" + std::to_string(n) + " tiles=" + std::to_string(tiles) +
               " chunks=" + std::to_string(chunks) + " " + oft_cuda_test::type_name<T>());
  // The first tiles; the tiles that share a thread block with them in the backward's gradient
  // chunks (stride `chunks`); the last three, which share thread blocks 65534, 0 and 1 of the
  // capped apply grid.
  const std::set<Index> chosen = {0, 1, chunks, chunks + 1, max_grid - 1, max_grid, max_grid + 1};
  const std::vector<RowRange> rows = rows_of_tiles(chosen, tile_rows, n);

  const std::size_t size = static_cast<std::size_t>(n * d);
  std::vector<T> x(size, oft_cuda_test::from_double<T>(0.0)), dy = x;
  for (const RowRange& r : rows) {
    const std::vector<T> xr = oft_cuda_test::random_values<T>(r.count * d, rng);
    const std::vector<T> dyr = oft_cuda_test::random_values<T>(r.count * d, rng);
    std::copy(xr.begin(), xr.end(), x.begin() + r.first * d);
    std::copy(dyr.begin(), dyr.end(), dy.begin() + r.first * d);
  }
  const std::vector<double> xc = oft_cuda_test::to_double(gather(x, rows, d));
  const std::vector<double> dyc = oft_cuda_test::to_double(gather(dy, rows, d));
  const Index nc = static_cast<Index>(xc.size()) / d;

  DeviceArray<T> x_dev(x), dy_dev(dy), out(size);
  DeviceArray<P> dtheta(static_cast<std::size_t>(config.generators() * m));
  DeviceArray<unsigned char> workspace(gpu.op.workspace_bytes(n));
  const oft::DeviceMatrixView<const T> xv(x_dev.data(), n, d), dyv(dy_dev.data(), n, d);
  const oft::DeviceMatrixView<T> outv(out.data(), n, d);
  const oft::DeviceMatrixView<P> dthetav(dtheta.data(), config.generators(), m);

  const std::vector<double> thetad = gpu.theta_double();
  const std::vector<double> ref_blocks = oft_cuda_test::cpu_rotation_blocks<double>(config, thetad);
  const std::vector<double> rho = oft_cuda_test::row_rho_bounds(config, gpu.theta);
  const std::vector<double> rt =
      oft_cuda_test::rotation_tolerances(config, rho, oft_cuda_test::eps_of<P>());

  {  // apply: gridDim.y = 65,535, two thread blocks loop over two tiles each
    fill_nan(out);
    gpu.op.apply(xv, outv, nullptr);
    oft_cuda_test::sync_device("apply");
    const std::vector<T> y = out.download();
    EXPECT_TRUE(zero_outside(y, rows, n, d)) << "apply";
    const std::vector<double> ref = oft_cuda_test::cpu_apply<double>(config, thetad, {}, xc, nc, false);
    const auto mag = oft_cuda_test::apply_magnitudes(config, {}, xc, nc, ref_blocks, rt, false);
    EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(gather(y, rows, d)), ref,
                                            oft_cuda_test::apply_bound<T>(mag, ref, kB), d))
        << "apply";
  }
  std::vector<double> dx_ref, dtheta_ref;
  oft_cuda_test::cpu_backward<double>(config, thetad, {}, xc, dyc, nc, &dx_ref, &dtheta_ref);
  const auto dx_mag = oft_cuda_test::apply_magnitudes(config, {}, dyc, nc, ref_blocks, rt, true);
  const std::vector<double> dx_bound = oft_cuda_test::apply_bound<T>(dx_mag, dx_ref, kB);
  for (bool want_dtheta : {true, false}) {  // chunked grid; then dX only, the capped tile grid
    SCOPED_TRACE(want_dtheta ? "backward dX + dtheta" : "backward dX only");
    fill_nan(out);
    gpu.op.backward(xv, dyv, outv, want_dtheta ? dthetav : oft::DeviceMatrixView<P>(),
                    want_dtheta ? workspace.data() : nullptr, want_dtheta ? workspace.size() : 0,
                    nullptr);
    oft_cuda_test::sync_device("backward");
    const std::vector<T> dx = out.download();
    EXPECT_TRUE(zero_outside(dx, rows, n, d)) << "dX";
    EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(gather(dx, rows, d)), dx_ref,
                                            dx_bound, d))
        << "dX";
    if (want_dtheta)
      EXPECT_TRUE(oft_cuda_test::rows_within(
          oft_cuda_test::to_double(dtheta.download()), dtheta_ref, m,
          oft_cuda_test::dtheta_bound<P>(config, {}, xc, dyc, nc, rho)))
          << "dtheta";
  }
}

TEST_F(CudaTokenGrid, MoreRowTilesThanGridRowsFloat) {
  check_more_row_tiles_than_grid_rows<float>(11);
}
TEST_F(CudaTokenGrid, MoreRowTilesThanGridRowsBfloat16TensorCores) {
  check_more_row_tiles_than_grid_rows<__nv_bfloat16>(12);
}

}  // namespace

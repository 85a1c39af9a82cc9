// AdapterBank<T, oft::cuda> (cuda/adapter_bank.hpp) against the CPU single-adapter operator
// (cpu_reference.hpp), for T in float, double, __half, __nv_bfloat16: random interleavings of ids
// with -1 and an identity adapter, runs of equal ids, 1 to 2049 tokens, mixed block sizes
// (shared and unshared generators), both routings forced and Automatic, device and host ids, in
// place and strided, tensor-parallel shards, adapters taken from a GPU BlockOrthogonal, and bad
// input. Each adapter's tokens are gathered on the host and run through the CPU operator with
// that adapter's theta; the bound is block_orthogonal_checks.cuh's (apply_bound: the rotation
// error of R in the parameter type, the accumulation, and for 16-bit T one rounding to T). Rows
// of -1 and of identity adapters must be bit-exact copies. Skips without a GPU.

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_support.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::DeviceMatrix;
using oft_cuda_test::Index;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;
using oft_cuda_test::throws_with;

constexpr Index kD = 192;  // divisible by every b below
constexpr std::int32_t kNone = -1;

/// One adapter as the tests build it: theta in P, R from the CPU operator.
template <class P>
struct HostAdapter {
  OpConfig config;
  std::vector<P> theta;
  std::vector<P> blocks;
};

template <class P>
HostAdapter<P> make_adapter(Index b, bool shared, Rng& rng) {
  HostAdapter<P> a;
  a.config = OpConfig{kD / b, b, shared, 4};
  a.theta = oft_cuda_test::random_theta<P>(a.config, 0.6, rng);
  a.blocks = oft_cuda_test::cpu_rotation_blocks<P>(a.config, a.theta);
  return a;
}

/// Checks y (n x d, from the GPU) against the CPU operator of every adapter on its own tokens,
/// and copies for the tokens of -1 and of identity slots. `adapters[s]` is null for identities.
template <class T, class P>
void expect_matches_cpu(const std::vector<T>& x, const std::vector<T>& y, Index n, Index d,
                        Index first_column, const std::vector<std::int32_t>& ids,
                        const std::vector<const HostAdapter<P>*>& adapters) {
  using namespace oft_cuda_test;
  for (std::size_t s = 0; s < adapters.size(); ++s) {
    std::vector<Index> tokens;
    for (Index t = 0; t < n; ++t)
      if (ids[static_cast<std::size_t>(t)] == static_cast<std::int32_t>(s)) tokens.push_back(t);
    if (tokens.empty()) continue;
    const HostAdapter<P>* a = adapters[s];
    SCOPED_TRACE("slot " + std::to_string(s));
    if (a == nullptr) continue;  // identity: checked with -1 below
    const Index full = a->config.features(), m = static_cast<Index>(tokens.size());
    // The CPU operator sees the whole layer's width; a shard's columns are zero-padded around it
    // (a block-diagonal R keeps them apart).
    std::vector<double> xs(static_cast<std::size_t>(m * full), 0.0), ys(xs.size());
    std::vector<double> actual(static_cast<std::size_t>(m * d));
    for (Index k = 0; k < m; ++k)
      for (Index j = 0; j < d; ++j) {
        const std::size_t at = static_cast<std::size_t>(tokens[k] * d + j);
        xs[static_cast<std::size_t>(k * full + first_column + j)] = to_double(x[at]);
        actual[static_cast<std::size_t>(k * d + j)] = to_double(y[at]);
      }
    const std::vector<double> theta = to_double(a->theta);
    const std::vector<double> ref_full = cpu_apply<double>(a->config, theta, {}, xs, m, false);
    const std::vector<double> ref_blocks = cpu_rotation_blocks<double>(a->config, theta);
    const std::vector<double> rt =
        rotation_tolerances(a->config, row_rho_bounds(a->config, a->theta), eps_of<P>());
    const ApplyMagnitudes mag_full = apply_magnitudes(a->config, {}, xs, m, ref_blocks, rt, false);
    const std::vector<double> bound_full = apply_bound<T>(mag_full, ref_full, a->config.b);
    std::vector<double> ref(actual.size()), bound(actual.size());
    for (Index k = 0; k < m; ++k)
      for (Index j = 0; j < d; ++j) {
        ref[static_cast<std::size_t>(k * d + j)] =
            ref_full[static_cast<std::size_t>(k * full + first_column + j)];
        bound[static_cast<std::size_t>(k * d + j)] =
            bound_full[static_cast<std::size_t>(k * full + first_column + j)];
      }
    EXPECT_TRUE(within_bound(actual, ref, bound, d));
  }
  for (Index t = 0; t < n; ++t) {
    const std::int32_t id = ids[static_cast<std::size_t>(t)];
    if (id != kNone && adapters[static_cast<std::size_t>(id)] != nullptr) continue;
    ASSERT_EQ(std::memcmp(&y[static_cast<std::size_t>(t * d)], &x[static_cast<std::size_t>(t * d)],
                          static_cast<std::size_t>(d) * sizeof(T)),
              0)
        << "token " << t << " (id " << id << ") is not a copy of its row";
  }
}

enum class Ids { Interleaved, Runs };

std::vector<std::int32_t> make_ids(Ids kind, Index n, std::int32_t slots, Rng& rng) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  if (kind == Ids::Interleaved) {
    for (auto& id : ids) id = static_cast<std::int32_t>(rng.index(slots + 1)) - 1;
  } else {
    Index t = 0;
    while (t < n) {
      const Index run = 1 + rng.index(300);
      const auto id = static_cast<std::int32_t>(rng.index(slots + 1)) - 1;
      for (Index k = 0; k < run && t < n; ++k, ++t) ids[static_cast<std::size_t>(t)] = id;
    }
  }
  return ids;
}

/// A bank holding `sizes` (b, shared) adapters and one identity slot, with its host mirror.
template <class T>
struct BankFixture {
  using P = oft::cuda_parameter_t<T>;
  using Bank = oft::AdapterBank<T, oft::cuda>;
  std::vector<HostAdapter<P>> host;
  std::vector<const HostAdapter<P>*> by_slot;
  std::unique_ptr<Bank> bank;

  BankFixture(const std::vector<std::pair<Index, bool>>& sizes, Rng& rng,
              oft::FeatureRange shard = {0, kD}) {
    bank = std::make_unique<Bank>(kD, 8, shard);
    host.reserve(sizes.size());
    for (const auto& [b, shared] : sizes) host.push_back(make_adapter<P>(b, shared, rng));
    for (std::size_t k = 0; k < host.size(); ++k) {
      if (k == 1) {  // an identity between the rotations
        EXPECT_EQ(bank->add_identity(), static_cast<Index>(by_slot.size()));
        by_slot.push_back(nullptr);
      }
      const HostAdapter<P>& a = host[k];
      EXPECT_EQ(bank->add(oft_cuda_test::spec_of(a.config), a.blocks.data()),
                static_cast<Index>(by_slot.size()));
      by_slot.push_back(&a);
    }
  }
};

struct Case {
  Index n;
  Ids ids;
  oft::BankRouting routing;
  bool in_place;
  bool host_ids;
  Index pad;  ///< ld = width + pad
};

template <class T>
void run_case(BankFixture<T>& f, const Case& c, Rng& rng, Index first_column = 0,
              Index width = kD) {
  using namespace oft_cuda_test;
  const Index n = c.n, ld = width + c.pad;
  SCOPED_TRACE("N=" + std::to_string(n) + (c.ids == Ids::Runs ? " runs" : " interleaved") +
               " routing=" + std::to_string(static_cast<int>(c.routing)) +
               (c.in_place ? " in place" : "") + (c.host_ids ? " host ids" : " device ids") +
               " ld=w+" + std::to_string(c.pad));
  const std::vector<T> x = random_values<T>(n * width, rng);
  const std::vector<std::int32_t> ids =
      make_ids(c.ids, n, static_cast<std::int32_t>(f.by_slot.size()), rng);
  const T sentinel = from_double<T>(-7.5);
  DeviceMatrix<T> x_dev(x, n, width, ld, sentinel);
  DeviceMatrix<T> y_dev(std::vector<T>(static_cast<std::size_t>(n * width), sentinel), n, width, ld,
                        sentinel);
  DeviceArray<std::int32_t> ids_dev(ids);
  const std::size_t bytes = f.bank->workspace_bytes(n);
  DeviceArray<unsigned char> workspace(bytes);
  const oft::DeviceMatrixView<T> out = c.in_place ? x_dev.view() : y_dev.view();
  Stream stream;
  const oft::BankRouting used =
      c.host_ids
          ? f.bank->apply(x_dev.cview(), out, ids, workspace.data(), bytes, stream.get(), c.routing)
          : f.bank->apply(x_dev.cview(), out, ids_dev.data(), n, workspace.data(), bytes,
                          stream.get(), c.routing);
  if (c.routing != oft::BankRouting::Automatic) EXPECT_EQ(used, c.routing);
  EXPECT_NE(used, oft::BankRouting::Automatic);
  stream.sync();
  if (n > 0) EXPECT_EQ(f.bank->first_bad_token(workspace.data(), stream.get()), -1);
  const std::vector<T> y = c.in_place ? x_dev.dense() : y_dev.dense();
  std::vector<const HostAdapter<typename BankFixture<T>::P>*> adapters = f.by_slot;
  expect_matches_cpu<T, typename BankFixture<T>::P>(x, y, n, width, first_column, ids, adapters);
  EXPECT_TRUE(x_dev.padding_intact());
  if (!c.in_place) {
    EXPECT_TRUE(y_dev.padding_intact());
    EXPECT_TRUE(bitwise_equal(x_dev.dense(), x)) << "apply modified its input";
  }
}

std::vector<Case> cases() {
  using R = oft::BankRouting;
  std::vector<Case> out;
  for (Index n : {Index(1), Index(7), Index(300), Index(2049)})
    for (Ids ids : {Ids::Interleaved, Ids::Runs})
      for (R routing : {R::Automatic, R::Contiguous, R::Gathered})
        out.push_back(Case{n, ids, routing, n == 300, n == 7, n == 2049 ? Index(5) : Index(0)});
  out.push_back(Case{0, Ids::Interleaved, R::Gathered, false, false, 0});
  out.push_back(Case{64, Ids::Interleaved, R::Contiguous, true, true, 3});
  return out;
}

/// Mixed block sizes: CUDA cores for every T (a b that is no multiple of 16 is resident).
template <class T>
void check_mixed(std::uint64_t seed) {
  Rng rng(seed);
  BankFixture<T> f({{3, false}, {8, false}, {16, true}, {64, false}, {32, false}}, rng);
  EXPECT_FALSE(f.bank->use_tensor_cores());
  for (const Case& c : cases()) run_case(f, c, rng);
}

/// Tensor-core block sizes only: tensor cores for 16-bit T on a device with WMMA for T.
template <class T>
void check_tensor_sizes(std::uint64_t seed) {
  Rng rng(seed);
  BankFixture<T> f({{16, false}, {32, false}, {48, true}, {64, false}}, rng);
  if constexpr (oft::is_half_precision_v<T>) {
    int device = 0, major = 0;
    oft_cuda_test::cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    oft_cuda_test::cuda_check(
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "attribute");
    const int needed = std::is_same_v<T, __nv_bfloat16> ? 8 : 7;
    if (major >= needed) EXPECT_TRUE(f.bank->use_tensor_cores());
  } else {
    EXPECT_FALSE(f.bank->use_tensor_cores());
  }
  for (const Case& c : cases()) run_case(f, c, rng);
}

/// Two shards of a row-parallel layer: each bank holds its columns; together they equal the
/// whole layer's CPU operator (checked per shard with the zero-padded reference).
template <class T>
void check_shards(std::uint64_t seed) {
  Rng rng(seed);
  for (const oft::FeatureRange shard : {oft::FeatureRange{0, 96}, oft::FeatureRange{96, 96}}) {
    SCOPED_TRACE("shard [" + std::to_string(shard.first) + ", " +
                 std::to_string(shard.first + shard.count) + ")");
    Rng same(seed);  // both shards hold the same adapters
    BankFixture<T> f({{8, false}, {32, false}, {16, true}}, same, shard);
    for (const Case& c : {Case{300, Ids::Runs, oft::BankRouting::Contiguous, false, false, 0},
                          Case{77, Ids::Interleaved, oft::BankRouting::Gathered, true, false, 2}})
      run_case(f, c, rng, shard.first, shard.count);
  }
}

class CudaAdapterBank : public oft_cuda_test::CudaTest {};

TEST_F(CudaAdapterBank, MixedBlockSizesFloat) { check_mixed<float>(11); }
TEST_F(CudaAdapterBank, MixedBlockSizesDouble) { check_mixed<double>(12); }
TEST_F(CudaAdapterBank, MixedBlockSizesHalf) { check_mixed<__half>(13); }
TEST_F(CudaAdapterBank, MixedBlockSizesBfloat16) { check_mixed<__nv_bfloat16>(14); }
TEST_F(CudaAdapterBank, TensorCoreBlockSizesFloat) { check_tensor_sizes<float>(21); }
TEST_F(CudaAdapterBank, TensorCoreBlockSizesHalf) { check_tensor_sizes<__half>(22); }
TEST_F(CudaAdapterBank, TensorCoreBlockSizesBfloat16) { check_tensor_sizes<__nv_bfloat16>(23); }
TEST_F(CudaAdapterBank, ShardsFloat) { check_shards<float>(31); }
TEST_F(CudaAdapterBank, ShardsBfloat16) { check_shards<__nv_bfloat16>(32); }

/// An adapter taken from a GPU BlockOrthogonal holds exactly that operator's rotation blocks, so
/// the bank's apply equals the operator's apply (same R, same CUDA-core product order) bit for
/// bit in float.
TEST_F(CudaAdapterBank, AddFromGpuOperatorMatchesItsApply) {
  using Op = oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda>;
  Rng rng(41);
  const OpConfig config{kD / 8, 8, false, 4};
  const std::vector<float> theta = oft_cuda_test::random_theta<float>(config, 0.6, rng);
  DeviceArray<float> theta_dev(theta);
  Op op(oft_cuda_test::spec_of(config), oft::CayleyNeumann{4});
  op.set_generators(
      oft::DeviceMatrixView<const float>(theta_dev.data(), config.generators(), config.packed()),
      nullptr);
  oft::AdapterBank<float, oft::cuda> bank(kD, 2);
  ASSERT_EQ(bank.add(op), 0);
  EXPECT_EQ(bank.block_size(0), 8);
  EXPECT_EQ(bank.adapter_bytes(0), static_cast<std::size_t>(kD * 8) * sizeof(float));

  const Index n = 50;
  const std::vector<float> x = oft_cuda_test::random_values<float>(n * kD, rng);
  DeviceArray<float> x_dev(x), y_bank(static_cast<std::size_t>(n * kD)),
      y_op(static_cast<std::size_t>(n * kD));
  DeviceArray<std::int32_t> ids(std::vector<std::int32_t>(static_cast<std::size_t>(n), 0));
  DeviceArray<unsigned char> workspace(bank.workspace_bytes(n));
  bank.apply(oft::DeviceMatrixView<const float>(x_dev.data(), n, kD),
             oft::DeviceMatrixView<float>(y_bank.data(), n, kD), ids.data(), n, workspace.data(),
             workspace.size(), nullptr, oft::BankRouting::Contiguous);
  op.apply(oft::DeviceMatrixView<const float>(x_dev.data(), n, kD),
           oft::DeviceMatrixView<float>(y_op.data(), n, kD), nullptr);
  oft_cuda_test::sync_device("apply");
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(y_bank.download(), y_op.download()));
}

// ---------------------------------------------------------------------------------------------
// Bad input: std::invalid_argument naming the values, before anything is written.
// ---------------------------------------------------------------------------------------------

class CudaAdapterBankErrors : public oft_cuda_test::CudaTest {
 protected:
  using Bank = oft::AdapterBank<float, oft::cuda>;
  static constexpr Index kN = 6;
  static constexpr float kSentinel = -12345.5f;

  void SetUp() override {
    oft_cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    Rng rng(51);
    adapter = make_adapter<float>(8, false, rng);
    bank = std::make_unique<Bank>(kD, 2);
    ASSERT_EQ(bank->add(oft_cuda_test::spec_of(adapter.config), adapter.blocks.data()), 0);
    x = DeviceArray<float>(oft_cuda_test::random_values<float>(kN * kD, rng));
    y = DeviceArray<float>(std::vector<float>(static_cast<std::size_t>(kN * kD), kSentinel));
    workspace = DeviceArray<unsigned char>(bank->workspace_bytes(kN));
  }
  oft::DeviceMatrixView<const float> xv(Index cols = kD) const {
    return oft::DeviceMatrixView<const float>(x.data(), kN, cols);
  }
  oft::DeviceMatrixView<float> yv(Index cols = kD) const {
    return oft::DeviceMatrixView<float>(y.data(), kN, cols);
  }
  void expect_untouched() const {
    oft_cuda_test::sync_device();
    EXPECT_TRUE(oft_cuda_test::bitwise_equal(
        y.download(), std::vector<float>(static_cast<std::size_t>(kN * kD), kSentinel)));
  }

  HostAdapter<float> adapter;
  std::unique_ptr<Bank> bank;
  DeviceArray<float> x, y;
  DeviceArray<unsigned char> workspace;
};

TEST_F(CudaAdapterBankErrors, HostIdsNamingNoAdapter) {
  for (const std::int32_t bad : {1, 2, -2}) {
    std::vector<std::int32_t> ids(kN, 0);
    ids[2] = bad;
    EXPECT_TRUE(throws_with<std::invalid_argument>(
        [&] { bank->apply(xv(), yv(), ids, workspace.data(), workspace.size(), nullptr); },
        {"adapter ids[2]=" + std::to_string(bad), "names no adapter", "capacity 2"}));
  }
  expect_untouched();
}

TEST_F(CudaAdapterBankErrors, DeviceIdsNamingNoAdapterWriteNothing) {
  using R = oft::BankRouting;
  for (const R routing : {R::Contiguous, R::Gathered}) {
    std::vector<std::int32_t> ids(kN, 0);
    ids[4] = 5;
    ids[3] = 1;  // empty slot: the smallest bad token is 3
    DeviceArray<std::int32_t> ids_dev(ids);
    bank->apply(xv(), yv(), ids_dev.data(), kN, workspace.data(), workspace.size(), nullptr,
                routing);
    EXPECT_EQ(bank->first_bad_token(workspace.data(), nullptr), 3);
    expect_untouched();
  }
}

TEST_F(CudaAdapterBankErrors, Shapes) {
  const std::vector<std::int32_t> ids(kN, 0);
  DeviceArray<std::int32_t> ids_dev(ids);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        bank->apply(xv(kD - 8), yv(kD - 8), ids, workspace.data(), workspace.size(), nullptr);
      },
      {"X has 184 columns", "shard width 192"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        bank->apply(xv(), yv(), ids_dev.data(), kN - 1, workspace.data(), workspace.size(),
                    nullptr);
      },
      {"adapter ids have 5 entries", "one per row of X (6)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { bank->apply(xv(), yv(), ids.data(), kN, workspace.data(), workspace.size(), nullptr); },
      {"adapter ids", "host memory"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { bank->apply(xv(), yv(), ids, workspace.data(), 16, nullptr); },
      {"workspace of 16 bytes", "workspace_bytes(6)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        bank->apply(xv(), oft::DeviceMatrixView<float>(x.data() + 1, kN, kD), ids, workspace.data(),
                    workspace.size(), nullptr);
      },
      {"Y partially overlaps X"}));
  expect_untouched();
}

TEST_F(CudaAdapterBankErrors, Slots) {
  const OpConfig other{kD / 8 + 1, 8, false, 4};
  std::vector<float> blocks(static_cast<std::size_t>(other.generators() * 64), 0.0f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { bank->add(oft_cuda_test::spec_of(other), blocks.data()); },
      {"adapter has d=200", "the bank's layer has d=192"}));
  Bank sharded(kD, 2, oft::FeatureRange{32, 96});
  const std::vector<float> wide(static_cast<std::size_t>(3 * 64 * 64), 0.0f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        sharded.add(oft::BlockSpec{3, 64, false}, wide.data());
      },
      {"adapter block size b=64 does not divide the bank's shard [32, 128)"}));
  std::vector<float> nan_blocks = adapter.blocks;
  nan_blocks[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(throws_with<std::domain_error>(
      [&] { bank->add(oft_cuda_test::spec_of(adapter.config), nan_blocks.data()); },
      {"non-finite"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { bank->remove(1); },
                                                 {"remove: slot 1 holds no adapter"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { bank->remove(2); },
                                                 {"remove: slot 2 is out of range [0, 2)"}));
  EXPECT_EQ(bank->add_identity(), 1);
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { bank->add_identity(); },
                                                 {"adapter bank is full (capacity 2)"}));
  EXPECT_EQ(bank->size(), 2);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [] {
        Bank(kD, 4, oft::FeatureRange{100, 100});
      },
      {"shard [100, 200) is not a non-empty range of the layer's features [0, 192)"}));
}

/// replace and remove take effect for the applies enqueued after them.
TEST_F(CudaAdapterBankErrors, ReplaceAndRemove) {
  Rng rng(61);
  const HostAdapter<float> other = make_adapter<float>(16, true, rng);
  bank->replace(0, oft_cuda_test::spec_of(other.config), other.blocks.data());
  EXPECT_EQ(bank->block_size(0), 16);
  const std::vector<std::int32_t> ids(kN, 0);
  bank->apply(xv(), yv(), ids, workspace.data(), workspace.size(), nullptr);
  oft_cuda_test::sync_device();
  const std::vector<float> xs = x.download(), ys = y.download();
  expect_matches_cpu<float, float>(xs, ys, kN, kD, 0, ids,
                                   std::vector<const HostAdapter<float>*>{&other});
  bank->remove(0);
  EXPECT_EQ(bank->size(), 0);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { bank->apply(xv(), yv(), ids, workspace.data(), workspace.size(), nullptr); },
      {"adapter ids[0]=0 names no adapter"}));
}

}  // namespace

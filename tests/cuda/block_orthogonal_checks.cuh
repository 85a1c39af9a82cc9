#pragma once
/// \file block_orthogonal_checks.cuh
/// The checks of BlockOrthogonal<T, Policy, oft::cuda> against the CPU backend, as templates; the
/// per-type test files (test_cuda_block_orthogonal_<type>.cu) instantiate them, one activation
/// type per translation unit to keep nvcc's compile time down.
///
/// Every case: random inputs exactly representable in T (so the double CPU reference sees the
/// same values), r = 3 blocks, b in {1, 2, 3, 8, 16, 32, 64}, shared and unshared generators.
///
/// Tolerances (cuda_test_support.cuh states the policy):
///  - rotation blocks: rotation_tolerance (c * n * eps * scale: 2 (k + 2) b eps P(rho) for
///    Neumann, 4 b eps sqrt(1 + rho^2) for exact Cayley), max entry, eps of the parameter type;
///  - apply / apply_transposed / dX: apply_bound (rigorous: 2 gamma_b |X| |R'| plus the rotation
///    error for float/double; half an ulp of T at the value plus the fp32-level error for 16-bit);
///  - dtheta per generator: 4 eps_P (n_g + b) K ||A_g||_F, A_g = sum_i |X_i|^T |dY_i| over the
///    active blocks of g, n_g their token count, K the VJP's amplification
///    (neumann_derivative_scale / cayley_derivative_scale). Derivation: G_g is a length-n_g sum
///    of exact products (inputs exact in T, products in P), so |dG| <= gamma_{n_g} A_g entrywise
///    for each evaluation (u = eps_P, not eps_P / 2, covering tensor-core accumulation), hence
///    ||dG||_F <= n_g eps_P ||A_g||_F; the VJP amplifies that by K and adds its own rounding of a
///    few b eps_P K ||G||_F <= b eps_P K ||A_g||_F; packing adds sqrt 2. c = 4 covers both
///    evaluations and the packing: the CPU suite's bound, with P's epsilon.

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_support.cuh"

namespace oft_cuda_test {

inline constexpr Index kBlocks = 3;
inline const std::vector<Index> kBlockSizes = {1, 2, 3, 8, 16, 32, 64};
inline const std::vector<Index> kTokenCounts = {0, 1, 7, 128, 1000};

/// A GPU operator with its generators uploaded (stream 0, synchronized).
template <class T, class Policy>
struct GpuOperator {
  using P = oft::cuda_parameter_t<T>;
  using Op = oft::BlockOrthogonal<T, Policy, oft::cuda>;

  OpConfig config;
  std::vector<P> theta;
  DeviceArray<P> theta_device;
  Op op;

  GpuOperator(const OpConfig& c, const std::vector<P>& t)
      : config(c), theta(t), theta_device(t), op(spec_of(c), make_policy<Policy>(c)) {
    op.set_generators(theta_view(), nullptr);
    sync_device("set_generators");
  }
  oft::DeviceMatrixView<const P> theta_view() const {
    return oft::DeviceMatrixView<const P>(theta_device.data(), config.generators(),
                                          config.packed());
  }
  std::vector<double> theta_double() const { return to_double(theta); }
};

// ---------------------------------------------------------------------------------------------
// Rotation blocks: R_g from the GPU's theta -> R kernel against the CPU operator's R_g, both in
// the parameter type P (float or double).
// ---------------------------------------------------------------------------------------------

enum class Regime { Zero, Tiny, Random, NearOne, Large };

inline std::string regime_name(Regime r) {
  switch (r) {
    case Regime::Zero: return "zero";
    case Regime::Tiny: return "tiny";
    case Regime::Random: return "random0.6";
    case Regime::NearOne: return "near0.95";
    case Regime::Large: return "large3.0";
  }
  return "?";
}

template <class P>
std::vector<P> regime_theta(const OpConfig& config, Regime regime, Rng& rng) {
  switch (regime) {
    case Regime::Zero:
      return std::vector<P>(static_cast<std::size_t>(config.generators() * config.packed()), P(0));
    case Regime::Tiny: return random_theta<P>(config, 1e-8, rng);
    case Regime::Random: return random_theta<P>(config, 0.6, rng);
    case Regime::NearOne: return random_theta<P>(config, 0.95, rng);
    case Regime::Large: return random_theta<P>(config, 3.0, rng);
  }
  return {};
}

/// Zero theta gives R = I exactly (Neumann: I + 2*0 + ... ; exact: (I + 0)(I - 0)^-1 = I, the
/// elimination on I is exact); the other regimes match the CPU operator within
/// rotation_tolerance. `terms` lists the Cayley-Neumann k to test (kExactCayley for exact).
template <class T, class Policy>
void check_rotation_blocks(const std::vector<int>& terms, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  static_assert(std::is_same_v<T, P>, "rotation blocks are checked with T = P");
  Rng rng(seed);
  for (int k : terms)
    for (Index b : kBlockSizes)
      for (bool shared : {false, true})
        for (Regime regime :
             {Regime::Zero, Regime::Tiny, Regime::Random, Regime::NearOne, Regime::Large}) {
          const OpConfig config{kBlocks, b, shared, k};
          // rho = 3 only for exact Cayley: the Neumann series is meant for rho < 1.
          if (regime == Regime::Large && !config.exact()) continue;
          SCOPED_TRACE(describe(config) + " " + regime_name(regime) + " " + type_name<T>());
          GpuOperator<T, Policy> gpu(config, regime_theta<P>(config, regime, rng));
          const std::vector<P> actual = gpu.op.rotation_blocks_host(nullptr);
          const std::vector<P> expected = cpu_rotation_blocks<P>(config, gpu.theta);
          ASSERT_EQ(actual.size(), expected.size());
          if (regime == Regime::Zero) {
            std::vector<P> identity(expected.size(), P(0));
            for (Index g = 0; g < config.generators(); ++g)
              for (Index p = 0; p < b; ++p)
                identity[static_cast<std::size_t>((g * b + p) * b + p)] = P(1);
            EXPECT_TRUE(bitwise_equal(actual, identity));
            continue;
          }
          const std::vector<double> rt = rotation_tolerances(
              config, row_rho_bounds(config, gpu.theta), eps_of<P>());
          std::vector<double> bound(expected.size());
          for (std::size_t e = 0; e < bound.size(); ++e)
            bound[e] = rt[e / static_cast<std::size_t>(b * b)];
          EXPECT_TRUE(within_bound(to_double(actual), to_double(expected), bound, b));
        }
}

// ---------------------------------------------------------------------------------------------
// apply / apply_transposed.
// ---------------------------------------------------------------------------------------------

struct ApplyCase {
  Index n;
  Index x_pad;  ///< ld_x = d + x_pad
  Index y_pad;  ///< ld_y = d + y_pad (ignored in place)
  bool in_place;
  bool masked;
  bool transposed;
  Index offset = 0;  ///< x and y start this many elements into their allocations
};

inline std::string describe(const ApplyCase& c) {
  return std::string(c.transposed ? "apply_transposed" : "apply") + " N=" + std::to_string(c.n) +
         " ld_x=d+" + std::to_string(c.x_pad) +
         (c.in_place ? " in place" : " ld_y=d+" + std::to_string(c.y_pad)) +
         (c.masked ? " masked" : "") +
         (c.offset != 0 ? " offset " + std::to_string(c.offset) : std::string());
}

inline std::vector<ApplyCase> apply_cases() {
  std::vector<ApplyCase> cases;
  for (bool transposed : {false, true}) {
    for (Index n : kTokenCounts) cases.push_back({n, 0, 0, false, false, transposed});
    cases.push_back({128, 5, 3, false, true, transposed});    // strided x and y, mask
    cases.push_back({128, 0, 0, true, false, transposed});    // in place
    cases.push_back({1000, 7, 7, true, true, transposed});    // in place, strided, mask
    cases.push_back({7, 0, 11, false, true, transposed});     // strided y only
    // Leading dimensions that keep rows 16-byte aligned relative to the base, but a base one
    // element past an aligned address: vectorized loads/stores must notice.
    cases.push_back({128, 8, 8, false, false, transposed, 1});
    cases.push_back({300, 8, 0, true, true, transposed, 3});  // in place, offset base
  }
  return cases;
}

/// NaN as T: padding of inputs, so a kernel that reads it corrupts the results visibly.
template <class T>
T input_padding() {
  return from_double<T>(std::numeric_limits<double>::quiet_NaN());
}
/// A finite sentinel for output padding and unwritten outputs.
template <class T>
T output_sentinel() {
  return from_double<T>(-123.0);
}

template <class T, class Policy>
void run_apply_case(GpuOperator<T, Policy>& gpu, const std::vector<double>& ref_blocks,
                    const std::vector<double>& rt, const ApplyCase& c, Rng& rng) {
  const OpConfig& config = gpu.config;
  const Index d = config.features(), n = c.n;
  SCOPED_TRACE(describe(c));
  const std::vector<unsigned char> mask =
      c.masked ? random_mask(config.blocks, rng) : std::vector<unsigned char>();
  const std::vector<T> x = random_values<T>(n * d, rng);
  const std::vector<double> xd = to_double(x);

  DeviceMatrix<T> x_dev(x, n, d, d + c.x_pad,
                        c.in_place ? output_sentinel<T>() : input_padding<T>(), c.offset);
  DeviceMatrix<T> y_dev(std::vector<T>(static_cast<std::size_t>(n * d), output_sentinel<T>()), n,
                        d, d + c.y_pad, output_sentinel<T>(), c.offset);
  gpu.op.set_active_blocks(mask, nullptr);
  const oft::DeviceMatrixView<T> y_view = c.in_place ? x_dev.view() : y_dev.view();
  if (c.transposed)
    gpu.op.apply_transposed(x_dev.cview(), y_view, nullptr);
  else
    gpu.op.apply(x_dev.cview(), y_view, nullptr);
  sync_device("apply");
  gpu.op.set_active_blocks({}, nullptr);

  const std::vector<T> y = c.in_place ? x_dev.dense() : y_dev.dense();
  const std::vector<double> ref =
      cpu_apply<double>(config, gpu.theta_double(), mask, xd, n, c.transposed);
  const ApplyMagnitudes mag =
      apply_magnitudes(config, mask, xd, n, ref_blocks, rt, c.transposed);
  EXPECT_TRUE(within_bound(to_double(y), ref, apply_bound<T>(mag, ref, config.b), d));
  // Inactive blocks are the identity: a bit-exact copy of X.
  for (Index i = 0; i < config.blocks; ++i) {
    if (block_active(mask, i)) continue;
    for (Index t = 0; t < n; ++t)
      for (Index j = 0; j < config.b; ++j) {
        const std::size_t at = static_cast<std::size_t>(t * d + i * config.b + j);
        ASSERT_EQ(std::memcmp(&y[at], &x[at], sizeof(T)), 0)
            << "inactive block " << i << " token " << t << " column " << j << " is not a copy";
      }
  }
  EXPECT_TRUE(x_dev.padding_intact());
  if (!c.in_place) {
    EXPECT_TRUE(y_dev.padding_intact());
    EXPECT_TRUE(bitwise_equal(x_dev.dense(), x)) << "apply modified its input";
  }
}

/// apply and apply_transposed against the CPU operator for every block size, shared and
/// unshared, over apply_cases() (N in {0, 1, 7, 128, 1000}, strided views, in place, masks).
template <class T, class Policy>
void check_apply(int terms, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  for (Index b : kBlockSizes)
    for (bool shared : {false, true}) {
      const OpConfig config{kBlocks, b, shared, terms};
      SCOPED_TRACE(describe(config) + " " + type_name<T>());
      GpuOperator<T, Policy> gpu(config, random_theta<P>(config, 0.6, rng));
      const std::vector<double> ref_blocks = cpu_rotation_blocks<double>(config, gpu.theta_double());
      const std::vector<double> rt =
          rotation_tolerances(config, row_rho_bounds(config, gpu.theta), eps_of<P>());
      for (const ApplyCase& c : apply_cases()) run_apply_case(gpu, ref_blocks, rt, c, rng);
    }
}

/// Zero theta (and a fresh operator, which starts at R = I) apply as a bit-exact copy: every
/// output is x * 1 plus exact zeros, rounded to T exactly.
template <class T, class Policy>
void check_zero_theta_is_copy(int terms, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  for (Index b : kBlockSizes)
    for (bool shared : {false, true}) {
      const OpConfig config{kBlocks, b, shared, terms};
      SCOPED_TRACE(describe(config) + " " + type_name<T>());
      const Index d = config.features(), n = 37;
      const std::vector<T> x = random_values<T>(n * d, rng);
      const DeviceArray<T> x_dev(x);
      DeviceArray<T> y_dev(x.size());
      const oft::DeviceMatrixView<const T> xv(x_dev.data(), n, d);
      const oft::DeviceMatrixView<T> yv(y_dev.data(), n, d);
      // Fresh operator: identity blocks until set_generators.
      typename GpuOperator<T, Policy>::Op fresh(spec_of(config), make_policy<Policy>(config));
      fresh.apply(xv, yv, nullptr);
      sync_device("apply");
      EXPECT_TRUE(bitwise_equal(y_dev.download(), x)) << "fresh operator";
      const GpuOperator<T, Policy> zero(
          config, std::vector<P>(static_cast<std::size_t>(config.generators() * config.packed()),
                                 P(0)));
      for (bool transposed : {false, true}) {
        if (transposed)
          zero.op.apply_transposed(xv, yv, nullptr);
        else
          zero.op.apply(xv, yv, nullptr);
        sync_device("apply");
        EXPECT_TRUE(bitwise_equal(y_dev.download(), x)) << (transposed ? "transposed" : "apply");
      }
    }
}

// ---------------------------------------------------------------------------------------------
// backward.
// ---------------------------------------------------------------------------------------------

enum class Alias { None, DxIsDy, DxIsX };

struct BackwardCase {
  Index n;
  Index pad;          ///< ld of x, dy, dx = d + pad
  Index dtheta_pad;   ///< ld of dtheta = m + dtheta_pad
  bool masked;
  Alias alias;
  bool want_dx;
  bool want_dtheta;
  Index offset = 0;   ///< x, dy, dx start this many elements into their allocations
};

inline std::string describe(const BackwardCase& c) {
  std::string s = "backward N=" + std::to_string(c.n) + " ld=d+" + std::to_string(c.pad) +
                  " dtheta ld=m+" + std::to_string(c.dtheta_pad) + (c.masked ? " masked" : "");
  if (c.alias == Alias::DxIsDy) s += " dx==dy";
  if (c.alias == Alias::DxIsX) s += " dx==x";
  if (!c.want_dx) s += " no dx";
  if (!c.want_dtheta) s += " no dtheta";
  if (c.offset != 0) s += " offset " + std::to_string(c.offset);
  return s;
}

inline std::vector<BackwardCase> backward_cases() {
  std::vector<BackwardCase> cases;
  for (Index n : kTokenCounts) cases.push_back({n, 0, 0, false, Alias::None, true, true});
  cases.push_back({128, 5, 3, true, Alias::None, true, true});   // strided, mask
  cases.push_back({128, 0, 0, false, Alias::DxIsDy, true, true});
  cases.push_back({128, 3, 0, true, Alias::DxIsX, true, true});
  cases.push_back({1000, 0, 0, true, Alias::DxIsDy, true, true});
  cases.push_back({1000, 2, 0, false, Alias::DxIsX, true, true});
  cases.push_back({7, 0, 0, false, Alias::None, false, true});   // dtheta only
  cases.push_back({7, 0, 0, true, Alias::None, true, false});    // dx only (no workspace)
  cases.push_back({0, 0, 0, false, Alias::None, true, false});
  // 16-byte-aligned leading dimensions over a base that is not (vectorized paths).
  cases.push_back({128, 8, 0, false, Alias::None, true, true, 1});
  cases.push_back({300, 8, 0, true, Alias::DxIsDy, true, true, 5});
  return cases;
}

/// Per-generator dtheta bound (file comment): 4 eps_P (n_g + b) K(rho_g) ||A_g||_F.
template <class P>
std::vector<double> dtheta_bound(const OpConfig& config, const std::vector<unsigned char>& active,
                                 const std::vector<double>& x, const std::vector<double>& dy,
                                 Index n, const std::vector<double>& rho) {
  const Index b = config.b, d = config.features();
  std::vector<double> tol(static_cast<std::size_t>(config.generators()));
  for (Index g = 0; g < config.generators(); ++g) {
    std::vector<double> a(static_cast<std::size_t>(b * b), 0.0);
    Index terms = 0;
    for (Index i = 0; i < config.blocks; ++i) {
      if (config.generator_of(i) != g || !block_active(active, i)) continue;
      terms += n;
      for (Index t = 0; t < n; ++t)
        for (Index p = 0; p < b; ++p)
          for (Index q = 0; q < b; ++q)
            a[static_cast<std::size_t>(p * b + q)] +=
                std::abs(x[static_cast<std::size_t>(t * d + i * b + p)]) *
                std::abs(dy[static_cast<std::size_t>(t * d + i * b + q)]);
    }
    double frob = 0.0;
    for (double v : a) frob += v * v;
    tol[static_cast<std::size_t>(g)] = 4.0 * eps_of<P>() * static_cast<double>(terms + b) *
                                       derivative_scale(config, rho[static_cast<std::size_t>(g)]) *
                                       std::sqrt(frob);
  }
  return tol;
}

template <class T, class Policy>
void run_backward_case(GpuOperator<T, Policy>& gpu, const std::vector<double>& ref_blocks,
                       const std::vector<double>& rt, const std::vector<double>& rho,
                       const BackwardCase& c, Rng& rng) {
  using P = oft::cuda_parameter_t<T>;
  const OpConfig& config = gpu.config;
  const Index d = config.features(), n = c.n, m = config.packed(), gens = config.generators();
  SCOPED_TRACE(describe(c));
  const std::vector<unsigned char> mask =
      c.masked ? random_mask(config.blocks, rng) : std::vector<unsigned char>();
  const std::vector<T> x = random_values<T>(n * d, rng);
  const std::vector<T> dy = random_values<T>(n * d, rng);
  const std::vector<double> xd = to_double(x), dyd = to_double(dy);

  const Index ld = d + c.pad;
  // NaN padding of the inputs (also when dx aliases one): read padding would poison results.
  DeviceMatrix<T> x_dev(x, n, d, ld, input_padding<T>(), c.offset);
  DeviceMatrix<T> dy_dev(dy, n, d, ld, input_padding<T>(), c.offset);
  DeviceMatrix<T> dx_dev(std::vector<T>(static_cast<std::size_t>(n * d), output_sentinel<T>()),
                         n, d, ld, output_sentinel<T>(), c.offset);
  const P theta_sentinel = static_cast<P>(-123.0);
  DeviceMatrix<P> dtheta_dev(
      std::vector<P>(static_cast<std::size_t>(gens * m), theta_sentinel), gens, m,
      m + c.dtheta_pad, theta_sentinel);

  oft::DeviceMatrixView<T> dx_view;
  if (c.want_dx) {
    if (c.alias == Alias::DxIsDy)
      dx_view = dy_dev.view();
    else if (c.alias == Alias::DxIsX)
      dx_view = x_dev.view();
    else
      dx_view = dx_dev.view();
  }
  const oft::DeviceMatrixView<P> dtheta_view =
      c.want_dtheta ? dtheta_dev.view() : oft::DeviceMatrixView<P>();
  const std::size_t bytes = c.want_dtheta ? gpu.op.workspace_bytes(n) : 0;
  DeviceArray<unsigned char> workspace(bytes);

  gpu.op.set_active_blocks(mask, nullptr);
  gpu.op.backward(x_dev.cview(), dy_dev.cview(), dx_view, dtheta_view,
                  bytes > 0 ? workspace.data() : nullptr, bytes, nullptr);
  sync_device("backward");
  gpu.op.set_active_blocks({}, nullptr);

  std::vector<double> dx_ref, dtheta_ref;
  cpu_backward<double>(config, gpu.theta_double(), mask, xd, dyd, n, &dx_ref, &dtheta_ref);

  if (c.want_dx) {
    const std::vector<T> dx = c.alias == Alias::DxIsDy  ? dy_dev.dense()
                              : c.alias == Alias::DxIsX ? x_dev.dense()
                                                        : dx_dev.dense();
    // dX = dY R^T: the apply_transposed bound with dY as the input.
    const ApplyMagnitudes mag = apply_magnitudes(config, mask, dyd, n, ref_blocks, rt, true);
    EXPECT_TRUE(within_bound(to_double(dx), dx_ref, apply_bound<T>(mag, dx_ref, config.b), d))
        << "dX";
  } else {
    EXPECT_TRUE(bitwise_equal(dx_dev.dense(), std::vector<T>(static_cast<std::size_t>(n * d),
                                                             output_sentinel<T>())))
        << "dx was not requested but written";
  }
  if (c.want_dtheta) {
    EXPECT_TRUE(rows_within(to_double(dtheta_dev.dense()), dtheta_ref, m,
                            dtheta_bound<P>(config, mask, xd, dyd, n, rho)))
        << "dtheta";
    EXPECT_TRUE(dtheta_dev.padding_intact());
  } else {
    EXPECT_TRUE(bitwise_equal(dtheta_dev.dense(),
                              std::vector<P>(static_cast<std::size_t>(gens * m), theta_sentinel)));
  }
  // Inputs that are not the dx output stay untouched, padding included.
  if (c.alias != Alias::DxIsX || !c.want_dx) EXPECT_TRUE(bitwise_equal(x_dev.dense(), x)) << "x";
  if (c.alias != Alias::DxIsDy || !c.want_dx)
    EXPECT_TRUE(bitwise_equal(dy_dev.dense(), dy)) << "dy";
  EXPECT_TRUE(x_dev.padding_intact());
  EXPECT_TRUE(dy_dev.padding_intact());
  EXPECT_TRUE(dx_dev.padding_intact());
}

/// backward (dX and dtheta) against the CPU operator for every block size, shared and unshared,
/// over backward_cases() (N in {0, 1, 7, 128, 1000}, strides, masks, dx == dy, dx == x, either
/// output skipped).
template <class T, class Policy>
void check_backward(int terms, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  for (Index b : kBlockSizes)
    for (bool shared : {false, true}) {
      const OpConfig config{kBlocks, b, shared, terms};
      SCOPED_TRACE(describe(config) + " " + type_name<T>());
      GpuOperator<T, Policy> gpu(config, random_theta<P>(config, 0.6, rng));
      const std::vector<double> ref_blocks = cpu_rotation_blocks<double>(config, gpu.theta_double());
      const std::vector<double> rho = row_rho_bounds(config, gpu.theta);
      const std::vector<double> rt = rotation_tolerances(config, rho, eps_of<P>());
      for (const BackwardCase& c : backward_cases())
        run_backward_case(gpu, ref_blocks, rt, rho, c, rng);
    }
}

/// use_tensor_cores() is true exactly for 16-bit T with b % 16 == 0 and b <= 64 on a device
/// with WMMA for T (sm_70 for half, sm_80 for bf16; the suite's own build targets sm_90, so on
/// the H100/H200 this is every such b). The decision with made-up devices is tested on the
/// host (test_cuda_host_logic.cu).
template <class T>
void check_tensor_core_selection() {
  const oft::detail::cuda::DeviceInfo device = oft::detail::cuda::query_device("test");
  const bool device_has_wmma =
      device.compute_capability >= oft::detail::cuda::tensor_core_min_arch<T>();
  using P = oft::cuda_parameter_t<T>;
  for (Index b : {1, 2, 3, 8, 15, 16, 24, 32, 48, 64, 80}) {
    const OpConfig config{2, b, false, 4};
    // b = 80 in double needs more shared memory for the generator kernels than Hopper's 227 KiB
    // (the first GPU run found this): there the constructor must refuse, naming the largest b.
    if (oft::detail::cuda::generator_shared_bytes<P>(b, false) > device.max_shared_bytes) {
      EXPECT_THROW((oft::BlockOrthogonal<T, oft::CayleyNeumann, oft::cuda>(
                       spec_of(config), oft::CayleyNeumann{4})),
                   std::invalid_argument)
          << type_name<T>() << " b=" << b;
      continue;
    }
    const oft::BlockOrthogonal<T, oft::CayleyNeumann, oft::cuda> op(spec_of(config),
                                                                    oft::CayleyNeumann{4});
    const bool expected =
        oft::is_half_precision_v<T> && b % 16 == 0 && b <= 64 && device_has_wmma;
    EXPECT_EQ(op.use_tensor_cores(), expected)
        << type_name<T>() << " b=" << b << " sm_" << device.compute_capability;
  }
}

}  // namespace oft_cuda_test

/// The tests every activation type gets, in a fixture `Suite` (derived from CudaTest) for type T.
#define OFT_CUDA_BLOCK_ORTHOGONAL_TESTS(Suite, T, seed)                                          \
  TEST_F(Suite, ZeroThetaIsBitExactCopy) {                                                      \
    oft_cuda_test::check_zero_theta_is_copy<T, oft::CayleyNeumann>(4, (seed) + 1);               \
    oft_cuda_test::check_zero_theta_is_copy<T, oft::ExactCayley>(oft_cuda_test::kExactCayley,    \
                                                                 (seed) + 2);                    \
  }                                                                                              \
  TEST_F(Suite, ApplyMatchesCpuExactCayley) {                                                    \
    oft_cuda_test::check_apply<T, oft::ExactCayley>(oft_cuda_test::kExactCayley, (seed) + 3);    \
  }                                                                                              \
  TEST_F(Suite, ApplyMatchesCpuNeumannK4) {                                                      \
    oft_cuda_test::check_apply<T, oft::CayleyNeumann>(4, (seed) + 4);                            \
  }                                                                                              \
  TEST_F(Suite, BackwardMatchesCpuExactCayley) {                                                 \
    oft_cuda_test::check_backward<T, oft::ExactCayley>(oft_cuda_test::kExactCayley, (seed) + 5); \
  }                                                                                              \
  TEST_F(Suite, BackwardMatchesCpuNeumannK0) {                                                   \
    oft_cuda_test::check_backward<T, oft::CayleyNeumann>(0, (seed) + 6);                         \
  }                                                                                              \
  TEST_F(Suite, BackwardMatchesCpuNeumannK3) {                                                   \
    oft_cuda_test::check_backward<T, oft::CayleyNeumann>(3, (seed) + 7);                         \
  }                                                                                              \
  TEST_F(Suite, BackwardMatchesCpuNeumannK4) {                                                   \
    oft_cuda_test::check_backward<T, oft::CayleyNeumann>(4, (seed) + 8);                         \
  }                                                                                              \
  TEST_F(Suite, TensorCorePathSelection) { oft_cuda_test::check_tensor_core_selection<T>(); }

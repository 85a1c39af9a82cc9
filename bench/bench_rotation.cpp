/// \file bench_rotation.cpp
/// The block-diagonal rotation, float, OpenMP default threads:
///
///   BM_Apply/b/d/N      Y = X R in place (Y = X)                           2 N d b flops
///   BM_Backward/b/d/N   dX = dY R^T in place (dX = dY) and dtheta         4 N d b flops
///                       (fused G = X^T dY, then the generator VJP)
///   BM_ApplyOutOfPlace  Y = X R into a separate Y, for comparison
///   BM_SetGenerators/<policy>   theta -> R alone (O(r b^3), no counters)
///   BM_RotationStep/<policy>    one training step of the rotation: set_generators(theta),
///                               Y = X R (out of place: X is kept for backward),
///                               backward(X, dY -> dX in place, dtheta)
///
/// The grid is b in {8..128} x d in {1024, 4096} x N in {1, 16, 2048}; the per-policy benchmarks
/// run at d=4096, b=32, N=2048. More step shapes: OFT_BENCH_STEP_SHAPES="dxbxN,dxbxN" (used by
/// compare_torch.py), more Neumann k: OFT_BENCH_STEP_K="5,8".
///
/// Every result is checked once per shape, outside the timed loop, against a plain Eigen
/// reference (per-block products in double); a mismatch skips the benchmark with an error.
/// Buffers are allocated and touched before timing and reused across iterations.

#include <algorithm>
#include <array>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>

#include "bench_common.hpp"

namespace {

using namespace oft_bench;
using Scalar = float;

constexpr double kRho = 0.5;  // spectral norm of every generator (see bench_common.hpp)

/// Activations for one (d, N), kept alive between benchmark calls of the same shape so that
/// google-benchmark's repeated calls do not pay for fresh pages (first touch is ~2.7 GB/s here).
using Bf16Matrix = Eigen::Matrix<oft::bfloat16, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Activations {
  Index d = 0, n = 0;
  Matrix<Scalar> x, dy, y;
  Bf16Matrix x_bf16, dy_bf16, y_bf16;  // the same values rounded to bfloat16
};

Activations& activations(Index d, Index n) {
  static Activations cache;
  if (cache.d != d || cache.n != n) {
    cache = Activations{};  // free the previous shape first
    cache.d = d;
    cache.n = n;
    cache.x = random_matrix<Scalar>(n, d, 1);
    cache.dy = random_matrix<Scalar>(n, d, 2);
    cache.y = random_matrix<Scalar>(n, d, 3);
    cache.x_bf16 = cache.x.cast<oft::bfloat16>();
    cache.dy_bf16 = cache.dy.cast<oft::bfloat16>();
    cache.y_bf16 = cache.y.cast<oft::bfloat16>();
  }
  return cache;
}

/// Reference for one row t: y_t = x_t R (per block, double).
template <class Op>
Eigen::RowVectorXd reference_row(const Op& rot, const Eigen::RowVectorXd& x) {
  const Index b = rot.spec().block_size;
  Eigen::RowVectorXd y(x.size());
  for (Index i = 0; i < rot.spec().blocks; ++i)
    y.segment(i * b, b) = x.segment(i * b, b) * rot.block(i).template cast<double>();
  return y;
}

/// Checks apply (rows 0 and N-1) and backward (dX rows, and dtheta against an Eigen G_i = X_i^T
/// dY_i fed through backward_from_block_gradients) once per (policy, b, d, N). Returns an error
/// message, empty when everything matches.
template <class Policy>
std::string validate(const oft::BlockOrthogonal<Scalar, Policy>& rot, Index n,
                     const std::string& label = Policy::name) {
  static std::set<std::tuple<std::string, Index, Index, Index>> done;
  const Index d = rot.features(), b = rot.spec().block_size;
  const auto key = std::make_tuple(label, b, d, n);
  if (done.count(key)) return {};

  const Matrix<Scalar> x = random_matrix<Scalar>(n, d, 11), dy = random_matrix<Scalar>(n, d, 12);
  Matrix<Scalar> y(n, d), dx(n, d);
  rot.apply(oft::view(x), oft::view(y));
  oft::Generators<Scalar> dtheta(rot.spec().generators(), b), dtheta_ref(dtheta);
  oft::Workspace<Scalar> ws;
  rot.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), ws);

  const double tol = tolerance<Scalar>(b);
  for (Index t : {Index(0), n - 1}) {
    const double e_apply =
        relative_error(y.row(t), reference_row(rot, x.row(t).template cast<double>()));
    // dX row = dY row * R^T, i.e. per block dy_i R_i^T.
    Eigen::RowVectorXd dx_ref(d);
    for (Index i = 0; i < rot.spec().blocks; ++i)
      dx_ref.segment(i * b, b) = dy.row(t).segment(i * b, b).template cast<double>() *
                                 rot.block(i).template cast<double>().transpose();
    const double e_dx = relative_error(dx.row(t), dx_ref);
    if (!(e_apply <= tol && e_dx <= tol)) {
      std::ostringstream os;
      os << "validation failed at row " << t << ": apply error " << e_apply << ", dX error " << e_dx
         << " (tolerance " << tol << ")";
      return os.str();
    }
  }
  Matrix<Scalar> g(d, b);
  for (Index i = 0; i < rot.spec().blocks; ++i)
    g.middleRows(i * b, b) = (x.middleCols(i * b, b).template cast<double>().transpose() *
                              dy.middleCols(i * b, b).template cast<double>())
                                 .template cast<Scalar>();
  rot.backward_from_block_gradients(oft::view(g), dtheta_ref.view());
  const double e_dtheta = relative_error(dtheta.values(), dtheta_ref.values());
  if (!(e_dtheta <= tolerance<Scalar>(n) * 4)) {
    std::ostringstream os;
    os << "validation failed: dtheta error " << e_dtheta << " (tolerance "
       << tolerance<Scalar>(n) * 4 << ")";
    return os.str();
  }
  done.insert(key);
  return {};
}

template <class Policy>
oft::BlockOrthogonal<Scalar, Policy> make_rotation(Index d, Index b, Policy policy = {}) {
  oft::BlockOrthogonal<Scalar, Policy> rot(oft::BlockSpec::from_features(d, b), policy);
  const auto theta = random_generators<Scalar>(rot.spec().generators(), b, kRho, 7);
  rot.set_generators(theta.view());
  return rot;
}

// The grid uses the exact Cayley map: orthogonal to rounding, so an in-place loop of millions of
// applications neither overflows nor drifts into denormals. The apply cost does not depend on
// the policy.
using GridPolicy = oft::ExactCayley;

void BM_Apply(benchmark::State& state) {
  const Index b = state.range(0), d = state.range(1), n = state.range(2);
  const auto rot = make_rotation<GridPolicy>(d, b);
  if (auto err = validate(rot, n); !err.empty()) return state.SkipWithError(err.c_str());
  Activations& a = activations(d, n);
  const auto x = oft::view(a.x);
  for (auto _ : state) {
    rot.apply(x, x);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, apply_cost<Scalar>(n, d, b));
}

void BM_ApplyOutOfPlace(benchmark::State& state) {
  const Index b = state.range(0), d = state.range(1), n = state.range(2);
  const auto rot = make_rotation<GridPolicy>(d, b);
  if (auto err = validate(rot, n); !err.empty()) return state.SkipWithError(err.c_str());
  Activations& a = activations(d, n);
  for (auto _ : state) {
    rot.apply(oft::view(a.x), oft::view(a.y));
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, apply_cost<Scalar>(n, d, b));
}

void BM_Backward(benchmark::State& state) {
  const Index b = state.range(0), d = state.range(1), n = state.range(2);
  const auto rot = make_rotation<GridPolicy>(d, b);
  if (auto err = validate(rot, n); !err.empty()) return state.SkipWithError(err.c_str());
  Activations& a = activations(d, n);
  oft::Generators<Scalar> dtheta(rot.spec().generators(), b);
  oft::Workspace<Scalar> ws;
  ws.reserve(rot.workspace_size());
  const auto dy = oft::view(a.dy);
  for (auto _ : state) {
    rot.backward(oft::view(a.x), dy, dy, dtheta.view(), ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, backward_cost<Scalar>(n, d, b));
}

/// dX to a separate buffer, as autograd does (streaming stores at this size).
void BM_BackwardOutOfPlace(benchmark::State& state) {
  const Index b = state.range(0), d = state.range(1), n = state.range(2);
  const auto rot = make_rotation<GridPolicy>(d, b);
  if (auto err = validate(rot, n); !err.empty()) return state.SkipWithError(err.c_str());
  Activations& a = activations(d, n);
  oft::Generators<Scalar> dtheta(rot.spec().generators(), b);
  oft::Workspace<Scalar> ws;
  ws.reserve(rot.workspace_size());
  for (auto _ : state) {
    rot.backward(oft::view(a.x), oft::view(a.dy), oft::view(a.y), dtheta.view(), ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, backward_cost<Scalar>(n, d, b));
}

/// The backward's two halves alone, in place, to see where its time goes: part 0 = dX and
/// dtheta (BM_Backward), 1 = dX only (no X read, no G_i), 2 = dtheta only (no dX written).
void BM_BackwardParts(benchmark::State& state) {
  const Index b = state.range(0), d = state.range(1), n = state.range(2), part = state.range(3);
  const auto rot = make_rotation<GridPolicy>(d, b);
  if (auto err = validate(rot, n); !err.empty()) return state.SkipWithError(err.c_str());
  Activations& a = activations(d, n);
  oft::Generators<Scalar> dtheta(rot.spec().generators(), b);
  oft::Workspace<Scalar> ws;
  ws.reserve(rot.workspace_size());
  const auto x = oft::view(a.x);
  const auto dy = oft::view(a.dy);
  const oft::MatrixView<Scalar> dx = part == 2 ? oft::MatrixView<Scalar>() : dy;
  const oft::GeneratorView<Scalar> grad = part == 1 ? oft::GeneratorView<Scalar>() : dtheta.view();
  for (auto _ : state) {
    rot.backward(x, dy, dx, grad, ws);
    benchmark::ClobberMemory();
  }
  state.counters["part"] = static_cast<double>(part);
}

const std::vector<std::string> kGridArgs = {"b", "d", "N"};

BENCHMARK(BM_Apply)
    ->ArgsProduct({{8, 16, 32, 64, 128}, {1024, 4096}, {1, 16, 2048}})
    ->ArgNames(kGridArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Backward)
    ->ArgsProduct({{8, 16, 32, 64, 128}, {1024, 4096}, {1, 16, 2048}})
    ->ArgNames(kGridArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ApplyOutOfPlace)
    ->ArgsProduct({{32, 64}, {1024, 4096}, {2048}})
    ->ArgNames(kGridArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BackwardParts)
    ->ArgsProduct({{32, 64}, {4096}, {2048}, {0, 1, 2}})
    ->ArgNames({"b", "d", "N", "part"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BackwardOutOfPlace)
    ->ArgsProduct({{32, 64}, {1024, 4096}, {2048}})
    ->ArgNames(kGridArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------------------------
// Per-policy: theta -> R, and the whole rotation step
// ---------------------------------------------------------------------------------------------
template <class Policy>
void BM_SetGenerators(benchmark::State& state, Policy policy) {
  const Index d = state.range(0), b = state.range(1);
  oft::BlockOrthogonal<Scalar, Policy> rot(oft::BlockSpec::from_features(d, b), policy);
  const auto theta = random_generators<Scalar>(rot.spec().generators(), b, kRho, 7);
  for (auto _ : state) {
    rot.set_generators(theta.view());
    benchmark::ClobberMemory();
  }
  state.counters["generators"] = static_cast<double>(rot.spec().generators());
}

/// The activation buffers of one type: float, or the same values rounded to bfloat16.
template <class Act>
std::array<oft::MatrixView<Act>, 3> activation_views(Activations& a) {
  auto view_of = [&](auto& m) { return oft::MatrixView<Act>(m.data(), a.n, a.d); };
  if constexpr (std::is_same_v<Act, oft::bfloat16>)
    return {view_of(a.x_bf16), view_of(a.y_bf16), view_of(a.dy_bf16)};
  else
    return {view_of(a.x), view_of(a.y), view_of(a.dy)};
}

/// One training step with activations of type Act (float, or bfloat16 with R, theta, dtheta and
/// the accumulation in float, computed as `arithmetic` says: checked in tests/cpu/test_bf16.cpp;
/// bytes are counted at sizeof(Act) each).
template <class Act, class Policy>
void BM_RotationStep(benchmark::State& state, Policy policy, const std::string& label,
                     oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  const Index d = state.range(0), b = state.range(1), n = state.range(2);
  auto rot = make_rotation<Policy>(d, b, policy);
  if constexpr (std::is_same_v<Act, oft::bfloat16>) rot.set_bf16_arithmetic(arithmetic);
  if (auto err = validate(rot, n, label); !err.empty()) return state.SkipWithError(err.c_str());
  const auto theta = random_generators<Scalar>(rot.spec().generators(), b, kRho, 7);
  oft::Generators<Scalar> dtheta(rot.spec().generators(), b);
  oft::Workspace<Scalar> ws;
  ws.reserve(rot.workspace_size());
  const auto [x, y, dy] = activation_views<Act>(activations(d, n));
  using ConstView = oft::MatrixView<const Act>;
  for (auto _ : state) {
    rot.set_generators(theta.view());
    rot.apply(ConstView(x), y);
    rot.backward(ConstView(x), ConstView(dy), dy, dtheta.view(), ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, step_cost<Act>(n, d, b));
}

std::vector<std::array<Index, 3>> step_shapes() {
  std::vector<std::array<Index, 3>> shapes = {{4096, 32, 2048}};
  // "4096x32x2048,1024x16x512"
  std::stringstream list(env_or("OFT_BENCH_STEP_SHAPES", ""));
  std::string item;
  while (std::getline(list, item, ',')) {
    std::array<Index, 3> s{};
    char sep1 = 0, sep2 = 0;
    std::istringstream is(item);
    if (is >> s[0] >> sep1 >> s[1] >> sep2 >> s[2] && s[0] > 0 && s[1] > 0 && s[2] > 0 &&
        s[0] % s[1] == 0 && std::find(shapes.begin(), shapes.end(), s) == shapes.end())
      shapes.push_back(s);
  }
  return shapes;
}

std::vector<int> step_terms() {
  std::vector<int> ks = {1, 2, 3, 4, 6};
  std::stringstream list(env_or("OFT_BENCH_STEP_K", ""));
  std::string item;
  while (std::getline(list, item, ','))
    if (!item.empty()) {
      const int k = std::atoi(item.c_str());
      if (k >= 0 && std::find(ks.begin(), ks.end(), k) == ks.end()) ks.push_back(k);
    }
  return ks;
}

template <class Policy>
void register_policy(const std::string& label, Policy policy) {
  std::set<std::pair<Index, Index>> build_shapes;  // theta -> R depends on (d, b) only
  for (const auto& s : step_shapes()) {
    if (build_shapes.insert({s[0], s[1]}).second)
      benchmark::RegisterBenchmark(("BM_SetGenerators/" + label).c_str(),
                                   [policy](benchmark::State& st) { BM_SetGenerators(st, policy); })
          ->Args({s[0], s[1]})
          ->ArgNames({"d", "b"})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(
        ("BM_RotationStep/" + label).c_str(),
        [policy, label](benchmark::State& st) { BM_RotationStep<Scalar>(st, policy, label); })
        ->Args({s[0], s[1], s[2]})
        ->ArgNames({"d", "b", "N"})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    if (label.rfind("cayley_neumann", 0) != 0) continue;
    // BM_RotationStepBf16: the default arithmetic (DotProduct where the build has AVX512_BF16);
    // BM_RotationStepBf16Float: the widening float path, registered where the two differ.
    const oft::Bf16Arithmetic fallback = oft::Bf16Arithmetic::Float;
    const oft::Bf16Arithmetic preferred =
        oft::detail::cpu::kHasBf16Dot ? oft::Bf16Arithmetic::DotProduct : fallback;
    std::vector<std::pair<std::string, oft::Bf16Arithmetic>> variants = {
        {"BM_RotationStepBf16/", preferred}};
    if (preferred != fallback) variants.emplace_back("BM_RotationStepBf16Float/", fallback);
    for (const auto& [name, arithmetic] : variants)
      benchmark::RegisterBenchmark(
          (name + label).c_str(),
          [policy, label, arithmetic = arithmetic](benchmark::State& st) {
            BM_RotationStep<oft::bfloat16>(st, policy, label, arithmetic);
          })
          ->Args({s[0], s[1], s[2]})
          ->ArgNames({"d", "b", "N"})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  }
}

const bool registered = [] {
  register_policy("cayley", oft::ExactCayley{});
  for (int k : step_terms())
    register_policy("cayley_neumann/k:" + std::to_string(k), oft::CayleyNeumann{k});
  register_policy("exponential", oft::MatrixExponential{});
  return true;
}();

}  // namespace

BENCHMARK_MAIN();

/// \file bench_serving.cpp
/// Serving many OFT adapters in one batch (docs/serving.md), float, d = n_out = 4096, b = 32:
/// what the adapters add to the base layer's GEMM.
///
///   BM_BaseGemm/tokens:N            Z = Y W0^T, the base layer alone (the denominator)
///   BM_BankDecode/adapters:A/tokens:B   AdapterBank::apply, B tokens from B distinct requests,
///                                   each request's adapter drawn uniformly from A (decode)
///   BM_LoopDecode/...               the same tokens, one single-adapter apply per request, as a
///                                   server holding one operator per adapter would run them
///   BM_BankDecodeBf16/...           AdapterBank::apply with bfloat16 activations (float
///                                   arithmetic: widened, rounded once)
///   BM_BankDecodeBf16Dot/...        the same through vdpbf16ps (Bf16Arithmetic::DotProduct;
///                                   skipped in builds without AVX512_BF16)
///   BM_BankDecodeStoredBf16/...     float activations, R stored as bfloat16 (RotationStorage)
///   BM_BankPrefill/adapters:A       8 requests x 512 tokens, request k on adapter k mod A
///   BM_LoopPrefill/adapters:A       the same, one single-adapter apply per request
///   Fused QKV (d = 4096, q = 4096, k = v = 1024 rows; 8 adapters targeting q, k and v):
///   BM_FusedBase/tokens:N           Z = X W_qkv^T, no adapters
///   BM_FusedServing/tokens:N        ServingLinear: per slice, rotate X, GEMM over its rows
///   BM_FusedThreeBatch/tokens:N     the 3x batch: X rotated by each slice's adapter, the three
///                                   stacked into 3N rows, through the whole fused weight, and the
///                                   diagonal blocks kept (the authors' serving fork's approach)
///
/// Every bank result is checked once against the single-adapter operator, outside the timed loop.
/// bench/summarize_serving.py turns a JSON run into the overhead table against the targets.

#include <oft/serving_linear.hpp>

#include <map>
#include <tuple>

#include "bench_common.hpp"

namespace {

using namespace oft_bench;
using Scalar = float;
using Op = oft::BlockOrthogonal<Scalar, oft::ExactCayley>;

constexpr Index kD = 4096, kOut = 4096, kB = 32, kMaxAdapters = 64;
constexpr Index kQ = 4096, kKv = 1024, kFusedOut = kQ + 2 * kKv;
constexpr Index kPrefillRequests = 8, kPrefillTokens = 512;

/// kMaxAdapters operators (distinct random generators) for a layer of kD features.
const std::vector<std::unique_ptr<Op>>& operators() {
  static const auto ops = [] {
    std::vector<std::unique_ptr<Op>> all;
    for (Index a = 0; a < kMaxAdapters; ++a) {
      all.push_back(std::make_unique<Op>(oft::BlockSpec::from_features(kD, kB)));
      all.back()->set_generators(random_generators<Scalar>(kD / kB, kB, 0.5, 100 + a));
    }
    return all;
  }();
  return ops;
}

/// A bank holding the first `adapters` operators (kept per count: building one costs seconds).
const oft::AdapterBank<Scalar>& bank(Index adapters,
                                     oft::RotationStorage storage = oft::RotationStorage::Scalar,
                                     oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  static std::map<std::tuple<Index, oft::RotationStorage, oft::Bf16Arithmetic>,
                  std::unique_ptr<oft::AdapterBank<Scalar>>>
      banks;
  auto& slot = banks[{adapters, storage, arithmetic}];
  if (!slot) {
    slot = std::make_unique<oft::AdapterBank<Scalar>>(kD, adapters, storage, arithmetic);
    for (Index a = 0; a < adapters; ++a) slot->add(*operators()[static_cast<std::size_t>(a)]);
  }
  return *slot;
}

/// Decode: token t is request t's only token; its adapter uniform over [0, adapters).
std::vector<std::int32_t> decode_ids(Index tokens, Index adapters) {
  std::mt19937_64 rng(static_cast<std::uint64_t>(tokens * 1000 + adapters));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(adapters));
  return ids;
}

/// Prefill: kPrefillRequests runs of kPrefillTokens, request k on adapter k mod `adapters`.
std::vector<std::int32_t> prefill_ids(Index adapters) {
  std::vector<std::int32_t> ids;
  for (Index k = 0; k < kPrefillRequests; ++k)
    ids.insert(ids.end(), static_cast<std::size_t>(kPrefillTokens),
               static_cast<std::int32_t>(k % adapters));
  return ids;
}

/// Fails the benchmark unless every row of `y` is its adapter's operator applied to that row
/// (bfloat16 rows in the bank's arithmetic: the two arithmetics differ by bfloat16 roundings).
template <class Act>
void check_rows(benchmark::State& state, const Matrix<Act>& x, const Matrix<Act>& y,
                const std::vector<std::int32_t>& ids,
                oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  for (const auto& op : operators()) op->set_bf16_arithmetic(arithmetic);
  Matrix<Act> expected(x.rows(), x.cols());
  for (Index t = 0; t < x.rows(); ++t)
    operators()[static_cast<std::size_t>(ids[static_cast<std::size_t>(t)])]->apply(
        oft::ConstMatrixView<Act>(x.data() + t * kD, 1, kD),
        oft::MatrixView<Act>(expected.data() + t * kD, 1, kD));
  const double error = relative_error(y.template cast<float>(), expected.template cast<float>());
  if (error > tolerance<float>(kB)) state.SkipWithError("bank result differs from the operator's");
}

void BM_BaseGemm(benchmark::State& state) {
  const Index n = state.range(0);
  const Matrix<Scalar> w = random_matrix<Scalar>(kOut, kD, 1), y = random_matrix<Scalar>(n, kD, 2);
  Matrix<Scalar> z = random_matrix<Scalar>(n, kOut, 3);
  for (auto _ : state) {
    z.noalias() = y * w.transpose();
    benchmark::ClobberMemory();
  }
}

template <class Act>
void bank_decode(benchmark::State& state, oft::RotationStorage storage = oft::RotationStorage::Scalar,
                 oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  if (arithmetic == oft::Bf16Arithmetic::DotProduct && !oft::kBf16DotProductAvailable) {
    state.SkipWithError("this build has no AVX512_BF16 (vdpbf16ps)");
    return;
  }
  const Index adapters = state.range(0), n = state.range(1);
  const auto ids = decode_ids(n, adapters);
  const Matrix<Scalar> xf = random_matrix<Scalar>(n, kD, 4);
  const Matrix<Act> x = xf.template cast<Act>();
  Matrix<Act> y = Matrix<Act>::Zero(n, kD);
  const auto& b = bank(adapters, storage, arithmetic);
  b.apply(oft::ConstMatrixView<Act>(x.data(), n, kD), oft::MatrixView<Act>(y.data(), n, kD), ids);
  if (storage == oft::RotationStorage::Scalar) check_rows(state, x, y, ids, arithmetic);
  for (auto _ : state) {
    b.apply(oft::ConstMatrixView<Act>(x.data(), n, kD), oft::MatrixView<Act>(y.data(), n, kD), ids);
    benchmark::ClobberMemory();
  }
  state.counters["adapter_MB"] = static_cast<double>(adapters) * b.adapter_bytes(0) * 1e-6;
}
void BM_BankDecode(benchmark::State& state) { bank_decode<Scalar>(state); }
void BM_BankDecodeBf16(benchmark::State& state) { bank_decode<oft::bfloat16>(state); }
// bfloat16 activations through vdpbf16ps (a DotProduct bank): D = R - I in bfloat16 pairs.
void BM_BankDecodeBf16Dot(benchmark::State& state) {
  bank_decode<oft::bfloat16>(state, oft::RotationStorage::Scalar, oft::Bf16Arithmetic::DotProduct);
}
// (Its numbers are the float bank's of the rounded R: tests/serving/test_adapter_bank.cpp.)
void BM_BankDecodeStoredBf16(benchmark::State& state) {
  bank_decode<Scalar>(state, oft::RotationStorage::BFloat16);
}

void BM_LoopDecode(benchmark::State& state) {
  const Index adapters = state.range(0), n = state.range(1);
  const auto ids = decode_ids(n, adapters);
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 4);
  Matrix<Scalar> y = Matrix<Scalar>::Zero(n, kD);
  for (auto _ : state) {
    for (Index t = 0; t < n; ++t)
      operators()[static_cast<std::size_t>(ids[static_cast<std::size_t>(t)])]->apply(
          oft::ConstMatrixView<Scalar>(x.data() + t * kD, 1, kD),
          oft::MatrixView<Scalar>(y.data() + t * kD, 1, kD));
    benchmark::ClobberMemory();
  }
}

void BM_BankPrefill(benchmark::State& state) {
  const Index adapters = state.range(0), n = kPrefillRequests * kPrefillTokens;
  const auto ids = prefill_ids(adapters);
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 5);
  Matrix<Scalar> y = Matrix<Scalar>::Zero(n, kD);
  const auto& b = bank(adapters);
  b.apply(oft::ConstMatrixView<Scalar>(x.data(), n, kD), oft::MatrixView<Scalar>(y.data(), n, kD), ids);
  check_rows(state, x, y, ids);
  for (auto _ : state) {
    b.apply(oft::ConstMatrixView<Scalar>(x.data(), n, kD), oft::MatrixView<Scalar>(y.data(), n, kD), ids);
    benchmark::ClobberMemory();
  }
}

void BM_LoopPrefill(benchmark::State& state) {
  const Index adapters = state.range(0), n = kPrefillRequests * kPrefillTokens;
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 5);
  Matrix<Scalar> y = Matrix<Scalar>::Zero(n, kD);
  for (auto _ : state) {
    for (Index k = 0; k < kPrefillRequests; ++k)
      operators()[static_cast<std::size_t>(k % adapters)]->apply(
          oft::ConstMatrixView<Scalar>(x.data() + k * kPrefillTokens * kD, kPrefillTokens, kD),
          oft::MatrixView<Scalar>(y.data() + k * kPrefillTokens * kD, kPrefillTokens, kD));
    benchmark::ClobberMemory();
  }
}

// ---------------------------------------------------------------------------------------------
// Fused QKV
// ---------------------------------------------------------------------------------------------
constexpr Index kFusedAdapters = 8;

const Matrix<Scalar>& fused_weight() {
  static const Matrix<Scalar> w = random_matrix<Scalar>(kFusedOut, kD, 6);
  return w;
}

/// Adapter a's operator for slice s (q, k, v): three distinct operators per adapter.
const Op& slice_operator(Index a, Index s) {
  return *operators()[static_cast<std::size_t>((3 * a + s) % kMaxAdapters)];
}

const oft::ServingLinear<Scalar>& fused_layer() {
  static const auto layer = [] {
    auto l = std::make_unique<oft::ServingLinear<Scalar>>(oft::view(fused_weight()), nullptr,
                                                          std::vector<Index>{kQ, kKv, kKv},
                                                          kFusedAdapters);
    for (Index a = 0; a < kFusedAdapters; ++a)
      l->add(std::vector<const Op*>{&slice_operator(a, 0), &slice_operator(a, 1), &slice_operator(a, 2)});
    return l;
  }();
  return *layer;
}

/// Token ids of a fused benchmark: decode (distinct requests) up to 256 tokens, else prefill runs.
std::vector<std::int32_t> fused_ids(Index n) {
  if (n <= 256) return decode_ids(n, kFusedAdapters);
  std::vector<std::int32_t> ids;
  for (Index t = 0; t < n; ++t) ids.push_back(static_cast<std::int32_t>((t / kPrefillTokens) % kFusedAdapters));
  return ids;
}

void BM_FusedBase(benchmark::State& state) {
  const Index n = state.range(0);
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 7);
  Matrix<Scalar> z(n, kFusedOut);
  const Matrix<Scalar>& w = fused_weight();  // made (and touched) before the timed loop
  for (auto _ : state) {
    z.noalias() = x * w.transpose();
    benchmark::ClobberMemory();
  }
}

void BM_FusedServing(benchmark::State& state) {
  const Index n = state.range(0);
  const auto ids = fused_ids(n);
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 7);
  Matrix<Scalar> z(n, kFusedOut);
  oft::Workspace<Scalar> workspace;
  const auto& layer = fused_layer();
  for (auto _ : state) {
    layer.forward(oft::view(x), ids, oft::view(z), workspace);
    benchmark::ClobberMemory();
  }
}

/// The 3x batch, with the same banks doing the rotations (so only the GEMM shape differs).
void BM_FusedThreeBatch(benchmark::State& state) {
  const Index n = state.range(0);
  const auto ids = fused_ids(n);
  const Matrix<Scalar> x = random_matrix<Scalar>(n, kD, 7);
  Matrix<Scalar> stacked(3 * n, kD), z_all(3 * n, kFusedOut), z(n, kFusedOut);
  const auto& layer = fused_layer();
  const Index offsets[] = {0, kQ, kQ + kKv, kFusedOut};
  // Checked once: the kept diagonal blocks equal ServingLinear's output.
  auto run = [&] {
    for (Index s = 0; s < 3; ++s)
      layer.bank(s).apply(oft::view(x), oft::MatrixView<Scalar>(stacked.data() + s * n * kD, n, kD), ids);
    z_all.noalias() = stacked * fused_weight().transpose();
    for (Index s = 0; s < 3; ++s)
      z.middleCols(offsets[s], offsets[s + 1] - offsets[s]) =
          z_all.block(s * n, offsets[s], n, offsets[s + 1] - offsets[s]);
  };
  run();
  Matrix<Scalar> z_serving(n, kFusedOut);
  oft::Workspace<Scalar> workspace;
  layer.forward(oft::view(x), ids, oft::view(z_serving), workspace);
  if (relative_error(z, z_serving) > tolerance<Scalar>(kD))
    state.SkipWithError("3x batch differs from ServingLinear");
  for (auto _ : state) {
    run();
    benchmark::ClobberMemory();
  }
}

void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"adapters", "tokens"});
  for (const int a : {1, 8, 64})
    for (const int n : {1, 8, 64, 256}) b->Args({a, n});
}

BENCHMARK(BM_BaseGemm)->ArgName("tokens")->Arg(1)->Arg(8)->Arg(64)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BankDecode)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BankDecodeBf16)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BankDecodeBf16Dot)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BankDecodeStoredBf16)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoopDecode)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BankPrefill)->ArgName("adapters")->Arg(1)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoopPrefill)->ArgName("adapters")->Arg(1)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FusedBase)->ArgName("tokens")->Arg(64)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FusedServing)->ArgName("tokens")->Arg(64)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FusedThreeBatch)->ArgName("tokens")->Arg(64)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

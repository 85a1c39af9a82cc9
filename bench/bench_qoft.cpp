/// \file bench_qoft.cpp
/// QOFT vs dense OFT vs QLoRA, one training step of a frozen linear layer at d = n_out = 4096,
/// b = 32, N = 2048, float, Cayley-Neumann k = 3 (PEFT's default num_cayley_neumann_terms = 5),
/// LoRA rank 16. The base format is the last argument: 0 = float32 (dense), 1 = NF4 (blocksize
/// 64), 2 = int8 (LLM.int8). Eigen's products go to the linked BLAS when the build defines
/// EIGEN_USE_BLAS (oft::blas), as in bench_layer.
///
///   BM_BaseGemmStep       Z = X W^T and dX = dZ W over the float W (no adapter): dense sgemm
///   BM_FusedGemmStep      the same two products through the fused dequantize-GEMMs of the format
///                         (fmt 0: the same panels over float values, to isolate the panelling)
///   BM_Dequantize         the whole W dequantized once (n_out * d values; what each product pays)
///   BM_OftLayerStep       dense OFT (OftLinear): set_generators + forward + backward
///   BM_QoftLayerStep      QOFT (QoftLinear over the format): the same step
///   BM_QloraLayerStep     QLoRA (QloraLinear over the format, rank 16): forward + backward
///
/// Counters: GFLOP/s of each step's own flops (base 4 N d n_out; OFT adds 6 N d b; LoRA adds
/// 12 N r (d + n_out) for the six rank-r products), and weight_MiB: the bytes the layer keeps for
/// its frozen weight (quantized values and scales).

#include "bench_common.hpp"

#include <oft/quant/qlora_linear.hpp>
#include <oft/quant/qoft_linear.hpp>

namespace {

using namespace oft_bench;
using oft::quant::Bnb4Base;
using oft::quant::DenseFloatBase;
using oft::quant::Int8Base;
using Policy = oft::CayleyNeumann;
constexpr double kRho = 0.5;
constexpr Index kLoraRank = 16;

struct QoftData {
  Index d = 0, n_out = 0, b = 0, n = 0;
  Matrix<float> w, x, z, dz, dx;
  std::unique_ptr<DenseFloatBase> dense;
  std::unique_ptr<Bnb4Base> nf4;
  std::unique_ptr<Int8Base> int8;
  oft::Generators<float> theta, dtheta;
  oft::Workspace<float> ws;
  std::string error;
};

QoftData& data(Index d, Index n_out, Index b, Index n) {
  static QoftData cache;
  if (cache.d == d && cache.n_out == n_out && cache.b == b && cache.n == n) return cache;
  cache = QoftData{};
  cache.d = d, cache.n_out = n_out, cache.b = b, cache.n = n;
  cache.w = random_matrix<float>(n_out, d, 21) / std::sqrt(float(d));
  cache.dense = std::make_unique<DenseFloatBase>(cache.w.data(), n_out, d);
  cache.nf4 = std::make_unique<Bnb4Base>(
      oft::quant::quantize_bnb4(cache.w.data(), n_out * d, 64, oft::quant::Bnb4Type::NF4), n_out, d);
  cache.int8 = std::make_unique<Int8Base>(oft::quant::quantize_int8(cache.w.data(), n_out, d));
  cache.theta = random_generators<float>(d / b, b, kRho, 7);
  cache.dtheta = oft::Generators<float>(d / b, b);
  cache.x = random_matrix<float>(n, d, 1);
  cache.dz = random_matrix<float>(n, n_out, 2);
  cache.z = random_matrix<float>(n, n_out, 3);
  cache.dx = random_matrix<float>(n, d, 4);
  // Validation: the fused products over NF4 equal dense products over its dequantized W (rows 0
  // and N-1), before anything is timed.
  const Matrix<float> w_nf4 = Eigen::Map<const Matrix<float>>(
      oft::quant::dequantize_all(*cache.nf4).data(), n_out, d);
  std::vector<float> panel(static_cast<std::size_t>(oft::quant::fused_panel_size(*cache.nf4)));
  oft::quant::dequant_gemm_nt(*cache.nf4, oft::view(cache.x), oft::view(cache.z), panel.data());
  oft::quant::dequant_gemm_nn(*cache.nf4, oft::view(cache.dz), oft::view(cache.dx), panel.data());
  for (Index t : {Index(0), n - 1}) {
    const Matrix<float> z_ref = cache.x.row(t) * w_nf4.transpose();
    const Matrix<float> dx_ref = cache.dz.row(t) * w_nf4;
    const double ez = relative_error(cache.z.row(t), z_ref), edx = relative_error(cache.dx.row(t), dx_ref);
    if (!(ez <= tolerance<float>(d) && edx <= tolerance<float>(n_out)))
      cache.error = "fused NF4 products disagree with dense ones at row " + std::to_string(t) + ": " +
                    std::to_string(ez) + ", " + std::to_string(edx);
  }
  return cache;
}

QoftData& setup(benchmark::State& state) {
  QoftData& s = data(state.range(0), state.range(1), state.range(2), state.range(3));
  if (!s.error.empty()) state.SkipWithError(s.error.c_str());
  return s;
}

double base_flops(const QoftData& s) { return 2.0 * s.n * s.d * s.n_out; }
double lora_flops(const QoftData& s) { return 12.0 * s.n * kLoraRank * (s.d + s.n_out); }

/// Runs `f(base)` with the base of format state.range(4).
template <class F>
void with_base(benchmark::State& state, QoftData& s, F&& f) {
  switch (state.range(4)) {
    case 0: f(*s.dense); break;
    case 1: f(*s.nf4); break;
    default: f(*s.int8); break;
  }
}

template <class Base>
void set_weight_bytes(benchmark::State& state, const Base& base) {
  state.counters["weight_MiB"] = static_cast<double>(base.bytes()) / (1024.0 * 1024.0);
  state.SetLabel(base.format());
}

void BM_BaseGemmStep(benchmark::State& state) {
  QoftData& s = setup(state);
  for (auto _ : state) {
    s.z.noalias() = s.x * s.w.transpose();
    s.dx.noalias() = s.dz * s.w;
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {2 * base_flops(s), 0.0});
  set_weight_bytes(state, *s.dense);
}

void BM_FusedGemmStep(benchmark::State& state) {
  QoftData& s = setup(state);
  with_base(state, s, [&](const auto& base) {
    float* panel = s.ws.reserve(oft::quant::fused_panel_size(base));
    for (auto _ : state) {
      oft::quant::dequant_gemm_nt(base, oft::view(s.x), oft::view(s.z), panel);
      oft::quant::dequant_gemm_nn(base, oft::view(s.dz), oft::view(s.dx), panel);
      benchmark::ClobberMemory();
    }
    set_rate_counters(state, {2 * base_flops(s), 0.0});
    set_weight_bytes(state, base);
  });
}

void BM_Dequantize(benchmark::State& state) {
  QoftData& s = setup(state);
  with_base(state, s, [&](const auto& base) {
    Matrix<float> scratch = Matrix<float>::Zero(s.n_out, s.d);  // touched before timing
    for (auto _ : state) {
      base.dequantize(0, s.n_out, 0, s.d, scratch.data(), s.d);
      benchmark::ClobberMemory();
    }
    state.counters["Gvalues"] = benchmark::Counter(double(s.n_out) * s.d * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
    set_weight_bytes(state, base);
  });
}

void BM_OftLayerStep(benchmark::State& state) {
  QoftData& s = setup(state);
  oft::OftLinear<float, Policy> layer(oft::view(s.w), nullptr, s.b, false, Policy{3});
  for (auto _ : state) {
    layer.set_generators(s.theta.view());
    layer.forward(oft::view(s.x), oft::view(s.z), s.ws);
    layer.backward(oft::view(s.x), oft::view(s.dz), oft::view(s.dx), s.dtheta.view(), s.ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {2 * base_flops(s) + step_cost<float>(s.n, s.d, s.b).flops, 0.0});
  set_weight_bytes(state, *s.dense);
}

void BM_QoftLayerStep(benchmark::State& state) {
  QoftData& s = setup(state);
  with_base(state, s, [&](const auto& base) {
    using Base = std::decay_t<decltype(base)>;
    oft::quant::QoftLinear<float, Policy, Base> layer(base, nullptr, s.b, false, Policy{3});
    for (auto _ : state) {
      layer.set_generators(s.theta.view());
      layer.forward(oft::view(s.x), oft::view(s.z), s.ws);
      layer.backward(oft::view(s.x), oft::view(s.dz), oft::view(s.dx), s.dtheta.view(), s.ws);
      benchmark::ClobberMemory();
    }
    set_rate_counters(state, {2 * base_flops(s) + step_cost<float>(s.n, s.d, s.b).flops, 0.0});
    set_weight_bytes(state, base);
  });
}

void BM_QloraLayerStep(benchmark::State& state) {
  QoftData& s = setup(state);
  with_base(state, s, [&](const auto& base) {
    using Base = std::decay_t<decltype(base)>;
    oft::quant::QloraLinear<float, Base> layer(base, nullptr, kLoraRank, 2.0 * kLoraRank);
    layer.lora_a() = random_matrix<float>(kLoraRank, s.d, 8) * 0.01f;
    layer.lora_b() = random_matrix<float>(s.n_out, kLoraRank, 9) * 0.01f;
    Matrix<float> da, db;
    for (auto _ : state) {
      layer.forward(oft::view(s.x), oft::view(s.z), s.ws);
      layer.backward(oft::view(s.x), oft::view(s.dz), oft::view(s.dx), da, db, s.ws);
      benchmark::ClobberMemory();
    }
    set_rate_counters(state, {2 * base_flops(s) + lora_flops(s), 0.0});
    set_weight_bytes(state, base);
  });
}

#define OFT_QOFT_BENCH(fn, ...)                         \
  BENCHMARK(fn)                                         \
      __VA_ARGS__                                       \
      ->ArgNames({"d", "n_out", "b", "N", "fmt"})       \
      ->UseRealTime()                                   \
      ->Unit(benchmark::kMillisecond)

OFT_QOFT_BENCH(BM_BaseGemmStep, ->Args({4096, 4096, 32, 2048, 0}));
OFT_QOFT_BENCH(BM_FusedGemmStep, ->Args({4096, 4096, 32, 2048, 0})->Args({4096, 4096, 32, 2048, 1})
                                     ->Args({4096, 4096, 32, 2048, 2}));
OFT_QOFT_BENCH(BM_Dequantize, ->Args({4096, 4096, 32, 2048, 1})->Args({4096, 4096, 32, 2048, 2}));
OFT_QOFT_BENCH(BM_OftLayerStep, ->Args({4096, 4096, 32, 2048, 0}));
OFT_QOFT_BENCH(BM_QoftLayerStep, ->Args({4096, 4096, 32, 2048, 1})->Args({4096, 4096, 32, 2048, 2}));
OFT_QOFT_BENCH(BM_QloraLayerStep, ->Args({4096, 4096, 32, 2048, 1})->Args({4096, 4096, 32, 2048, 2}));

}  // namespace

BENCHMARK_MAIN();

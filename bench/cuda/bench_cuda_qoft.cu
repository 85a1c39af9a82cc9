/// \file bench_cuda_qoft.cu
/// bench_cuda's QOFT benchmarks: the frozen base quantized (bitsandbytes NF4 with blocksize 64,
/// LLM.int8), float activations, d = n_out = 4096, Cayley-Neumann k = 3, b = 32.
///
///   cuda_qoft_base_step/<fmt>/panel:<w>/N:<N>  the fused dequantize-GEMMs alone: Z = X Wq^T and
///                                              dX = dZ Wq (compare cuda_base_step/float), panels
///                                              of w rows / columns of W (w = 4096: W whole)
///   cuda_qoft_layer_step/<fmt>/b:32/k:3/N:<N>  cuda_quant::QoftLinear: set_generators + forward
///                                              + backward (compare cuda_layer_step/float/...)
///
/// Counters: TFLOPs (the dense step's flops), frozen_bytes (what the layer keeps of W), and the
/// one-off check of row 0 and row N-1 of Z against (X R) Dequant(Wq)^T in double.
#include <oft/cuda/qoft_linear.hpp>
#include <oft/quant/bnb4.hpp>
#include <oft/quant/int8.hpp>

#include "bench_cuda_benchmarks.cuh"

namespace oft_cuda_bench {
namespace {

enum class QFormat { NF4, Int8 };

const char* format_name(QFormat f) { return f == QFormat::NF4 ? "nf4" : "int8"; }

/// The float frozen weight of the float benchmarks, quantized once per format on the host, with
/// its dequantized values (the reference of the checks).
struct QuantizedWeight {
  explicit QuantizedWeight(QFormat f) : format(f) {
    const std::vector<float>& w = frozen_weight<float>().host;
    if (f == QFormat::NF4) {
      bnb4 = std::make_unique<oft::quant::Bnb4Base>(
          oft::quant::quantize_bnb4(w.data(), kOutFeatures * kFeatures, 64,
                                    oft::quant::Bnb4Type::NF4),
          kOutFeatures, kFeatures);
      dequantized = oft::quant::dequantize_all<float>(*bnb4);
    } else {
      int8 = std::make_unique<oft::quant::Int8Base>(
          oft::quant::quantize_int8(w.data(), kOutFeatures, kFeatures));
      dequantized = oft::quant::dequantize_all<float>(*int8);
    }
  }
  QFormat format;
  std::unique_ptr<oft::quant::Bnb4Base> bnb4;
  std::unique_ptr<oft::quant::Int8Base> int8;
  std::vector<float> dequantized;
};

const QuantizedWeight& quantized_weight(QFormat f) {
  static std::map<QFormat, std::unique_ptr<QuantizedWeight>> cache;
  auto& slot = cache[f];
  if (!slot) slot = std::make_unique<QuantizedWeight>(f);
  return *slot;
}

/// The QOFT layer of one format at b = 32, k = 3 over N tokens, with its caller-owned workspace.
template <class Base>
struct QoftFixture {
  using Layer = oft::cuda_quant::QoftLinear<oft::CayleyNeumann, Base>;
  QoftFixture(Base base, Index tokens)
      : n(tokens),
        spec(oft::BlockSpec::from_features(kFeatures, kBlock)),
        act(activations<float>(tokens)),
        layer(std::move(base), nullptr, kBlock, false, oft::CayleyNeumann{kTerms}),
        theta(static_cast<std::size_t>(spec.generators() * spec.packed())),
        dtheta(theta.size()),
        workspace(layer.workspace_bytes(tokens)) {
    fill_uniform(theta.data(), theta.size(), 7, 0.4f / std::sqrt(static_cast<float>(kBlock)));
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }
  static constexpr Index kBlock = 32;
  static constexpr int kTerms = 3;

  void step() {
    layer.set_generators(View<const float>(theta.data(), spec.generators(), spec.packed()),
                         stream());
    layer.forward(View<const float>(act->x.data(), n, kFeatures),
                  View<float>(act->z.data(), n, kOutFeatures), workspace.data(), workspace.size(),
                  stream());
    layer.backward(View<const float>(act->x.data(), n, kFeatures),
                   View<const float>(act->dz.data(), n, kOutFeatures),
                   View<float>(act->dx.data(), n, kFeatures),
                   View<float>(dtheta.data(), spec.generators(), spec.packed()), workspace.data(),
                   workspace.size(), stream());
  }

  /// One step with poisoned outputs; Z rows 0 and N-1 against (X R) Dequant(Wq)^T in double.
  CheckResult check_step(const std::vector<float>& dequantized) {
    CheckResult result;
    fill_value(act->z.data(), act->z.size(), std::nanf(""));
    fill_value(act->dx.data(), act->dx.size(), std::nanf(""));
    fill_value(dtheta.data(), dtheta.size(), std::nanf(""));
    step();
    check(cudaStreamSynchronize(stream()), "QOFT layer step (check)");
    result.require_finite("QOFT Z", count_nonfinite(act->z.data(), act->z.size()));
    result.require_finite("QOFT dX", count_nonfinite(act->dx.data(), act->dx.size()));
    result.require_finite("QOFT dtheta", count_nonfinite(dtheta.data(), dtheta.size()));
    const std::vector<float> raw = layer.rotation().rotation_blocks_host(stream());
    const std::vector<double> blocks(raw.begin(), raw.end());
    for (Index row : {Index(0), n - 1}) {
      const auto y = rotate_row(host_row(act->x.data(), kFeatures, row), blocks, kBlock, false);
      result.record("QOFT Z row " + std::to_string(row),
                    relative_l2(host_row(act->z.data(), kOutFeatures, row),
                                linear_row(y, dequantized, kOutFeatures)),
                    check_tolerance<float>());
    }
    return result;
  }

  Index n;
  oft::BlockSpec spec;
  std::shared_ptr<Activations<float>> act;
  Layer layer;
  oft::DeviceBuffer<float> theta, dtheta;
  oft::DeviceBuffer<unsigned char> workspace;
};

/// Runs `f(fixture)` on the format's layer for N tokens (built, checked and timed per call).
template <class F>
void with_qoft_fixture(QFormat format, Index n, F&& f) {
  const QuantizedWeight& q = quantized_weight(format);
  if (format == QFormat::NF4) {
    QoftFixture<oft::cuda_quant::DeviceBnb4Base> fixture(oft::cuda_quant::DeviceBnb4Base(*q.bnb4),
                                                         n);
    f(fixture, q.dequantized);
  } else {
    QoftFixture<oft::cuda_quant::DeviceInt8Base> fixture(oft::cuda_quant::DeviceInt8Base(*q.int8),
                                                         n);
    f(fixture, q.dequantized);
  }
}

void bm_qoft_layer_step(benchmark::State& state, QFormat format, Index n, const std::string& name) {
  guarded(state, name, [&] {
    with_qoft_fixture(format, n, [&](auto& fixture, const std::vector<float>& dequantized) {
      const CheckResult result = fixture.check_step(dequantized);
      const double seconds = run_timed(state, [&] { fixture.step(); });
      const double d = static_cast<double>(kFeatures);
      set_flop_counters(state, 4.0 * n * d * kOutFeatures + 6.0 * n * d * fixture.kBlock, seconds);
      state.counters["b"] = static_cast<double>(fixture.kBlock);
      state.counters["k"] = fixture.kTerms;
      state.counters["N"] = static_cast<double>(n);
      state.counters["d"] = d;
      state.counters["n_out"] = static_cast<double>(kOutFeatures);
      state.counters["frozen_bytes"] = static_cast<double>(fixture.layer.frozen_bytes());
      state.counters["workspace_bytes"] = static_cast<double>(fixture.workspace.size());
      set_check_counters(state, result);
    });
  });
}

/// The fused products alone (no rotation, no dtheta), with panels of `panel_width` rows (forward)
/// and columns (backward) of W in their own scratch.
void bm_qoft_base_step(benchmark::State& state, QFormat format, Index n, Index panel_width,
                       const std::string& name) {
  guarded(state, name, [&] {
    with_qoft_fixture(format, n, [&](auto& fixture, const std::vector<float>& dequantized) {
      const CheckResult result = fixture.check_step(dequantized);
      cublasHandle_t h = base_handle();
      check(cublasSetStream(h, stream()), "cublasSetStream");
      const auto& view = fixture.layer.base().view();
      oft::DeviceBuffer<float> panel(static_cast<std::size_t>(
          oft::cuda_quant::fused_panel_floats(kOutFeatures, kFeatures, panel_width)));
      auto& act = *fixture.act;
      const double seconds = run_timed(state, [&] {
        oft::cuda_quant::dequant_gemm_nt(h, view, act.x.data(), kFeatures, n, act.z.data(),
                                         kOutFeatures, panel.data(), stream(), false, panel_width);
        oft::cuda_quant::dequant_gemm_nn(h, view, act.dz.data(), kOutFeatures, n, act.dx.data(),
                                         kFeatures, panel.data(), stream(), panel_width);
      });
      state.counters["panel_width"] = static_cast<double>(panel_width);
      set_flop_counters(state, 4.0 * n * kFeatures * kOutFeatures, seconds);
      state.counters["N"] = static_cast<double>(n);
      state.counters["frozen_bytes"] = static_cast<double>(fixture.layer.base().bytes());
      set_check_counters(state, result);
    });
  });
}

}  // namespace

void register_qoft() {
  for (Index n : {Index(4096), Index(16384)})
    for (QFormat f : {QFormat::NF4, QFormat::Int8}) {
      const std::string tokens = "/N:" + std::to_string(n);
      for (Index width : {Index(512), Index(1024), Index(2048), Index(4096)}) {
        const std::string base_name = std::string("cuda_qoft_base_step/") + format_name(f) +
                                      "/panel:" + std::to_string(width) + tokens;
        configure(benchmark::RegisterBenchmark(base_name.c_str(), [=](benchmark::State& s) {
          bm_qoft_base_step(s, f, n, width, base_name);
        }));
      }
      const std::string layer_name =
          std::string("cuda_qoft_layer_step/") + format_name(f) + "/b:32/k:3" + tokens;
      configure(benchmark::RegisterBenchmark(layer_name.c_str(), [=](benchmark::State& s) {
        bm_qoft_layer_step(s, f, n, layer_name);
      }));
    }
}

}  // namespace oft_cuda_bench

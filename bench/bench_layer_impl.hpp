#pragma once
/// \file bench_layer_impl.hpp
/// Body of bench_layer.cpp (Eigen products through the linked BLAS when EIGEN_USE_BLAS) and
/// bench_layer_eigen.cpp (the same, with EIGEN_USE_BLAS undefined: Eigen's own GEMM). The GEMM
/// backend is written into the run context ("oft_gemm_backend").
///
/// One training step of a frozen linear layer at d = n_out = 4096, b = 32, N = 2048, float, with
/// Cayley-Neumann k as the fifth argument (k = 3, the R_k of PEFT's default
/// num_cayley_neumann_terms = 5, and k = 4):
///
///   BM_BaseGemmStep       Z = X W0^T and dX = dZ W0 (the layer without any adapter; W0 frozen)
///   BM_OftLayerStep       set_generators + forward (Y = X R, Z = Y W0^T) + backward
///                         (dY = dZ W0, dX = dY R^T in place, dtheta): input-centric, OFTv2
///   BM_WeightCentricStep  set_generators + forward_weight_centric + backward_weight_centric
///                         (W' = W0 R^T, Z = X W'^T; dX = dZ W', dW' = dZ^T X, G_i = dW'_i^T W0_i)
///   BM_DenseWeightCentricStep  the original OFT code path, which makes R dense (d x d):
///                         W' = W0 R^T and dR^T = W0^T dW' as full GEMMs (2 n_out d^2 flops each)
///   BM_*Forward           the forward halves alone
///
/// Flops per step: base 4 N d n_out; OFT adds 6 N d b; weight-centric 6 N d n_out + 4 n_out d b
/// (two merges) + 2 n_out d b (block gradients). The counters use these exact counts.

#include "bench_common.hpp"

namespace {

using namespace oft_bench;
using Scalar = float;
using Policy = oft::CayleyNeumann;
using Layer = oft::OftLinear<Scalar, Policy>;

constexpr double kRho = 0.5;

struct LayerData {
  Index d = 0, n_out = 0, b = 0, n = 0;
  int k = -1;
  std::unique_ptr<Layer> layer;
  oft::Generators<Scalar> theta, dtheta;
  Matrix<Scalar> x, z, dz, dx;
  oft::Workspace<Scalar> ws;
  Matrix<Scalar> dense_r, merged, merged_grad, dense_grad, block_grads;  // dense-R path buffers
  std::string error;  // validation failure, empty when fine
};

/// Layer, activations and validation for one shape, built once per process.
LayerData& layer_data(Index d, Index n_out, Index b, Index n, int k) {
  static LayerData cache;
  if (cache.d == d && cache.n_out == n_out && cache.b == b && cache.n == n && cache.k == k) return cache;
  cache = LayerData{};
  cache.d = d, cache.n_out = n_out, cache.b = b, cache.n = n, cache.k = k;
  const Matrix<Scalar> w0 = random_matrix<Scalar>(n_out, d, 21) / std::sqrt(Scalar(d));
  cache.layer = std::make_unique<Layer>(oft::view(w0), nullptr, b, false, Policy{k});
  cache.theta = random_generators<Scalar>(d / b, b, kRho, 7);
  cache.dtheta = oft::Generators<Scalar>(d / b, b);
  cache.layer->set_generators(cache.theta.view());
  cache.x = random_matrix<Scalar>(n, d, 1);
  cache.dz = random_matrix<Scalar>(n, n_out, 2);
  cache.z = random_matrix<Scalar>(n, n_out, 3);
  cache.dx = random_matrix<Scalar>(n, d, 4);
  cache.ws.reserve(cache.layer->workspace_size(n));
  cache.dense_r = Matrix<Scalar>::Zero(d, d);
  cache.merged = Matrix<Scalar>::Zero(n_out, d);
  cache.merged_grad = Matrix<Scalar>::Zero(n_out, d);
  cache.dense_grad = Matrix<Scalar>::Zero(d, d);
  cache.block_grads = Matrix<Scalar>::Zero(d, b);

  // Validation: input-centric and weight-centric forward/backward agree (rows 0 and N-1, dtheta).
  Matrix<Scalar> z_wc(n, n_out), dx_wc(n, d);
  oft::Generators<Scalar> dtheta_wc(d / b, b);
  const Layer& layer = *cache.layer;
  layer.forward(oft::view(cache.x), oft::view(cache.z), cache.ws);
  layer.forward_weight_centric(oft::view(cache.x), oft::view(z_wc));
  layer.backward(oft::view(cache.x), oft::view(cache.dz), oft::view(cache.dx), cache.dtheta.view(),
                 cache.ws);
  layer.backward_weight_centric(oft::view(cache.x), oft::view(cache.dz), oft::view(dx_wc),
                                dtheta_wc.view());
  const double tol = tolerance<Scalar>(d);
  for (Index t : {Index(0), n - 1}) {
    const double ez = relative_error(cache.z.row(t), z_wc.row(t));
    const double edx = relative_error(cache.dx.row(t), dx_wc.row(t));
    if (!(ez <= tol && edx <= tol))
      cache.error = "input-centric and weight-centric disagree at row " + std::to_string(t) +
                    ": Z error " + std::to_string(ez) + ", dX error " + std::to_string(edx);
  }
  const double et = relative_error(cache.dtheta.values(), dtheta_wc.values());
  if (!(et <= tolerance<Scalar>(n * n_out / b)))
    cache.error = "input-centric and weight-centric dtheta disagree: " + std::to_string(et);
  return cache;
}

LayerData& setup(benchmark::State& state) {
  LayerData& data = layer_data(state.range(0), state.range(1), state.range(2), state.range(3),
                               static_cast<int>(state.range(4)));
  if (!data.error.empty()) state.SkipWithError(data.error.c_str());
  return data;
}

double base_flops(const LayerData& s) { return 2.0 * s.n * s.d * s.n_out; }  // one GEMM
double merge_flops(const LayerData& s) { return 2.0 * s.n_out * s.d * s.b; }

void BM_BaseGemmStep(benchmark::State& state) {
  LayerData& s = setup(state);
  const Matrix<Scalar>& w0 = s.layer->weight();
  for (auto _ : state) {
    s.z.noalias() = s.x * w0.transpose();
    s.dx.noalias() = s.dz * w0;
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {2 * base_flops(s), 0.0});
}

void BM_BaseForward(benchmark::State& state) {
  LayerData& s = setup(state);
  const Matrix<Scalar>& w0 = s.layer->weight();
  for (auto _ : state) {
    s.z.noalias() = s.x * w0.transpose();
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {base_flops(s), 0.0});
}

void BM_OftLayerStep(benchmark::State& state) {
  LayerData& s = setup(state);
  Layer& layer = *s.layer;
  for (auto _ : state) {
    layer.set_generators(s.theta.view());
    layer.forward(oft::view(s.x), oft::view(s.z), s.ws);
    layer.backward(oft::view(s.x), oft::view(s.dz), oft::view(s.dx), s.dtheta.view(), s.ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {2 * base_flops(s) + step_cost<Scalar>(s.n, s.d, s.b).flops, 0.0});
}

void BM_OftLayerForward(benchmark::State& state) {
  LayerData& s = setup(state);
  Layer& layer = *s.layer;
  for (auto _ : state) {
    layer.set_generators(s.theta.view());
    layer.forward(oft::view(s.x), oft::view(s.z), s.ws);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {base_flops(s) + apply_cost<Scalar>(s.n, s.d, s.b).flops, 0.0});
}

void BM_WeightCentricStep(benchmark::State& state) {
  LayerData& s = setup(state);
  Layer& layer = *s.layer;
  for (auto _ : state) {
    layer.set_generators(s.theta.view());
    layer.forward_weight_centric(oft::view(s.x), oft::view(s.z));
    layer.backward_weight_centric(oft::view(s.x), oft::view(s.dz), oft::view(s.dx),
                                  s.dtheta.view());
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {3 * base_flops(s) + 3 * merge_flops(s), 0.0});
}

void BM_WeightCentricForward(benchmark::State& state) {
  LayerData& s = setup(state);
  Layer& layer = *s.layer;
  for (auto _ : state) {
    layer.set_generators(s.theta.view());
    layer.forward_weight_centric(oft::view(s.x), oft::view(s.z));
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {base_flops(s) + merge_flops(s), 0.0});
}

// Original OFT: R materialized as a dense d x d matrix and multiplied into W0 by a full GEMM.
void dense_weight_centric_step(LayerData& s) {
  Layer& layer = *s.layer;
  const Matrix<Scalar>& w0 = layer.weight();
  layer.set_generators(s.theta.view());
  s.dense_r = layer.rotation().dense();
  s.merged.noalias() = w0 * s.dense_r.transpose();      // W' = W0 R^T
  s.z.noalias() = s.x * s.merged.transpose();            // Z = X W'^T
  s.dx.noalias() = s.dz * s.merged;                       // dX = dZ W'
  s.merged_grad.noalias() = s.dz.transpose() * s.x;       // dW' = dZ^T X
  s.dense_grad.noalias() = s.merged_grad.transpose() * w0;  // dL/dR = dW'^T W0 (d x d)
  for (Index i = 0; i < s.d / s.b; ++i)
    s.block_grads.middleRows(i * s.b, s.b) = s.dense_grad.block(i * s.b, i * s.b, s.b, s.b);
  layer.rotation().backward_from_block_gradients(oft::view(s.block_grads), s.dtheta.view());
}

void BM_DenseWeightCentricStep(benchmark::State& state) {
  LayerData& s = setup(state);
  {  // validate against the input-centric gradient once, outside the timed loop
    oft::Generators<Scalar> reference(s.d / s.b, s.b);
    Matrix<Scalar> dx_ref(s.n, s.d);
    s.layer->backward(oft::view(s.x), oft::view(s.dz), oft::view(dx_ref), reference.view(), s.ws);
    dense_weight_centric_step(s);
    const double et = relative_error(s.dtheta.values(), reference.values());
    const double ex = relative_error(s.dx.row(0), dx_ref.row(0));
    if (!(et <= tolerance<Scalar>(s.n * s.n_out / s.b) && ex <= tolerance<Scalar>(s.d)))
      state.SkipWithError(("dense weight-centric path disagrees: dtheta " + std::to_string(et) +
                           ", dX " + std::to_string(ex)).c_str());
  }
  for (auto _ : state) {
    dense_weight_centric_step(s);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {3 * base_flops(s) + 4.0 * s.n_out * double(s.d) * s.d, 0.0});
}

#define OFT_LAYER_BENCH(fn)                \
  BENCHMARK(fn)                            \
      ->Args({4096, 4096, 32, 2048, 3})         \
      ->Args({4096, 4096, 32, 2048, 4})         \
      ->ArgNames({"d", "n_out", "b", "N", "k"}) \
      ->UseRealTime()                      \
      ->Unit(benchmark::kMillisecond)

OFT_LAYER_BENCH(BM_BaseGemmStep);
OFT_LAYER_BENCH(BM_OftLayerStep);
OFT_LAYER_BENCH(BM_WeightCentricStep);
OFT_LAYER_BENCH(BM_DenseWeightCentricStep);
OFT_LAYER_BENCH(BM_BaseForward);
OFT_LAYER_BENCH(BM_OftLayerForward);
OFT_LAYER_BENCH(BM_WeightCentricForward);

}  // namespace

BENCHMARK_MAIN();

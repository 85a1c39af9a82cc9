/// \file bench_sweep.cpp
/// Accuracy vs speed of the parameterizations (driven by sweep.py, which writes
/// bench/results/latest/sweep.csv and docs/accuracy_vs_speed.png; the kept baseline is bench/results/zen3/sweep.csv).
///
/// For every parameterization (exact Cayley, Cayley–Neumann k = 0..8, matrix exponential,
/// tolerance mode with tol = 1e-6 and exact-Cayley fallback, Newton–Schulz on (I + Q)^2 with
/// 2, 3, 5, 8 iterations, and exact Cayley / Cayley–Neumann k = 4 behind spectral clipping at
/// c = 0.5) x rho in {0.05, 0.2, 0.5, 0.8, 0.95} x b in {16, 32, 64}, with every generator's Q
/// scaled to spectral norm exactly rho. The clipped maps are a different map than exact Cayley
/// wherever rho > c (R(c Q / rho)), so their distance to exact Cayley there is the clip's
/// effect, not an error:
///
///   time      one rotation step in float at d = 2048, N = 256: set_generators (theta -> R),
///             Y = X R, backward (dX = dY R^T in place, dtheta)
///   counters  (computed once, outside the timed loop)
///     orth_err_f32 / orth_err_f64   max_i ||R_i^T R_i - I||_2
///     (BlockOrthogonal::orthogonality_error)
///                                   of the float operator that was timed / of the same theta in
///                                   double (the math, without float rounding)
///     dist_cayley_f32 / _f64        max_i ||R_i - Rcayley_i||_2, Rcayley in double
///     orth_theory / dist_theory     SPEC section 3's closed forms for Neumann (-1 when none)
///     terms                         k used (tolerance mode: the largest chosen; -1: exact)
///     rho, b, k                     the grid point (k = -1 for the non-Neumann maps)
///
/// The label of each run is the parameterization's name ("cayley", "neumann_k4", ...).
///
/// BM_Map/<label>/b:<b> times the map alone, for one generator in float at rho = 0.8 (the
/// clipped maps clip there): plan, theta -> R and the VJP dQ for a fixed G, the per-generator
/// work a step repeats r times. Not run by sweep.py (its filter is BM_Sweep); docs/families.md
/// section 6 reads it: bench_sweep --benchmark_filter=BM_Map.


#include "bench_common.hpp"  // first: includes oft before Eigen

#include <Eigen/SVD>

namespace {

using namespace oft_bench;
using Scalar = float;

constexpr Index kFeatures = 2048;
constexpr Index kTokens = 256;
constexpr double kTolerance = 1e-6;
constexpr double kClip = 0.5;  // max_norm of the clipped maps

/// max_i ||A_i - B_i||_2 over the blocks of two operators (double).
template <class OpA, class OpB>
double block_distance(const OpA& a, const OpB& b) {
  double worst = 0;
  for (Index i = 0; i < a.spec().blocks; ++i) {
    const Eigen::MatrixXd diff =
        a.block(i).template cast<double>() - b.block(i).template cast<double>();
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(diff);
    worst = std::max(worst, svd.singularValues()(0));
  }
  return worst;
}

struct Accuracy {
  bool done = false;
  double orth_f32 = 0, orth_f64 = 0, dist_f32 = 0, dist_f64 = 0, terms = -1;
};

template <class Policy>
void BM_Sweep(benchmark::State& state, Policy policy, std::string label, int k, double rho, Index b,
              std::shared_ptr<Accuracy> acc) {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(kFeatures, b);
  oft::Generators<double> theta64 = random_generators<double>(spec.generators(), b, rho, 7);
  oft::Generators<Scalar> theta(spec.generators(), b);
  theta.values() = theta64.values().template cast<Scalar>();

  oft::BlockOrthogonal<Scalar, Policy> rot(spec, policy);
  rot.set_generators(theta.view());
  if (!acc->done) {
    oft::BlockOrthogonal<double, Policy> rot64(spec, policy);
    rot64.set_generators(theta64.view());
    oft::BlockOrthogonal<double, oft::ExactCayley> cayley64(spec);
    cayley64.set_generators(theta64.view());
    acc->orth_f32 = rot.orthogonality_error();
    acc->orth_f64 = rot64.orthogonality_error();
    acc->dist_f32 = block_distance(rot, cayley64);
    acc->dist_f64 = block_distance(rot64, cayley64);
    for (Index g = 0; g < spec.generators(); ++g)
      acc->terms = std::max(acc->terms, static_cast<double>(rot.plan(g).terms));
    acc->done = true;
  }

  const Matrix<Scalar> x = random_matrix<Scalar>(kTokens, kFeatures, 1);
  Matrix<Scalar> y(kTokens, kFeatures), dy = random_matrix<Scalar>(kTokens, kFeatures, 2);
  oft::Generators<Scalar> dtheta(spec.generators(), b);
  oft::Workspace<Scalar> ws;
  ws.reserve(rot.workspace_size());
  for (auto _ : state) {
    rot.set_generators(theta.view());
    rot.apply(oft::view(x), oft::view(y));
    rot.backward(oft::view(x), oft::view(dy), oft::view(dy), dtheta.view(), ws);
    benchmark::ClobberMemory();
  }

  state.SetLabel(label);
  set_rate_counters(state, step_cost<Scalar>(kTokens, kFeatures, b));
  auto& c = state.counters;
  c["rho"] = rho;
  c["b"] = static_cast<double>(b);
  c["k"] = k;
  c["terms"] = acc->terms;
  c["orth_err_f32"] = acc->orth_f32;
  c["orth_err_f64"] = acc->orth_f64;
  c["dist_cayley_f32"] = acc->dist_f32;
  c["dist_cayley_f64"] = acc->dist_f64;
  c["orth_theory"] = k >= 0 ? oft::neumann_orthogonality_bound(rho, k) : -1.0;
  c["dist_theory"] = k >= 0 ? oft::neumann_distance_to_cayley(rho, k) : -1.0;
}

template <class Policy>
void register_point(const std::string& label, Policy policy, int k, double rho, Index b) {
  char rho_text[16];
  std::snprintf(rho_text, sizeof rho_text, "%.2f", rho);
  const std::string name = "BM_Sweep/" + label + "/rho:" + rho_text + "/b:" + std::to_string(b);
  auto acc = std::make_shared<Accuracy>();
  benchmark::RegisterBenchmark(
      name.c_str(), [=](benchmark::State& st) { BM_Sweep(st, policy, label, k, rho, b, acc); })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

template <class Policy>
void BM_Map(benchmark::State& state, Policy policy, Index b) {
  const oft::Generators<double> theta64 = random_generators<double>(1, b, 0.8, 11);
  const oft::SquareMatrix<Scalar> q = theta64.dense(0).template cast<Scalar>();
  const oft::SquareMatrix<Scalar> g = random_matrix<Scalar>(b, b, 12);
  oft::SquareMatrix<Scalar> r(b, b), dq(b, b);
  for (auto _ : state) {
    const auto plan = policy.plan(q);
    policy.rotation(q, plan, r);
    policy.rotation_vjp(q, r, plan, g, dq);
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
}

template <class Policy>
void register_map(const std::string& label, Policy policy, Index b) {
  const std::string name = "BM_Map/" + label + "/b:" + std::to_string(b);
  benchmark::RegisterBenchmark(name.c_str(),
                               [=](benchmark::State& st) { BM_Map(st, policy, b); })
      ->Unit(benchmark::kMicrosecond);
}

const bool registered_maps = [] {
  for (Index b : {16, 32, 64}) {
    register_map("cayley", oft::ExactCayley{}, b);
    register_map("neumann_k4", oft::CayleyNeumann{4}, b);
    register_map("exponential", oft::MatrixExponential{}, b);
    for (int j : {2, 3, 5, 8})
      register_map("newton_schulz_j" + std::to_string(j), oft::NewtonSchulz{j}, b);
    register_map("cayley_clip_frobenius_0.5",
                 oft::Clipped<oft::ExactCayley, oft::FrobeniusNorm>{oft::ExactCayley{}, kClip}, b);
    register_map("cayley_clip_spectral_0.5",
                 oft::Clipped<oft::ExactCayley, oft::SpectralNorm>{oft::ExactCayley{}, kClip}, b);
    register_map(
        "neumann_k4_clip_spectral_0.5",
        oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>{oft::CayleyNeumann{4}, kClip}, b);
  }
  return true;
}();

const bool registered = [] {
  for (Index b : {16, 32, 64})
    for (double rho : {0.05, 0.2, 0.5, 0.8, 0.95}) {
      register_point("cayley", oft::ExactCayley{}, -1, rho, b);
      for (int k = 0; k <= 8; ++k)
        register_point("neumann_k" + std::to_string(k), oft::CayleyNeumann{k}, k, rho, b);
      register_point("exponential", oft::MatrixExponential{}, -1, rho, b);
      register_point("tolerance_1e-6",
                     oft::CayleyNeumannTolerance{kTolerance, oft::OnDivergence::UseExactCayley}, -1,
                     rho, b);
      for (int j : {2, 3, 5, 8})
        register_point("newton_schulz_j" + std::to_string(j), oft::NewtonSchulz{j}, -1, rho, b);
      register_point("cayley_clip_spectral_0.5",
                     oft::Clipped<oft::ExactCayley, oft::SpectralNorm>{oft::ExactCayley{}, kClip},
                     -1, rho, b);
      register_point(
          "neumann_k4_clip_spectral_0.5",
          oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>{oft::CayleyNeumann{4}, kClip}, -1,
          rho, b);
    }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();

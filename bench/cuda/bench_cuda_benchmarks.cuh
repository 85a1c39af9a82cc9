#pragma once
/// \file bench_cuda_benchmarks.cuh
/// The benchmark bodies of bench_cuda, templated on the activation type T. Each bench_cuda_<T>.cu
/// instantiates them for one T (so nvcc builds the types in parallel); bench_cuda.cu has main().
///
/// Names (JSON "run_name", before Google Benchmark's "/manual_time" suffix):
///   cuda_apply/<T>/b:<b>/k:<k>/N:<N>          Y = X R (out of place)
///   cuda_rotation_step/<T>/b:<b>/k:<k>/N:<N>  set_generators + apply + backward (dX, dtheta)
///   cuda_layer_step/<T>/b:<b>/k:<k>/N:<N>     OftLinear: set_generators + forward + backward
///   cuda_base_step/<T>/N:<N>                  cuBLAS Z = X W0^T and dX = dZ W0, no rotation
///   cuda_copy/<T>/N:<N>                       device-to-device copy of N x d (measured ceiling)
/// <T> is float, bf16 or half; d = n_out = 4096; k is oft's Cayley-Neumann k (PEFT's
/// num_cayley_neumann_terms t = k + 2: t = 5 is k = 3).

#include <map>
#include <utility>

#include "bench_cuda_common.cuh"

namespace oft_cuda_bench {

template <class T>
using View = oft::DeviceMatrixView<T>;

// ---------------------------------------------------------------------------------------------
// Activations and the frozen weight, shared by the fixtures of one T
// ---------------------------------------------------------------------------------------------
template <class T>
struct Activations {
  explicit Activations(Index tokens)
      : n(tokens),
        x(count(kFeatures)),
        y(count(kFeatures)),
        dy(count(kFeatures)),
        dx(count(kFeatures)),
        z(count(kOutFeatures)),
        dz(count(kOutFeatures)) {
    fill_uniform(x.data(), x.size(), 11, 1.0f);
    fill_uniform(dy.data(), dy.size(), 12, 1.0f);
    fill_uniform(dz.data(), dz.size(), 13, 1.0f);
    fill_uniform(y.data(), y.size(), 14, 1.0f);
    fill_uniform(dx.data(), dx.size(), 15, 1.0f);
    fill_uniform(z.data(), z.size(), 16, 1.0f);
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }
  std::size_t count(Index cols) const { return static_cast<std::size_t>(n * cols); }

  Index n;
  oft::DeviceBuffer<T> x, y, dy, dx, z, dz;
};

/// Activations for N tokens (one N at a time per T; the previous set is released when nothing
/// holds it any more).
template <class T>
std::shared_ptr<Activations<T>> activations(Index n) {
  static std::shared_ptr<Activations<T>> cached;
  if (!cached || cached->n != n) {
    cached.reset();
    cached = std::make_shared<Activations<T>>(n);
  }
  return cached;
}

/// The frozen W0 (n_out x d, uniform in [-1, 1) / sqrt(d)), on the device and as host floats.
template <class T>
struct FrozenWeight {
  FrozenWeight() : device(static_cast<std::size_t>(kOutFeatures * kFeatures)) {
    fill_uniform(device.data(), device.size(), 21, 1.0f / std::sqrt(static_cast<float>(kFeatures)));
    host = host_matrix(device.data(), device.size());
  }
  oft::DeviceBuffer<T> device;
  std::vector<float> host;
};

template <class T>
const FrozenWeight<T>& frozen_weight() {
  static const FrozenWeight<T> w;
  return w;
}

// ---------------------------------------------------------------------------------------------
// Host references for the one-off checks (double)
// ---------------------------------------------------------------------------------------------
/// y = x R (transpose = false) or x R^T (true), per block, for one row of d values. `blocks`
/// holds the generators' b x b rotation blocks, row-major, R_g at g*b*b (no sharing here).
inline std::vector<double> rotate_row(const std::vector<float>& x, const std::vector<double>& blocks,
                                      Index b, bool transpose) {
  const Index d = static_cast<Index>(x.size());
  std::vector<double> y(x.size(), 0.0);
  for (Index blk = 0; blk < d / b; ++blk) {
    const double* r = blocks.data() + blk * b * b;
    for (Index c = 0; c < b; ++c) {
      double s = 0;
      for (Index k = 0; k < b; ++k)
        s += static_cast<double>(x[blk * b + k]) * (transpose ? r[c * b + k] : r[k * b + c]);
      y[blk * b + c] = s;
    }
  }
  return y;
}

/// z = y W0^T for one row.
inline std::vector<double> linear_row(const std::vector<double>& y, const std::vector<float>& w0,
                                      Index n_out) {
  const Index d = static_cast<Index>(y.size());
  std::vector<double> z(static_cast<std::size_t>(n_out), 0.0);
  for (Index o = 0; o < n_out; ++o) {
    const float* w = w0.data() + o * d;
    double s = 0;
    for (Index j = 0; j < d; ++j) s += y[j] * static_cast<double>(w[j]);
    z[o] = s;
  }
  return z;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

/// Outcome of the one-off checks of one fixture (counters check_err, check_ok; label on failure).
struct CheckResult {
  double max_error = 0;
  std::string failure;  ///< empty when every check passed
  void record(const std::string& what, double error, double tolerance) {
    if (!(error <= max_error)) max_error = error;  // NaN sticks
    if (!(error <= tolerance) && failure.empty()) {
      std::ostringstream out;
      out << what << " rel. error " << error << " > " << tolerance;
      failure = out.str();
    }
  }
  void require_finite(const std::string& what, unsigned long long nonfinite) {
    if (nonfinite > 0 && failure.empty()) {
      failure = what + ": " + std::to_string(nonfinite) + " non-finite values";
      max_error = std::nan("");
    }
  }
};

inline CheckResult merged(const CheckResult& a, const CheckResult& b) {
  CheckResult out = a;
  if (!(b.max_error <= out.max_error)) out.max_error = b.max_error;
  if (out.failure.empty()) out.failure = b.failure;
  return out;
}

inline void set_check_counters(benchmark::State& state, const CheckResult& result) {
  state.counters["check_err"] = result.max_error;
  state.counters["check_ok"] = result.failure.empty() ? 1.0 : 0.0;
  if (!result.failure.empty()) {
    state.SetLabel("CHECK FAILED: " + result.failure);
    std::fprintf(stderr, "bench_cuda: CHECK FAILED: %s\n", result.failure.c_str());
  }
}

// ---------------------------------------------------------------------------------------------
// Fixture of one (T, b, k, N): operator, layer, generators, caller-owned workspaces
// ---------------------------------------------------------------------------------------------
template <class T>
struct Fixture {
  using Policy = oft::CayleyNeumann;
  using Rotation = oft::BlockOrthogonal<T, Policy, oft::cuda>;
  using Layer = oft::OftLinear<T, Policy, oft::cuda>;
  using P = typename Rotation::Parameter;

  Fixture(Index block, int terms, Index tokens)
      : b(block),
        k(terms),
        n(tokens),
        spec(oft::BlockSpec::from_features(kFeatures, block)),
        act(activations<T>(tokens)),
        rotation(std::make_unique<Rotation>(spec, Policy{terms})),
        theta(static_cast<std::size_t>(spec.generators() * spec.packed())),
        dtheta(theta.size()),
        rotation_workspace(rotation->workspace_bytes(tokens)) {
    // ||Q||_2 of a random skew Q with entries uniform in [-s, s] is about 2 sqrt(b/3) s:
    // s = 0.4 / sqrt(b) keeps rho near 0.5, inside the Neumann series' domain.
    fill_uniform(theta.data(), theta.size(), 7, 0.4f / std::sqrt(static_cast<float>(b)));
    fill_uniform(dtheta.data(), dtheta.size(), 8, 1.0f);
    rotation->set_generators(theta_view(), stream());
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    check_rotation();
  }

  View<const P> theta_view() const {
    return View<const P>(theta.data(), spec.generators(), spec.packed());
  }
  View<P> dtheta_view() const { return View<P>(dtheta.data(), spec.generators(), spec.packed()); }
  View<const T> x() const { return View<const T>(act->x.data(), n, kFeatures); }
  View<T> y() const { return View<T>(act->y.data(), n, kFeatures); }
  View<const T> dy() const { return View<const T>(act->dy.data(), n, kFeatures); }
  View<T> dx() const { return View<T>(act->dx.data(), n, kFeatures); }
  View<T> z() const { return View<T>(act->z.data(), n, kOutFeatures); }
  View<const T> dz() const { return View<const T>(act->dz.data(), n, kOutFeatures); }

  /// theta -> R, Y = X R, then dX = dY R^T and dtheta: one rotation training step.
  void rotation_step() {
    rotation->set_generators(theta_view(), stream());
    rotation->apply(x(), y(), stream());
    rotation->backward(x(), dy(), dx(), dtheta_view(), rotation_workspace.data(),
                       rotation_workspace.size(), stream());
  }

  Layer& layer() {
    if (!layer_) {
      const FrozenWeight<T>& w0 = frozen_weight<T>();
      layer_ = std::make_unique<Layer>(View<const T>(w0.device.data(), kOutFeatures, kFeatures),
                                       nullptr, spec, Policy{k});
      layer_workspace = oft::DeviceBuffer<unsigned char>(layer_->workspace_bytes(n));
      layer_->set_generators(theta_view(), stream());
      check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
      check_layer();
    }
    return *layer_;
  }

  void layer_step() {
    Layer& l = *layer_;
    l.set_generators(theta_view(), stream());
    l.forward(x(), z(), layer_workspace.data(), layer_workspace.size(), stream());
    l.backward(x(), dz(), dx(), dtheta_view(), layer_workspace.data(), layer_workspace.size(),
               stream());
  }

  /// X, plus the operator's theta and rotation blocks (and their two T copies on the tensor-core
  /// path): what oft keeps between forward and backward.
  double kept_state_bytes() const {
    const double r = static_cast<double>(spec.generators());
    double bytes = r * spec.packed() * sizeof(P) + r * b * b * sizeof(P);
    if (rotation->use_tensor_cores()) bytes += 2.0 * r * b * b * sizeof(T);
    return bytes;
  }
  double kept_x_bytes() const { return static_cast<double>(n) * kFeatures * sizeof(T); }

  void set_common_counters(benchmark::State& state) const {
    state.counters["b"] = static_cast<double>(b);
    state.counters["k"] = k;
    state.counters["N"] = static_cast<double>(n);
    state.counters["d"] = static_cast<double>(kFeatures);
    state.counters["tensor_cores"] = rotation->use_tensor_cores() ? 1 : 0;
  }

  Index b;
  int k;
  Index n;
  oft::BlockSpec spec;
  std::shared_ptr<Activations<T>> act;
  std::unique_ptr<Rotation> rotation;
  oft::DeviceBuffer<P> theta, dtheta;
  oft::DeviceBuffer<unsigned char> rotation_workspace, layer_workspace;
  std::unique_ptr<Layer> layer_;
  CheckResult rotation_check, layer_check;

 private:
  static std::vector<double> host_blocks(const Rotation& op) {
    const std::vector<P> raw = op.rotation_blocks_host(stream());
    return std::vector<double>(raw.begin(), raw.end());
  }

  /// Apply rows 0 and N-1 against a double reference from the operator's own R (poisoned output
  /// first, so unwritten values fail); one rotation step: dX rows against dY R^T, dX and dtheta
  /// finite everywhere.
  void check_rotation() {
    const std::vector<double> blocks = host_blocks(*rotation);
    const double tol = check_tolerance<T>();
    fill_value(act->y.data(), act->y.size(), std::nanf(""));
    rotation->apply(x(), y(), stream());
    check(cudaStreamSynchronize(stream()), "apply (check)");
    rotation_check.require_finite("apply Y", count_nonfinite(act->y.data(), act->y.size()));
    for (Index row : {Index(0), n - 1}) {
      const auto ref = rotate_row(host_row(act->x.data(), kFeatures, row), blocks, b, false);
      rotation_check.record("apply Y row " + std::to_string(row),
                            relative_l2(host_row(act->y.data(), kFeatures, row), ref), tol);
    }
    fill_value(act->dx.data(), act->dx.size(), std::nanf(""));
    fill_value(dtheta.data(), dtheta.size(), std::nanf(""));
    rotation_step();
    check(cudaStreamSynchronize(stream()), "rotation step (check)");
    rotation_check.require_finite("backward dX", count_nonfinite(act->dx.data(), act->dx.size()));
    rotation_check.require_finite("backward dtheta", count_nonfinite(dtheta.data(), dtheta.size()));
    for (Index row : {Index(0), n - 1}) {
      const auto ref = rotate_row(host_row(act->dy.data(), kFeatures, row), blocks, b, true);
      rotation_check.record("backward dX row " + std::to_string(row),
                            relative_l2(host_row(act->dx.data(), kFeatures, row), ref), tol);
    }
  }

  /// Layer forward rows 0 and N-1 against (X R) W0^T in double; dX and dtheta finite.
  void check_layer() {
    const std::vector<double> blocks = host_blocks(layer_->rotation());
    const std::vector<float>& w0 = frozen_weight<T>().host;
    const double tol = check_tolerance<T>();
    fill_value(act->z.data(), act->z.size(), std::nanf(""));
    fill_value(act->dx.data(), act->dx.size(), std::nanf(""));
    fill_value(dtheta.data(), dtheta.size(), std::nanf(""));
    layer_step();
    check(cudaStreamSynchronize(stream()), "layer step (check)");
    layer_check.require_finite("layer Z", count_nonfinite(act->z.data(), act->z.size()));
    layer_check.require_finite("layer dX", count_nonfinite(act->dx.data(), act->dx.size()));
    layer_check.require_finite("layer dtheta", count_nonfinite(dtheta.data(), dtheta.size()));
    for (Index row : {Index(0), n - 1}) {
      const auto y = rotate_row(host_row(act->x.data(), kFeatures, row), blocks, b, false);
      layer_check.record("layer Z row " + std::to_string(row),
                         relative_l2(host_row(act->z.data(), kOutFeatures, row),
                                     linear_row(y, w0, kOutFeatures)),
                         tol);
    }
  }
};

template <class T>
Fixture<T>& fixture(Index b, int k, Index n) {
  static std::unique_ptr<Fixture<T>> cached;
  if (!cached || cached->b != b || cached->k != k || cached->n != n) {
    cached.reset();
    cached = std::make_unique<Fixture<T>>(b, k, n);
  }
  return *cached;
}

// ---------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------
template <class T>
void bm_apply(benchmark::State& state, Index b, int k, Index n, const std::string& name) {
  guarded(state, name, [&] {
    Fixture<T>& f = fixture<T>(b, k, n);
    using P = typename Fixture<T>::P;
    auto body = [&] { f.rotation->apply(f.x(), f.y(), stream()); };
    const double seconds = run_timed(state, body);
    const double d = static_cast<double>(kFeatures);
    set_bandwidth_counters(state, 2.0 * n * d * sizeof(T) + d * b * sizeof(P), seconds);
    set_flop_counters(state, 2.0 * n * d * b, seconds);
    f.set_common_counters(state);
    set_check_counters(state, f.rotation_check);
  });
}

template <class T>
void bm_rotation_step(benchmark::State& state, Index b, int k, Index n, const std::string& name) {
  guarded(state, name, [&] {
    Fixture<T>& f = fixture<T>(b, k, n);
    using P = typename Fixture<T>::P;
    auto body = [&] { f.rotation_step(); };
    const double seconds = run_timed(state, body);
    const double d = static_cast<double>(kFeatures);
    set_bandwidth_counters(state, 5.0 * n * d * sizeof(T) + 2.0 * d * b * sizeof(P), seconds);
    set_flop_counters(state, 6.0 * n * d * b, seconds);
    f.set_common_counters(state);
    state.counters["kept_bytes"] = f.kept_x_bytes() + f.kept_state_bytes();
    state.counters["kept_x_bytes"] = f.kept_x_bytes();
    state.counters["kept_state_bytes"] = f.kept_state_bytes();
    state.counters["workspace_bytes"] = static_cast<double>(f.rotation_workspace.size());
    set_check_counters(state, f.rotation_check);
  });
}

template <class T>
void bm_layer_step(benchmark::State& state, Index b, int k, Index n, const std::string& name) {
  guarded(state, name, [&] {
    Fixture<T>& f = fixture<T>(b, k, n);
    f.layer();  // built (and checked) outside the timed loop
    auto body = [&] { f.layer_step(); };
    const double seconds = run_timed(state, body);
    const double d = static_cast<double>(kFeatures);
    set_flop_counters(state, 4.0 * n * d * kOutFeatures + 6.0 * n * d * b, seconds);
    f.set_common_counters(state);
    state.counters["n_out"] = static_cast<double>(kOutFeatures);
    state.counters["kept_bytes"] = f.kept_x_bytes() + f.kept_state_bytes();
    state.counters["kept_x_bytes"] = f.kept_x_bytes();
    state.counters["kept_state_bytes"] = f.kept_state_bytes();
    state.counters["workspace_bytes"] = static_cast<double>(f.layer_workspace.size());
    set_check_counters(state, merged(f.rotation_check, f.layer_check));
  });
}

/// cuBLAS handle of the base-GEMM benchmarks (created once, default math mode: no TF32 for fp32).
inline cublasHandle_t base_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    check(cublasCreate(&h), "cublasCreate");
    return h;
  }();
  return handle;
}

template <class T>
cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return CUDA_R_16BF;
  else if constexpr (std::is_same_v<T, __half>)
    return CUDA_R_16F;
  else
    return CUDA_R_32F;
}

/// The frozen layer alone: Z = X W0^T and dX = dZ W0 with the cublasGemmEx calls OftLinear makes
/// (fp32 compute, CUBLAS_GEMM_DEFAULT), same T, no rotation, no dtheta.
template <class T>
void bm_base_step(benchmark::State& state, Index n, const std::string& name) {
  guarded(state, name, [&] {
    std::shared_ptr<Activations<T>> act = activations<T>(n);
    const FrozenWeight<T>& w0 = frozen_weight<T>();
    cublasHandle_t h = base_handle();
    check(cublasSetStream(h, stream()), "cublasSetStream");
    const int d = static_cast<int>(kFeatures), n_out = static_cast<int>(kOutFeatures);
    const int rows = static_cast<int>(n);
    const float one = 1.0f, zero = 0.0f;
    auto forward = [&] {
      // Column-major: Z^T (n_out x N) = W0 (op T of the d x n_out W0^T) * X^T (d x N).
      check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, d, &one, w0.device.data(),
                         cuda_type<T>(), d, act->x.data(), cuda_type<T>(), d, &zero, act->z.data(),
                         cuda_type<T>(), n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (forward)");
    };
    auto body = [&] {
      forward();
      // Column-major: dX^T (d x N) = W0^T (d x n_out) * dZ^T (n_out x N).
      check(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, d, rows, n_out, &one, w0.device.data(),
                         cuda_type<T>(), d, act->dz.data(), cuda_type<T>(), n_out, &zero,
                         act->dx.data(), cuda_type<T>(), d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (backward)");
    };
    // One-off check: row 0 of Z against X W0^T in double.
    CheckResult result;
    fill_value(act->z.data(), act->z.size(), std::nanf(""));
    forward();
    check(cudaStreamSynchronize(stream()), "base forward (check)");
    result.record("base Z row 0",
                  relative_l2(host_row(act->z.data(), kOutFeatures, 0),
                              linear_row(to_double(host_row(act->x.data(), kFeatures, 0)), w0.host,
                                         kOutFeatures)),
                  check_tolerance<T>());
    const double seconds = run_timed(state, body);
    set_flop_counters(state, 4.0 * n * kFeatures * kOutFeatures, seconds);
    state.counters["N"] = static_cast<double>(n);
    state.counters["d"] = static_cast<double>(kFeatures);
    state.counters["n_out"] = static_cast<double>(kOutFeatures);
    set_check_counters(state, result);
  });
}

/// Measured bandwidth ceiling: cudaMemcpyAsync device to device of the N x d activations.
template <class T>
void bm_copy(benchmark::State& state, Index n, const std::string& name) {
  guarded(state, name, [&] {
    std::shared_ptr<Activations<T>> act = activations<T>(n);
    const std::size_t bytes = act->x.bytes();
    auto body = [&] {
      check(cudaMemcpyAsync(act->y.data(), act->x.data(), bytes, cudaMemcpyDeviceToDevice,
                            stream()),
            "cudaMemcpyAsync");
    };
    const double seconds = run_timed(state, body);
    set_bandwidth_counters(state, 2.0 * static_cast<double>(bytes), seconds);
    state.counters["N"] = static_cast<double>(n);
    state.counters["d"] = static_cast<double>(kFeatures);
  });
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------
inline benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* bench) {
  return bench->UseManualTime()->Unit(benchmark::kMillisecond);
}

/// Registers, for T, per token count: copy and base step, then apply, rotation step and layer
/// step for every (b, k) (grouped so that consecutive benchmarks share one fixture).
template <class T>
void register_type(const std::vector<std::pair<Index, int>>& block_terms,
                   const std::vector<Index>& token_counts) {
  const std::string t = type_name<T>();
  for (Index n : token_counts) {
    const std::string tokens = "/N:" + std::to_string(n);
    {
      const std::string name = "cuda_copy/" + t + tokens;
      configure(benchmark::RegisterBenchmark(
          name.c_str(), [n, name](benchmark::State& s) { bm_copy<T>(s, n, name); }));
    }
    {
      const std::string name = "cuda_base_step/" + t + tokens;
      configure(benchmark::RegisterBenchmark(
          name.c_str(), [n, name](benchmark::State& s) { bm_base_step<T>(s, n, name); }));
    }
    for (const auto& [b, k] : block_terms) {
      const std::string shape = "/" + t + "/b:" + std::to_string(b) + "/k:" + std::to_string(k) + tokens;
      const Index block = b;
      const int terms = k;
      {
        const std::string name = "cuda_apply" + shape;
        configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
          bm_apply<T>(s, block, terms, n, name);
        }));
      }
      {
        const std::string name = "cuda_rotation_step" + shape;
        configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
          bm_rotation_step<T>(s, block, terms, n, name);
        }));
      }
      {
        const std::string name = "cuda_layer_step" + shape;
        configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
          bm_layer_step<T>(s, block, terms, n, name);
        }));
      }
    }
  }
}

/// Defined in bench_cuda_<type>.cu.
void register_float();
void register_bf16();
void register_half();
void register_qoft();  ///< bench_cuda_qoft.cu: quantized frozen bases (QOFT)
void register_families();  ///< bench_cuda_families.cu: BOFT, HRA and GOFT (float)

}  // namespace oft_cuda_bench

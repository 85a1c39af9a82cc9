/// \file bench_cuda_families.cu
/// bench_cuda's orthogonal families on the GPU, float activations, d = 4096:
///
///   cuda_family_step/<family>/N:<N>   parameters set, apply, backward (dX and the parameter
///                                     gradient): one training step of the rotation alone
///   cuda_family_apply/<family>/N:<N>  Y = X R alone
///
/// families: boft_m2 and boft_m4 (b = 32, Cayley-Neumann k = 4), hra_r8 and hra_r32 (no
/// Gram-Schmidt), goft (the paper's layout, d - 1 angles) and goft_butterfly ((d/2) log2 d
/// angles); the block-diagonal OFT rotation step at b = 32 is cuda_rotation_step/float/b:32/k:4
/// in bench_cuda_float.cu, for comparison in the same run. Counters: kept_x_bytes (X, which every
/// family's backward recomputes from; nothing else is kept between forward and backward besides
/// the operator's own state) and the caller workspace of one step (workspace_bytes).

#include <functional>
#include <memory>
#include <string>

#include "bench_cuda_benchmarks.cuh"

namespace oft_cuda_bench {
namespace {

/// One family's operator, its parameters and its workspaces, built once per benchmark.
struct FamilyRun {
  std::function<void()> step;   ///< parameters -> operator, apply, backward
  std::function<void()> apply;  ///< Y = X R
  double workspace_bytes = 0;   ///< caller workspace of one step
};

template <class Op>
struct Owned {
  std::unique_ptr<Op> op;
  oft::DeviceBuffer<float> params, grads;
  oft::DeviceBuffer<unsigned char> workspace, apply_workspace;
};

FamilyRun make_run(const std::string& family, Activations<float>& act) {
  const Index n = act.n, d = kFeatures;
  const oft::DeviceMatrixView<const float> x(act.x.data(), n, d), dy(act.dy.data(), n, d);
  const oft::DeviceMatrixView<float> y(act.y.data(), n, d), dx(act.dx.data(), n, d);
  FamilyRun run;
  if (family.rfind("boft_m", 0) == 0) {
    const Index m = std::stoi(family.substr(6));
    using Op = oft::Butterfly<float, oft::CayleyNeumann, oft::cuda>;
    auto owned = std::make_shared<Owned<Op>>();
    const oft::ButterflySpec spec{d / 32, 32, m};
    owned->op = std::make_unique<Op>(spec, oft::CayleyNeumann{4});
    owned->params =
        oft::DeviceBuffer<float>(static_cast<std::size_t>(spec.generators() * spec.packed()));
    owned->grads = oft::DeviceBuffer<float>(owned->params.size());
    fill_uniform(owned->params.data(), owned->params.size(), 21, 0.02f);
    owned->workspace = oft::DeviceBuffer<unsigned char>(owned->op->workspace_bytes(n));
    owned->apply_workspace = oft::DeviceBuffer<unsigned char>(owned->op->apply_workspace_bytes(n));
    const oft::DeviceMatrixView<const float> theta(owned->params.data(), spec.generators(),
                                                   spec.packed());
    const oft::DeviceMatrixView<float> dtheta(owned->grads.data(), spec.generators(),
                                              spec.packed());
    run.step = [=] {
      owned->op->set_generators(theta, stream());
      owned->op->apply(x, y, owned->apply_workspace.data(), owned->apply_workspace.size(),
                       stream());
      owned->op->backward(x, dy, dx, dtheta, owned->workspace.data(), owned->workspace.size(),
                          stream());
    };
    run.apply = [=] {
      owned->op->apply(x, y, owned->apply_workspace.data(), owned->apply_workspace.size(),
                       stream());
    };
    run.workspace_bytes = static_cast<double>(owned->workspace.size());
  } else if (family.rfind("hra_r", 0) == 0) {
    const Index r = std::stoi(family.substr(5));
    using Op = oft::Householder<float, oft::cuda>;
    auto owned = std::make_shared<Owned<Op>>();
    owned->op = std::make_unique<Op>(d, r, false);
    owned->params = oft::DeviceBuffer<float>(static_cast<std::size_t>(d * r));
    owned->grads = oft::DeviceBuffer<float>(owned->params.size());
    fill_uniform(owned->params.data(), owned->params.size(), 22, 1.0f);
    owned->workspace = oft::DeviceBuffer<unsigned char>(owned->op->workspace_bytes(n));
    owned->apply_workspace = oft::DeviceBuffer<unsigned char>(owned->op->apply_workspace_bytes(n));
    const oft::DeviceMatrixView<const float> u(owned->params.data(), d, r);
    const oft::DeviceMatrixView<float> du(owned->grads.data(), d, r);
    run.step = [=] {
      owned->op->set_vectors(u, stream());
      owned->op->apply(x, y, owned->apply_workspace.data(), owned->apply_workspace.size(),
                       stream());
      owned->op->backward(x, dy, dx, du, owned->workspace.data(), owned->workspace.size(),
                          stream());
    };
    run.apply = [=] {
      owned->op->apply(x, y, owned->apply_workspace.data(), owned->apply_workspace.size(),
                       stream());
    };
    run.workspace_bytes = static_cast<double>(owned->workspace.size());
  } else {
    const bool butterfly = family == "goft_butterfly";
    using Op = oft::Givens<float, oft::cuda>;
    auto owned = std::make_shared<Owned<Op>>();
    owned->op = std::make_unique<Op>(
        oft::GivensSpec(d, butterfly ? oft::GivensLayout::Butterfly : oft::GivensLayout::Goft));
    owned->params = oft::DeviceBuffer<float>(static_cast<std::size_t>(owned->op->spec().angles()));
    owned->grads = oft::DeviceBuffer<float>(owned->params.size());
    fill_uniform(owned->params.data(), owned->params.size(), 23, 0.1f);
    owned->workspace = oft::DeviceBuffer<unsigned char>(owned->op->workspace_bytes(n));
    run.step = [=] {
      owned->op->set_angles(owned->params.data(), stream());
      owned->op->apply(x, y, stream());
      owned->op->backward(x, dy, dx, owned->grads.data(), owned->workspace.data(),
                          owned->workspace.size(), stream());
    };
    run.apply = [=] { owned->op->apply(x, y, stream()); };
    run.workspace_bytes = static_cast<double>(owned->workspace.size());
  }
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  return run;
}

void bm_family(benchmark::State& state, const std::string& family, Index n, bool step_only_apply,
               const std::string& name) {
  guarded(state, name, [&] {
    std::shared_ptr<Activations<float>> act = activations<float>(n);
    const FamilyRun run = make_run(family, *act);
    const double seconds =
        step_only_apply ? run_timed(state, run.apply) : run_timed(state, run.step);
    const double d = static_cast<double>(kFeatures);
    state.counters["N"] = static_cast<double>(n);
    if (!step_only_apply) {
      state.counters["kept_x_bytes"] = static_cast<double>(n) * d * sizeof(float);
      state.counters["workspace_bytes"] = run.workspace_bytes;
    }
  });
}

}  // namespace

void register_families() {
  const char* families[] = {"boft_m2", "boft_m4", "hra_r8", "hra_r32", "goft", "goft_butterfly"};
  for (Index n : {Index{2048}, Index{16384}}) {
    for (const char* family : families) {
      for (bool apply_only : {false, true}) {
        const std::string name =
            std::string(apply_only ? "cuda_family_apply/" : "cuda_family_step/") + family +
            "/N:" + std::to_string(n);
        const std::string f = family;
        configure(benchmark::RegisterBenchmark(
            name.c_str(), [=](benchmark::State& s) { bm_family(s, f, n, apply_only, name); }));
      }
    }
  }
}

}  // namespace oft_cuda_bench

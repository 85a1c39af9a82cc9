/// \file bench_families.cpp
/// One training step of a frozen linear layer with each orthogonal family, input-centric, at
/// d = n_out = 4096, N = 2048, float (docs/families.md):
///
///   BM_BaseGemmStep  Z = X W0^T, dX = dZ W0: the layer without an adapter (W0 frozen)
///   BM_FamilyStep    the same two products around the family's rotation: parameters -> R,
///                    Y = X R, Z = Y W0^T; dY = dZ W0, dX and the parameter gradient from the
///                    family's backward. family = 0 OFT (block-diagonal, exact Cayley, b = 32),
///                    1 BOFT m = 2, 2 BOFT m = 4 (b = 32, exact Cayley), 3 HRA r = 8, 4 HRA r = 32,
///                    5 GOFT (d - 1 angles)
///   BM_FamilyRotationStep   the rotation's part alone (parameters, apply, backward)
///   BM_FamilyRotationStepBf16   the same with bfloat16 activations
///
/// Counter "workspace_MB": the scratch each backward keeps (the caller's workspace; HRA's is its
/// per-thread partial dQ and tile panels, independent of N). Every family's forward is checked against its dense R once, outside
/// the timed loop.

#include "bench_common.hpp"

namespace {

using namespace oft_bench;
using Scalar = float;

constexpr Index kD = 4096, kOut = 4096, kN = 2048, kB = 32;
using Bf16Matrix = Matrix<oft::bfloat16>;

const char* family_name(int family) {
  static const char* names[] = {"oft_b32", "boft_m2_b32", "boft_m4_b32", "hra_r8", "hra_r32", "goft"};
  return names[family];
}

/// One family's operator, parameters and gradient buffers.
struct Family {
  virtual ~Family() = default;
  virtual void set_parameters() = 0;
  virtual void apply(const Matrix<Scalar>& x, Matrix<Scalar>& y) = 0;
  virtual void backward(const Matrix<Scalar>& x, Matrix<Scalar>& dy_to_dx) = 0;  // dX in place
  virtual Matrix<Scalar> dense() = 0;
  virtual double workspace_bytes() const = 0;
  virtual void apply(const Bf16Matrix& x, Bf16Matrix& y) = 0;
  virtual void backward(const Bf16Matrix& x, Bf16Matrix& dy_to_dx) = 0;
};

struct OftFamily : Family {
  oft::BlockOrthogonal<Scalar, oft::ExactCayley> op{oft::BlockSpec::from_features(kD, kB)};
  oft::Generators<Scalar> theta = random_generators<Scalar>(kD / kB, kB, 0.5, 7), dtheta{kD / kB, kB};
  oft::Workspace<Scalar> ws;
  void set_parameters() override { op.set_generators(theta); }
  void apply(const Matrix<Scalar>& x, Matrix<Scalar>& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Matrix<Scalar>& x, Matrix<Scalar>& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dtheta.view(), ws);
  }
  void apply(const Bf16Matrix& x, Bf16Matrix& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Bf16Matrix& x, Bf16Matrix& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dtheta.view(), ws);
  }
  Matrix<Scalar> dense() override { return op.dense(); }
  double workspace_bytes() const override { return double(op.workspace_size()) * sizeof(Scalar); }
};

struct BoftFamily : Family {
  oft::ButterflySpec spec;
  oft::Butterfly<Scalar, oft::ExactCayley> op;
  oft::Generators<Scalar> theta, dtheta;
  oft::Workspace<Scalar> ws;
  explicit BoftFamily(Index m)
      : spec(oft::ButterflySpec::from_features(kD, kB, m)),
        op(spec),
        theta(random_generators<Scalar>(spec.generators(), kB, 0.5, 8)),
        dtheta(spec.generators(), kB) {}
  void set_parameters() override { op.set_generators(theta); }
  void apply(const Matrix<Scalar>& x, Matrix<Scalar>& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Matrix<Scalar>& x, Matrix<Scalar>& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dtheta.view(), ws);
  }
  void apply(const Bf16Matrix& x, Bf16Matrix& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Bf16Matrix& x, Bf16Matrix& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dtheta.view(), ws);
  }
  Matrix<Scalar> dense() override { return op.dense(); }
  double workspace_bytes() const override { return double(op.workspace_size(kN)) * sizeof(Scalar); }
};

struct HraFamily : Family {
  Index r;
  oft::Householder<Scalar> op;
  Matrix<Scalar> u, du;
  oft::Workspace<Scalar> ws;
  explicit HraFamily(Index reflections)
      : r(reflections), op(kD, reflections), u(random_matrix<Scalar>(kD, reflections, 9)), du(kD, reflections) {}
  void set_parameters() override { op.set_vectors(oft::view(u)); }
  void apply(const Matrix<Scalar>& x, Matrix<Scalar>& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Matrix<Scalar>& x, Matrix<Scalar>& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), oft::view(du), ws);
  }
  void apply(const Bf16Matrix& x, Bf16Matrix& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Bf16Matrix& x, Bf16Matrix& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), oft::view(du), ws);
  }
  Matrix<Scalar> dense() override { return op.dense(); }
  double workspace_bytes() const override { return double(op.workspace_size(kN)) * sizeof(Scalar); }
};

struct GoftFamily : Family {
  oft::Givens<Scalar> op{oft::GivensSpec(kD, oft::GivensLayout::Goft)};
  std::vector<Scalar> angles, dangles;
  oft::Workspace<Scalar> ws;
  GoftFamily() : angles(static_cast<std::size_t>(kD - 1)), dangles(angles.size()) {
    fill_uniform(angles.data(), kD - 1, 10);
  }
  void set_parameters() override { op.set_angles(angles); }
  void apply(const Matrix<Scalar>& x, Matrix<Scalar>& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Matrix<Scalar>& x, Matrix<Scalar>& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dangles.data(), ws);
  }
  void apply(const Bf16Matrix& x, Bf16Matrix& y) override { op.apply(oft::view(x), oft::view(y)); }
  void backward(const Bf16Matrix& x, Bf16Matrix& g) override {
    op.backward(oft::view(x), oft::view(g), oft::view(g), dangles.data(), ws);
  }
  Matrix<Scalar> dense() override { return op.dense(); }
  double workspace_bytes() const override { return double(op.workspace_size()) * sizeof(Scalar); }
};

std::unique_ptr<Family> make_family(int family) {
  switch (family) {
    case 0: return std::make_unique<OftFamily>();
    case 1: return std::make_unique<BoftFamily>(2);
    case 2: return std::make_unique<BoftFamily>(4);
    case 3: return std::make_unique<HraFamily>(8);
    case 4: return std::make_unique<HraFamily>(32);
    default: return std::make_unique<GoftFamily>();
  }
}

struct Data {
  Matrix<Scalar> w0 = random_matrix<Scalar>(kOut, kD, 21) / std::sqrt(Scalar(kD));
  Matrix<Scalar> x = random_matrix<Scalar>(kN, kD, 1), y = random_matrix<Scalar>(kN, kD, 2),
                 z = random_matrix<Scalar>(kN, kOut, 3), dz = random_matrix<Scalar>(kN, kOut, 4),
                 g = random_matrix<Scalar>(kN, kD, 5);
  Bf16Matrix xb = x.cast<oft::bfloat16>(), yb = y.cast<oft::bfloat16>(), gb = g.cast<oft::bfloat16>();
  std::unique_ptr<Family> families[6];
  std::string error[6];
};

Data& data() {
  static Data d;
  return d;
}

/// The family's operator, built and checked (Y = X R against the dense R on 8 rows) once.
Family& family(int index, benchmark::State& state) {
  Data& s = data();
  if (!s.families[index]) {
    s.families[index] = make_family(index);
    Family& f = *s.families[index];
    f.set_parameters();
    f.apply(s.x, s.y);
    const Matrix<Scalar> dense = f.dense();
    const double e = relative_error(s.y.topRows(8), s.x.topRows(8) * dense);
    if (!(e <= tolerance<Scalar>(kD) * 8)) s.error[index] = "apply disagrees with dense R: " + std::to_string(e);
  }
  if (!s.error[index].empty()) state.SkipWithError(s.error[index].c_str());
  state.SetLabel(family_name(index));
  state.counters["workspace_MB"] = s.families[index]->workspace_bytes() / 1e6;
  return *s.families[index];
}

void BM_BaseGemmStep(benchmark::State& state) {
  Data& s = data();
  for (auto _ : state) {
    s.z.noalias() = s.x * s.w0.transpose();
    s.g.noalias() = s.dz * s.w0;
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {4.0 * kN * kD * kOut, 0.0});
}

void BM_FamilyStep(benchmark::State& state) {
  Data& s = data();
  Family& f = family(static_cast<int>(state.range(0)), state);
  for (auto _ : state) {
    f.set_parameters();
    f.apply(s.x, s.y);
    s.z.noalias() = s.y * s.w0.transpose();
    s.g.noalias() = s.dz * s.w0;
    f.backward(s.x, s.g);
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {4.0 * kN * kD * kOut, 0.0});  // the base products only
}

void BM_FamilyRotationStep(benchmark::State& state) {
  Data& s = data();
  Family& f = family(static_cast<int>(state.range(0)), state);
  for (auto _ : state) {
    f.set_parameters();
    f.apply(s.x, s.y);
    f.backward(s.x, s.g);
    benchmark::ClobberMemory();
  }
}

/// The rotation's part with bfloat16 activations (X, dY, Y, dX; parameters and sums in float).
/// OFT's block operator uses its default arithmetic (vdpbf16ps where the CPU has it); the other
/// families widen to float and round each output once.
void BM_FamilyRotationStepBf16(benchmark::State& state) {
  Data& s = data();
  Family& f = family(static_cast<int>(state.range(0)), state);
  for (auto _ : state) {
    f.set_parameters();
    f.apply(s.xb, s.yb);
    f.backward(s.xb, s.gb);
    benchmark::ClobberMemory();
  }
}

BENCHMARK(BM_BaseGemmStep)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FamilyStep)->DenseRange(0, 5)->ArgName("family")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FamilyRotationStep)->DenseRange(0, 5)->ArgName("family")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FamilyRotationStepBf16)->DenseRange(0, 5)->ArgName("family")->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

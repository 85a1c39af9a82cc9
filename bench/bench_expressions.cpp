/// \file bench_expressions.cpp
/// A few tokens through one generator: matrix-free expressions vs forming R first.
///
///   BM_NeumannMatrixFree/b/rows/k   cayley_neumann(skew(row, b), k).apply(X): Horner on Q read
///                                   straight from packed storage, (k+1) products X Q,
///                                   2 (k+1) rows b^2 flops, no b^3 work
///   BM_NeumannFormR/b/rows/k        R = cayley_neumann(skew(row, b), k).eval(), then Y = X R:
///                                   2 (k+1) b^3 + 2 rows b^2 flops
///   BM_CayleyMatrixFree/b/rows      cayley(skew(row, b)).apply(X): X + X Q, one LU of I + Q and a
///                                   triangular solve per row
///   BM_CayleyFormR/b/rows           R = cayley(skew(row, b)).eval() (LU solve of b right-hand
///                                   sides), then Y = X R
///
/// rows in {1, 2, 4, 8, 16, 64}, b in {32, 64}, float, single generator (single thread: these
/// are per-generator costs). "tokens" is a rate counter (rows per second). Each pair is checked
/// to agree once, outside the timed loop.
#include "bench_common.hpp"

namespace {

using namespace oft_bench;
using Scalar = float;
constexpr double kRho = 0.5;

struct Inputs {
  oft::Generators<Scalar> theta;
  Matrix<Scalar> x;
};

Inputs inputs(Index b, Index rows) {
  return {random_generators<Scalar>(1, b, kRho, 5), random_matrix<Scalar>(rows, b, 6)};
}

void set_token_counter(benchmark::State& state, Index rows) {
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
}

bool check(benchmark::State& state, const Matrix<Scalar>& a, const Matrix<Scalar>& b, Index depth) {
  const double e = relative_error(a, b);
  if (e <= tolerance<Scalar>(depth)) return true;
  state.SkipWithError(("matrix-free and formed-R results differ: " + std::to_string(e)).c_str());
  return false;
}

void BM_NeumannMatrixFree(benchmark::State& state) {
  const Index b = state.range(0), rows = state.range(1);
  const int k = static_cast<int>(state.range(2));
  const Inputs in = inputs(b, rows);
  const auto expr = oft::cayley_neumann(oft::skew(in.theta.row(0), b), k);
  const Matrix<Scalar> ref = in.x * expr.eval();
  if (!check(state, expr.apply(in.x), ref, b * (k + 2))) return;
  for (auto _ : state) {
    auto y = expr.apply(in.x);
    benchmark::DoNotOptimize(y.data());
  }
  set_rate_counters(state, {2.0 * (k + 1) * rows * b * b, 0.0});
  set_token_counter(state, rows);
}

void BM_NeumannFormR(benchmark::State& state) {
  const Index b = state.range(0), rows = state.range(1);
  const int k = static_cast<int>(state.range(2));
  const Inputs in = inputs(b, rows);
  const auto expr = oft::cayley_neumann(oft::skew(in.theta.row(0), b), k);
  Matrix<Scalar> y(rows, b);
  for (auto _ : state) {
    const oft::SquareMatrix<Scalar> r = expr.eval();
    y.noalias() = in.x * r;
    benchmark::DoNotOptimize(y.data());
  }
  set_rate_counters(state, {2.0 * (k + 1) * b * b * b + 2.0 * rows * b * b, 0.0});
  set_token_counter(state, rows);
}

void BM_CayleyMatrixFree(benchmark::State& state) {
  const Index b = state.range(0), rows = state.range(1);
  const Inputs in = inputs(b, rows);
  const auto expr = oft::cayley(oft::skew(in.theta.row(0), b));
  const Matrix<Scalar> ref = in.x * expr.eval();
  if (!check(state, expr.apply(in.x), ref, b * 4)) return;
  for (auto _ : state) {
    auto y = expr.apply(in.x);
    benchmark::DoNotOptimize(y.data());
  }
  set_token_counter(state, rows);
}

void BM_CayleyFormR(benchmark::State& state) {
  const Index b = state.range(0), rows = state.range(1);
  const Inputs in = inputs(b, rows);
  const auto expr = oft::cayley(oft::skew(in.theta.row(0), b));
  Matrix<Scalar> y(rows, b);
  for (auto _ : state) {
    const oft::SquareMatrix<Scalar> r = expr.eval();
    y.noalias() = in.x * r;
    benchmark::DoNotOptimize(y.data());
  }
  set_token_counter(state, rows);
}

const std::vector<int64_t> kRows = {1, 2, 4, 8, 16, 64};

BENCHMARK(BM_NeumannMatrixFree)
    ->ArgsProduct({{32, 64}, kRows, {4}})
    ->ArgNames({"b", "rows", "k"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_NeumannFormR)
    ->ArgsProduct({{32, 64}, kRows, {4}})
    ->ArgNames({"b", "rows", "k"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CayleyMatrixFree)
    ->ArgsProduct({{32, 64}, kRows})
    ->ArgNames({"b", "rows"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CayleyFormR)
    ->ArgsProduct({{32, 64}, kRows})
    ->ArgNames({"b", "rows"})
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();

/// \file bench_roofline.cpp
/// This machine's ceilings, measured the same way as everything else (summarize.py builds the
/// roofline min(FMA peak, bandwidth x flops/byte) from these numbers):
///
///   BM_FmaPeak<float|double>/threads:T   register-only FMA chains, no memory traffic
///   BM_StreamScaleInPlace/threads:T      a[i] = s * a[i] over 256 MiB (read + write, the
///                                        access pattern of an in-place apply)
///   BM_StreamScale/threads:T             b[i] = s * a[i], 128 MiB -> 128 MiB (the counted bytes
///                                        leave out the write-allocate read of b)
///   BM_StreamRead/threads:T              sum of 256 MiB with SIMD partial sums (not latency bound)
///   BM_PanelRead/rows:R/segment:S/prefetch:P/threads:T
///                                        the same 256 MiB as 16 KiB rows (d = 4096 floats), read
///                                        in the order the kernels read activations: per thread a
///                                        chunk of rows, per panel of R rows, S bytes of each row
///                                        in turn (P = 1: the next such group prefetched into L2
///                                        first, as backward does). R = 8, S = 128 is the apply's
///                                        order at b = 32; R = 64, S = 1024, P = 1 the backward's
///   BM_GemmCeiling/n                     one large square float GEMM through Eigen (and the linked
///                                        BLAS when EIGEN_USE_BLAS): the practical compute ceiling
///
/// The kernels use Eigen's packet primitives: AVX2/FMA with -march=native on x86, NEON on ARM,
/// plain scalars without SIMD, so the file builds everywhere. Buffers are allocated and touched
/// before timing (first touch of fresh pages is several times slower than streaming).

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace oft_bench;
namespace ei = Eigen::internal;

template <class Scalar>
using Packet = typename ei::packet_traits<Scalar>::type;
template <class Scalar>
constexpr int kLanes = ei::unpacket_traits<Packet<Scalar>>::size;

int thread_count(const benchmark::State& state) { return static_cast<int>(state.range(0)); }

// ---------------------------------------------------------------------------------------------
// FMA peak
// ---------------------------------------------------------------------------------------------
// 12 independent accumulators cover latency x throughput (4 cycles x 2 pipes on Zen 3 and most
// AVX2 cores) and, with the two constants, fit in 16 vector registers.
constexpr int kChains = 12;
constexpr Index kFmaSteps = Index(1) << 19;

template <class Scalar>
Scalar fma_chains(Index steps, Scalar seed) {
  using P = Packet<Scalar>;
  P acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = ei::pset1<P>(seed + Scalar(j) * Scalar(0.01));
  // acc <- acc * a + c converges to c / (1 - a): values stay normal and finite forever.
  const P a = ei::pset1<P>(Scalar(0.999)), c = ei::pset1<P>(Scalar(0.001));
  for (Index s = 0; s < steps; ++s) {
#if defined(__GNUC__)
#pragma GCC unroll 12
#endif
    for (int j = 0; j < kChains; ++j) acc[j] = ei::pmadd(acc[j], a, c);
  }
  P total = acc[0];
  for (int j = 1; j < kChains; ++j) total = ei::padd(total, acc[j]);
  return ei::predux(total);
}

template <class Scalar>
void BM_FmaPeak(benchmark::State& state) {
  const int threads = thread_count(state);
  std::vector<Scalar> sink(static_cast<size_t>(threads));
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      int t = 0;
#if defined(_OPENMP)
      t = omp_get_thread_num();
#endif
      sink[static_cast<size_t>(t)] = fma_chains<Scalar>(kFmaSteps, Scalar(t));
    }
    benchmark::DoNotOptimize(sink.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * kLanes<Scalar> * kChains * static_cast<double>(kFmaSteps) * threads;
  set_rate_counters(state, {flops, 0.0});
  state.counters["lanes"] = kLanes<Scalar>;
}

BENCHMARK_TEMPLATE(BM_FmaPeak, float)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();
BENCHMARK_TEMPLATE(BM_FmaPeak, double)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();

// ---------------------------------------------------------------------------------------------
// Streaming bandwidth
// ---------------------------------------------------------------------------------------------
constexpr Index kStreamBytes = Index(256) << 20;
constexpr Index kFloats = kStreamBytes / Index(sizeof(float));

/// 256 MiB of floats, allocated and touched once per process.
float* stream_buffer(int which) {
  static std::unique_ptr<float[]> buffers[2];
  auto& buf = buffers[which];
  if (!buf) {
    buf.reset(new float[static_cast<size_t>(kFloats)]);
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < kFloats; ++i) buf[static_cast<size_t>(i)] = 1.0f;
  }
  return buf.get();
}

/// Scale factor the compiler cannot see (1.0f keeps the data unchanged across iterations).
float opaque_one() {
  volatile float one = 1.0f;
  return one;
}

void BM_StreamScaleInPlace(benchmark::State& state) {
  const int threads = thread_count(state);
  float* a = stream_buffer(0);
  const float s = opaque_one();
  for (auto _ : state) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (Index i = 0; i < kFloats; ++i) a[i] *= s;
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {0.0, 2.0 * kStreamBytes});
}

void BM_StreamScale(benchmark::State& state) {
  const int threads = thread_count(state);
  const Index n = kFloats / 2;  // 128 MiB in, 128 MiB out
  const float* a = stream_buffer(0);
  float* b = stream_buffer(1);
  const float s = opaque_one();
  for (auto _ : state) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (Index i = 0; i < n; ++i) b[i] = s * a[i];
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {0.0, 2.0 * n * sizeof(float)});
}

/// Sum of a[begin, end) with 8 packet accumulators, so loads, not the add latency, set the pace.
float read_sum(const float* a, Index begin, Index end) {
  using P = Packet<float>;
  constexpr int L = kLanes<float>, kAcc = 8;
  P acc[kAcc];
  for (auto& p : acc) p = ei::pset1<P>(0.0f);
  Index i = begin;
  for (; i + kAcc * L <= end; i += kAcc * L)
    for (int j = 0; j < kAcc; ++j) acc[j] = ei::padd(acc[j], ei::ploadu<P>(a + i + j * L));
  P total = acc[0];
  for (int j = 1; j < kAcc; ++j) total = ei::padd(total, acc[j]);
  float sum = ei::predux(total);
  for (; i < end; ++i) sum += a[i];
  return sum;
}

/// This thread's index and the team's size inside a parallel region (0 and 1 without OpenMP).
std::pair<int, int> team_position() {
#if defined(_OPENMP)
  return {omp_get_thread_num(), omp_get_num_threads()};
#else
  return {0, 1};
#endif
}

/// Per-thread sums of the all-ones stream buffer, each in its own cache line (an OpenMP
/// reduction clause lost the result here with GCC 12 when the variable is also passed to
/// DoNotOptimize).
class ThreadSums {
 public:
  explicit ThreadSums(int threads) : sums_(static_cast<size_t>(threads) * 8, 0.0) {}
  double& operator[](int thread) { return sums_[static_cast<size_t>(thread) * 8]; }
  double* data() { return sums_.data(); }
  /// Fails the benchmark unless the sums add up to kFloats: every float read exactly once.
  void check(benchmark::State& state, const std::string& what) const {
    double total = 0;
    for (size_t t = 0; t < sums_.size(); t += 8) total += sums_[t];
    if (std::abs(total - static_cast<double>(kFloats)) > 1e-3 * static_cast<double>(kFloats))
      state.SkipWithError((what + " gave a wrong sum: " + std::to_string(total)).c_str());
  }

 private:
  std::vector<double> sums_;
};

void BM_StreamRead(benchmark::State& state) {
  const int threads = thread_count(state);
  const float* a = stream_buffer(0);
  ThreadSums sums(threads);
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      const auto [t, nt] = team_position();
      const Index chunk = (kFloats / nt + 63) / 64 * 64;
      sums[t] = read_sum(a, std::min(kFloats, t * chunk), std::min(kFloats, (t + 1) * chunk));
    }
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  sums.check(state, "read reduction");
  set_rate_counters(state, {0.0, static_cast<double>(kStreamBytes)});
}

/// Adds the floats of a[0, n) (n a multiple of the packet size) into four packet sums.
void add_segment(const float* a, Index n, Packet<float> (&acc)[4]) {
  constexpr int L = kLanes<float>;
  Index i = 0;
  for (; i + 4 * L <= n; i += 4 * L)
    for (int j = 0; j < 4; ++j) acc[j] = ei::padd(acc[j], ei::ploadu<Packet<float>>(a + i + j * L));
  for (int j = 0; i < n; i += L, ++j) acc[j] = ei::padd(acc[j], ei::ploadu<Packet<float>>(a + i));
}

void BM_PanelRead(benchmark::State& state) {
  constexpr Index kRow = 4096;  // floats per row: the d = 4096 activations, rows 16 KiB apart
  constexpr Index kRows = kFloats / kRow;
  const Index panel = state.range(0);
  const Index segment = state.range(1) / static_cast<Index>(sizeof(float));
  const bool prefetch = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  if (segment % kLanes<float> != 0 || kRow % segment != 0 || kRows % (panel * threads) != 0)
    return state.SkipWithError("segment must be a multiple of the packet and divide the row, "
                               "and the panels must split evenly between the threads");
  const float* a = stream_buffer(0);
  ThreadSums sums(threads);
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      const auto [t, nt] = team_position();
      const Index first = t * (kRows / nt), last = first + kRows / nt;
      Packet<float> acc[4];
      for (auto& p : acc) p = ei::pset1<Packet<float>>(0.0f);
      for (Index p = first; p < last; p += panel)
        for (Index c = 0; c < kRow; c += segment) {
#if defined(__GNUC__) || defined(__clang__)
          if (prefetch) {
            const Index next_p = c + segment < kRow ? p : p + panel;
            const Index next_c = c + segment < kRow ? c + segment : 0;
            for (Index r = next_p; r < std::min(next_p + panel, last); ++r)
              for (Index k = 0; k < segment; k += 64 / Index(sizeof(float)))
                __builtin_prefetch(a + r * kRow + next_c + k, 0, 2);
          }
#endif
          for (Index r = p; r < p + panel; ++r) add_segment(a + r * kRow + c, segment, acc);
        }
      sums[t] = ei::predux(ei::padd(ei::padd(acc[0], acc[1]), ei::padd(acc[2], acc[3])));
    }
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  sums.check(state, "panel read");
  set_rate_counters(state, {0.0, static_cast<double>(kStreamBytes)});
}

BENCHMARK(BM_StreamScaleInPlace)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();
BENCHMARK(BM_StreamScale)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();
BENCHMARK(BM_StreamRead)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();
// Sequential rows; the apply's order (b = 32); one-block copies of 64 rows; the backward's
// groups, without and with the prefetch.
BENCHMARK(BM_PanelRead)
    ->ArgsProduct({{1}, {16384}, {0}, {1, 2}})
    ->ArgsProduct({{8}, {128}, {0}, {1, 2}})
    ->ArgsProduct({{64}, {128}, {0}, {1, 2}})
    ->ArgsProduct({{64}, {1024}, {0, 1}, {1, 2}})
    ->ArgNames({"rows", "segment", "prefetch", "threads"})
    ->UseRealTime();

// ---------------------------------------------------------------------------------------------
// Practical GEMM ceiling (default thread count, like every other benchmark)
// ---------------------------------------------------------------------------------------------
void BM_GemmCeiling(benchmark::State& state) {
  const Index n = state.range(0);
  const Matrix<float> a = random_matrix<float>(n, n, 1), b = random_matrix<float>(n, n, 2);
  Matrix<float> c = Matrix<float>::Zero(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, {2.0 * n * n * n, 3.0 * n * n * sizeof(float)});
}

BENCHMARK(BM_GemmCeiling)->Arg(2048)->ArgName("n")->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

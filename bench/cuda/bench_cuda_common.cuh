#pragma once
/// \file bench_cuda_common.cuh
/// What the CUDA benchmarks share: the device and its theoretical memory bandwidth, random device
/// data, CUDA-event timing with the per-step time written as Google Benchmark's manual time, the
/// fixtures (operator, layer, activations, caller-owned workspaces: allocated once, outside the
/// timed loop) and the one-off correctness checks that every fixture runs before it is timed.
///
/// Timing. One benchmark iteration is `inner` back-to-back steps on one stream between two CUDA
/// events; the iteration's manual time is elapsed / inner, so the reported real_time is the time
/// per step. `inner` is chosen once per benchmark (after two warm-up steps) so that a timed batch
/// lasts about kBatchSeconds; it is written as the counter "inner". Steps are enqueued back to back
/// as a training loop enqueues them, so host launch gaps that the GPU cannot hide are counted.
///
/// Cost model (S = sizeof(T), P = sizeof(parameter type: float for 16-bit T), d = r b):
///   apply          Y = X R               2 N d b flops   bytes 2 N d S + d b P
///   rotation step  theta->R, apply, backward (dX = dY R^T, G = X^T dY, dtheta)
///                                        6 N d b flops   bytes 5 N d S + 2 d b P
///   layer step     rotation step + Z = Y W0^T + dY = dZ W0     + 4 N d n_out flops
///   base step      Z = X W0^T, dX = dZ W0 (cuBLAS, same calls as OftLinear)  4 N d n_out flops
///   copy           cudaMemcpyAsync device to device of N d S bytes: bytes 2 N d S (read + write)
/// Counters are plain values computed from the measured mean time per step (GBps = 1e9 bytes/s,
/// TFLOPs = 1e12 flop/s), not Google Benchmark rate counters.
///
/// Bytes kept for backward (counter kept_bytes, on rotation_step and layer_step): what oft needs
/// between forward and backward: X (the caller keeps it and passes it to backward; N d S), the
/// operator's copy of theta (r m P) and its rotation blocks (r b^2 P, plus two T copies of them on
/// the tensor-core path). Y and dY live in the caller-owned workspace only during a call.

#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <oft/cuda.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace oft_cuda_bench {

using oft::Index;

/// Frozen layer and feature sizes of every benchmark (d = n_out = 4096).
inline constexpr Index kFeatures = 4096;
inline constexpr Index kOutFeatures = 4096;
/// Target duration of one timed batch of back-to-back steps.
inline constexpr double kBatchSeconds = 2e-3;
inline constexpr int kMaxInner = 256;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("bench_cuda: ") + what + " failed: " +
                             cudaGetErrorString(status) + " (" + cudaGetErrorName(status) + ")");
}
inline void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("bench_cuda: ") + what + " failed: cuBLAS status " +
                             std::to_string(static_cast<int>(status)));
}

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------
template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>)
    return "float";
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return "bf16";
  else if constexpr (std::is_same_v<T, __half>)
    return "half";
  else
    return "double";
}

inline float host_float(float v) { return v; }
inline float host_float(double v) { return static_cast<float>(v); }
inline float host_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float host_float(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T device_from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else
    return static_cast<T>(v);
}
template <class T>
__device__ __forceinline__ float device_to_float(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>)
    return __half2float(v);
  else
    return static_cast<float>(v);
}

// ---------------------------------------------------------------------------------------------
// The device (queried once, in main, before any benchmark runs)
// ---------------------------------------------------------------------------------------------
struct Device {
  std::string name;
  int ordinal = 0;
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
  int memory_clock_khz = 0;     ///< cudaDevAttrMemoryClockRate (peak memory clock, kHz)
  int memory_bus_width = 0;     ///< cudaDevAttrGlobalMemoryBusWidth (bits)
  double peak_bytes_per_s = 0;  ///< memory clock * 2 (double data rate) * bus width / 8
  std::size_t l2_bytes = 0;
  std::size_t global_bytes = 0;
  int runtime_version = 0, driver_version = 0;
};

inline Device& device() {
  static Device d;
  return d;
}

/// Fills device() from the current device. cudaDeviceProp lost memoryClockRate in CUDA 13, so
/// the bandwidth inputs come from cudaDeviceGetAttribute.
inline void query_device() {
  Device& d = device();
  check(cudaGetDevice(&d.ordinal), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, d.ordinal), "cudaGetDeviceProperties");
  d.name = prop.name;
  d.cc_major = prop.major;
  d.cc_minor = prop.minor;
  d.multiprocessors = prop.multiProcessorCount;
  d.l2_bytes = static_cast<std::size_t>(prop.l2CacheSize);
  d.global_bytes = prop.totalGlobalMem;
  check(cudaDeviceGetAttribute(&d.memory_clock_khz, cudaDevAttrMemoryClockRate, d.ordinal),
        "cudaDeviceGetAttribute(cudaDevAttrMemoryClockRate)");
  check(cudaDeviceGetAttribute(&d.memory_bus_width, cudaDevAttrGlobalMemoryBusWidth, d.ordinal),
        "cudaDeviceGetAttribute(cudaDevAttrGlobalMemoryBusWidth)");
  d.peak_bytes_per_s = 1e3 * d.memory_clock_khz * 2.0 * (d.memory_bus_width / 8.0);
  check(cudaRuntimeGetVersion(&d.runtime_version), "cudaRuntimeGetVersion");
  check(cudaDriverGetVersion(&d.driver_version), "cudaDriverGetVersion");
}

/// The one stream every benchmark enqueues on (non-blocking, created on first use).
inline cudaStream_t stream() {
  static cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    check(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking), "cudaStreamCreate");
    return created;
  }();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Device data
// ---------------------------------------------------------------------------------------------
__host__ __device__ inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// data[i] = scale * u_i, u_i uniform in [-1, 1) from (seed, i).
template <class T>
__global__ void fill_uniform_kernel(T* data, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t bits = splitmix64(seed * 0x100000001B3ull + i);
    const float u = static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits
    data[i] = device_from_float<T>(scale * u);
  }
}

template <class T>
__global__ void fill_value_kernel(T* data, std::size_t n, float value) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    data[i] = device_from_float<T>(value);
}

template <class T>
__global__ void count_nonfinite_kernel(const T* data, std::size_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    if (!isfinite(device_to_float<T>(data[i]))) ++local;
  if (local) atomicAdd(count, local);
}

inline unsigned grid_for(std::size_t n) {
  const std::size_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(std::min<std::size_t>(blocks, 65535));
}

template <class T>
void fill_uniform(T* data, std::size_t n, std::uint64_t seed, float scale) {
  if (n == 0) return;
  fill_uniform_kernel<T><<<grid_for(n), 256, 0, stream()>>>(data, n, seed, scale);
  check(cudaGetLastError(), "fill_uniform_kernel launch");
}

template <class T>
void fill_value(T* data, std::size_t n, float value) {
  if (n == 0) return;
  fill_value_kernel<T><<<grid_for(n), 256, 0, stream()>>>(data, n, value);
  check(cudaGetLastError(), "fill_value_kernel launch");
}

/// Number of NaN/Inf among n device values (synchronizes the stream).
template <class T>
unsigned long long count_nonfinite(const T* data, std::size_t n) {
  oft::DeviceBuffer<unsigned long long> count(1);
  check(cudaMemsetAsync(count.data(), 0, sizeof(unsigned long long), stream()), "cudaMemsetAsync");
  if (n > 0) {
    count_nonfinite_kernel<T><<<grid_for(n), 256, 0, stream()>>>(data, n, count.data());
    check(cudaGetLastError(), "count_nonfinite_kernel launch");
  }
  unsigned long long host = 0;
  check(cudaMemcpyAsync(&host, count.data(), sizeof(host), cudaMemcpyDeviceToHost, stream()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  return host;
}

/// Rows [row, row+1) of an N x cols device matrix, as floats on the host (synchronizes).
template <class T>
std::vector<float> host_row(const T* data, Index cols, Index row) {
  std::vector<T> raw(static_cast<std::size_t>(cols));
  check(cudaMemcpyAsync(raw.data(), data + row * cols, raw.size() * sizeof(T),
                        cudaMemcpyDeviceToHost, stream()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  std::vector<float> out(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) out[i] = host_float(raw[i]);
  return out;
}

template <class T>
std::vector<float> host_matrix(const T* data, std::size_t count) {
  std::vector<T> raw(count);
  check(cudaMemcpyAsync(raw.data(), data, count * sizeof(T), cudaMemcpyDeviceToHost, stream()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  std::vector<float> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = host_float(raw[i]);
  return out;
}

/// ||a - ref||_2 / ||ref||_2 in double (NaN in a gives NaN).
inline double relative_l2(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double diff = static_cast<double>(a[i]) - ref[i];
    num += diff * diff;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

/// Relative tolerance of the one-off output checks: the output is rounded to T once.
template <class T>
double check_tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return 2e-2;
  else if constexpr (std::is_same_v<T, __half>)
    return 5e-3;
  else
    return 1e-4;
}

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------
class EventPair {
 public:
  EventPair() {
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~EventPair() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;

  /// Seconds the stream spent between the two events around `inner` calls of body().
  template <class Body>
  double time(Body& body, int inner) {
    check(cudaEventRecord(start_, stream()), "cudaEventRecord");
    for (int i = 0; i < inner; ++i) body();
    check(cudaEventRecord(stop_, stream()), "cudaEventRecord");
    check(cudaEventSynchronize(stop_), "cudaEventSynchronize (a kernel of the step failed)");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return 1e-3 * ms;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

/// Runs the benchmark loop over `body` (one step, enqueued on stream()); returns the mean
/// seconds per step over the timed iterations (0 when the loop was skipped).
template <class Body>
double run_timed(benchmark::State& state, Body&& body) {
  EventPair events;
  body();  // warm-up: first launches, lazy module loading, cuBLAS heuristics
  body();
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (warm-up)");
  const double once = events.time(body, 1);
  const int inner =
      static_cast<int>(std::clamp(std::ceil(kBatchSeconds / std::max(once, 1e-7)), 1.0,
                                  static_cast<double>(kMaxInner)));
  double total = 0;
  std::int64_t steps = 0;
  for (auto _ : state) {
    const double per_step = events.time(body, inner) / inner;
    state.SetIterationTime(per_step);
    total += per_step;
    ++steps;
  }
  state.counters["inner"] = inner;
  return steps > 0 ? total / static_cast<double>(steps) : 0.0;
}

/// Bandwidth counters for `bytes` moved per step in `seconds`.
/// bytes_over_l2 < ~4 warns that part of the traffic may be served by the L2 (back-to-back steps
/// reuse the same buffers), so GBps can then exceed what device memory alone delivers.
inline void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds) {
  state.counters["bytes"] = bytes;
  if (device().l2_bytes > 0) state.counters["bytes_over_l2"] = bytes / device().l2_bytes;
  if (seconds <= 0) return;
  const double rate = bytes / seconds;
  state.counters["GBps"] = rate * 1e-9;
  if (device().peak_bytes_per_s > 0)
    state.counters["bw_fraction"] = rate / device().peak_bytes_per_s;
}

inline void set_flop_counters(benchmark::State& state, double flops, double seconds) {
  state.counters["flops"] = flops;
  if (seconds > 0) state.counters["TFLOPs"] = flops / seconds * 1e-12;
}

/// Runs `fn` and turns any exception into SkipWithError (the loop must not have started).
template <class Fn>
void guarded(benchmark::State& state, const std::string& name, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s: %s\n", name.c_str(), e.what());
    state.SkipWithError(e.what());
  }
}

}  // namespace oft_cuda_bench

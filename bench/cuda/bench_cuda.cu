/// \file bench_cuda.cu
/// Google Benchmark of oft's CUDA backend (main; the benchmarks are in bench_cuda_benchmarks.cuh,
/// instantiated per activation type in bench_cuda_<type>.cu).
///
///   bench_cuda [--benchmark_filter=REGEX] [--benchmark_repetitions=5
///              --benchmark_report_aggregates_only=true] [--benchmark_min_time=0.1]
///              [--benchmark_out=FILE --benchmark_out_format=json]
///
/// Shapes: d = n_out = 4096, N in {4096, 16384}; float and bf16 at b in {16, 32, 64} with
/// Cayley-Neumann k = 3 (PEFT's default num_cayley_neumann_terms = 5) and k = 4 at b = 32; __half
/// at b = 32, k in {3, 4}. Times are CUDA-event times per step (manual time, milliseconds); the
/// GPU, its theoretical memory bandwidth and the toolkit versions are in the JSON "context".
/// Without a usable CUDA device it prints "no CUDA device: skipping GPU benchmarks" and exits 0.

#include <cstdio>
#include <string>

#include "bench_cuda_benchmarks.cuh"

namespace {

std::string version_string(int v) {  // 12080 -> "12.8"
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

void add_context() {
  using oft_cuda_bench::device;
  const auto& d = device();
  benchmark::AddCustomContext("gpu_name", d.name);
  benchmark::AddCustomContext("gpu_compute_capability",
                              std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
  benchmark::AddCustomContext("gpu_multiprocessors", std::to_string(d.multiprocessors));
  benchmark::AddCustomContext("gpu_memory_bytes", std::to_string(d.global_bytes));
  benchmark::AddCustomContext("gpu_l2_bytes", std::to_string(d.l2_bytes));
  benchmark::AddCustomContext("gpu_memory_clock_khz", std::to_string(d.memory_clock_khz));
  benchmark::AddCustomContext("gpu_memory_bus_width_bits", std::to_string(d.memory_bus_width));
  benchmark::AddCustomContext("gpu_peak_memory_bandwidth_GBps",
                              std::to_string(d.peak_bytes_per_s * 1e-9));
  benchmark::AddCustomContext("gpu_peak_memory_bandwidth_formula",
                              "cudaDevAttrMemoryClockRate (kHz) * 1e3 * 2 * "
                              "cudaDevAttrGlobalMemoryBusWidth / 8");
  benchmark::AddCustomContext("cuda_runtime_version", version_string(d.runtime_version));
  benchmark::AddCustomContext("cuda_driver_version", version_string(d.driver_version));
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    benchmark::AddCustomContext("cublas_version", std::to_string(major) + "." +
                                                      std::to_string(minor) + "." +
                                                      std::to_string(patch));
  benchmark::AddCustomContext("nvcc_version", std::to_string(__CUDACC_VER_MAJOR__) + "." +
                                                  std::to_string(__CUDACC_VER_MINOR__) + "." +
                                                  std::to_string(__CUDACC_VER_BUILD__));
  benchmark::AddCustomContext(
      "oft_timing",
      "CUDA events around `inner` back-to-back steps on one non-blocking stream; manual time = "
      "elapsed / inner (per step); inner chosen once per benchmark for ~2 ms batches after two "
      "warm-up steps; caller-owned workspaces allocated once outside the timed loop");
  benchmark::AddCustomContext(
      "oft_counters",
      "bytes/GBps/bw_fraction: cost model of bench_cuda_common.cuh over the mean step time, "
      "bw_fraction against gpu_peak_memory_bandwidth_GBps (bytes_over_l2 < ~4: partly L2-resident, "
      "GBps may exceed device memory's); kept_bytes = X + theta + R (+ the "
      "tensor-core copies of R); check_ok/check_err: one-off output checks against a double "
      "host reference");
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!oft::cuda_device_available()) {
    std::printf("no CUDA device: skipping GPU benchmarks\n");
    return 0;
  }
  try {
    oft_cuda_bench::query_device();
    add_context();
    oft_cuda_bench::register_float();
    oft_cuda_bench::register_bf16();
    oft_cuda_bench::register_half();
    oft_cuda_bench::register_qoft();
    oft_cuda_bench::register_families();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: setup failed: %s\n", e.what());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

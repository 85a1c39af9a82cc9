/// \file bench_cuda_float.cu
/// bench_cuda's float benchmarks: b in {16, 32, 64} with k = 3 (PEFT's t = 5), and k = 4 at b = 32.
#include "bench_cuda_benchmarks.cuh"

namespace oft_cuda_bench {
void register_float() {
  register_type<float>({{16, 3}, {32, 3}, {32, 4}, {64, 3}}, {4096, 16384});
}
}  // namespace oft_cuda_bench

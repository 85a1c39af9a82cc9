/// \file bench_cuda_bf16.cu
/// bench_cuda's bf16 benchmarks: b in {16, 32, 64} with k = 3 (PEFT's t = 5), and k = 4 at b = 32.
#include "bench_cuda_benchmarks.cuh"

namespace oft_cuda_bench {
void register_bf16() {
  register_type<__nv_bfloat16>({{16, 3}, {32, 3}, {32, 4}, {64, 3}}, {4096, 16384});
}
}  // namespace oft_cuda_bench

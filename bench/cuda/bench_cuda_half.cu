/// \file bench_cuda_half.cu
/// bench_cuda's __half benchmarks: b = 32 only, k = 3 (PEFT's t = 5) and k = 4.
#include "bench_cuda_benchmarks.cuh"

namespace oft_cuda_bench {
void register_half() { register_type<__half>({{32, 3}, {32, 4}}, {4096, 16384}); }
}  // namespace oft_cuda_bench

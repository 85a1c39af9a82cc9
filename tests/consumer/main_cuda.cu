// Downstream smoke test of oft::cuda: the installed <oft/cuda.hpp> must compile under nvcc on its
// own (no Eigen), link against CUDA::cudart and CUDA::cublas, and run a rotation when a GPU exists.
#include <oft/cuda.hpp>

#include <cstdio>

int main() {
  const std::string reason = oft::cuda_device_unavailable_reason();
  if (!reason.empty()) {
    std::printf("consumer_cuda: built; no CUDA device (%s), nothing run\n", reason.c_str());
    return 0;
  }
  // Zero theta: R = I, so apply must copy X exactly.
  const oft::BlockSpec spec = oft::BlockSpec::from_features(8, 4);
  oft::BlockOrthogonal<float, oft::CayleyNeumann, oft::cuda> rotation(spec, oft::CayleyNeumann{4});
  float host[16];
  for (int i = 0; i < 16; ++i) host[i] = static_cast<float>(i) - 7.5f;
  oft::DeviceBuffer<float> x(16), y(16);
  cudaMemcpy(x.data(), host, sizeof(host), cudaMemcpyHostToDevice);
  rotation.apply(oft::DeviceMatrixView<const float>(x.data(), 2, 8),
                 oft::DeviceMatrixView<float>(y.data(), 2, 8), nullptr);
  float out[16];
  cudaMemcpy(out, y.data(), sizeof(out), cudaMemcpyDeviceToHost);
  for (int i = 0; i < 16; ++i) {
    if (out[i] != host[i]) {
      std::fprintf(stderr, "consumer_cuda: apply with R = I changed element %d\n", i);
      return 1;
    }
  }
  std::puts("consumer_cuda: ok");
  return 0;
}

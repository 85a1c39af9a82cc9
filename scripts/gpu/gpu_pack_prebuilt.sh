#!/usr/bin/env bash
# Run HERE: builds the CUDA tests and bench_cuda in build-gpu/ (sm_90 unless OFT_CUDA_ARCH; the
# same options as scripts/gpu/gpu_bench.sh) and copies what running them needs (executables, CMake and
# ctest files, no objects) to build-gpu-slim/, for scripts/gpu/gpu_prebuilt.sh on the GPU machine.
set -euo pipefail
cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
ARCH=${OFT_CUDA_ARCH:-90}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B build-gpu "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DOFT_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DOFT_BUILD_TESTS=ON -DOFT_BUILD_BENCH=ON \
  -DOFT_BUILD_EXAMPLES=OFF -DOFT_USE_BLAS=OFF -DOFT_WARNINGS_AS_ERRORS=OFF \
  -DOFT_MARCH="${OFT_MARCH:-x86-64-v3}" >/dev/null
TESTS=$(cmake --build build-gpu --target help | grep -oE '\btest_cuda[A-Za-z0-9_]*' | sort -u | tr '\n' ' ')
# shellcheck disable=SC2086
cmake --build build-gpu -j"$(nproc)" --target bench_cuda $TESTS
rm -rf build-gpu-slim && mkdir build-gpu-slim
(cd build-gpu && find . \( -name CMakeFiles -prune \) -o -type f \( -name 'CTestTestfile.cmake' \
  -o -name '*_include.cmake' -o -name '*_tests.cmake' -o -name CMakeCache.txt \
  -o -name 'test_cuda*' ! -name '*.*' -o -name bench_cuda \) -print |
  tar -cf - -T - | tar -xf - -C ../build-gpu-slim)
echo "gpu_pack_prebuilt.sh: build-gpu-slim is $(du -sh build-gpu-slim | cut -f1)"

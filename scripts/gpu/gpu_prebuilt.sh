#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the repo root, with a CUDA build made HERE carried along:
# it saves the GPU machine's time that building would take (the build here takes ~2.5 min on 2
# cores; nvcc 13.0 on both machines). HERE first:
#
#   scripts/gpu/gpu_bundle.sh && scripts/gpu/gpu_pack_prebuilt.sh     # -> .gpu_deps/, build-gpu-slim/
#
# then one device call with carry [".gpu_deps", "build-gpu-slim"] and the command
#
#   OFT_GPU_PHASES=deps,test,sanitize bash scripts/gpu/gpu_prebuilt.sh
#
# What it does there: puts the carried tree at build-gpu/, makes the absolute source and build
# paths that CMake and ctest wrote HERE valid THERE (a symbolic link from the old repo root to this
# one), finds the shared libraries the binaries need (the carried Google Benchmark; cuBLAS, the CUDA
# runtime and libgomp from the machine), and runs scripts/gpu/gpu_bench.sh without its build step. If a
# library is still missing it falls back to scripts/gpu/gpu_bench.sh's own build in build-gpu-there/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD
say() { echo "[gpu_prebuilt] $*"; }

if [[ -d build-gpu-slim ]]; then
  rm -rf build-gpu && mv build-gpu-slim build-gpu
fi
if [[ ! -f build-gpu/CMakeCache.txt ]]; then
  say "no carried build (build-gpu-slim/): building here"
  exec bash scripts/gpu/gpu_bench.sh
fi

old_root=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' build-gpu/CMakeCache.txt)
if [[ -n $old_root && $old_root != "$ROOT" ]]; then
  if [[ -e $old_root && ! -L $old_root ]]; then
    say "$old_root exists and is no link: ctest would run the binaries there; building here instead"
    OFT_GPU_BUILD_DIR=build-gpu-there exec bash scripts/gpu/gpu_bench.sh
  fi
  mkdir -p "$(dirname "$old_root")" && ln -sfn "$ROOT" "$old_root"
  say "linked $old_root -> $ROOT (ctest and gtest hold absolute paths)"
fi

lib_dirs=("$ROOT/.gpu_deps/prefix/lib/x86_64-linux-gnu")
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libgomp.so.1; do
  grep -q "$lib " <<<"$(ldconfig -p 2>/dev/null)" && continue
  found=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
  [[ -n $found ]] && lib_dirs+=("$(dirname "$found")")
done
export LD_LIBRARY_PATH=$(IFS=:; echo "${lib_dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

bins=$(find build-gpu -type f -perm -u+x \( -name 'test_cuda*' -o -name bench_cuda \) ! -name '*.*')
missing=$(for b in $bins; do ldd "$b" | grep 'not found'; done | sort -u)
if [[ -n $missing || -z $bins ]]; then
  say "carried binaries cannot run here (${missing:-none found}): building here instead"
  OFT_GPU_BUILD_DIR=build-gpu-there exec bash scripts/gpu/gpu_bench.sh
fi
export OFT_GPU_PHASES=${OFT_GPU_PHASES:-deps,test,bench,compare,sanitize}
OFT_GPU_PHASES=${OFT_GPU_PHASES//build/}   # never rebuild the carried tree
export OFT_GPU_BUILD_DIR=build-gpu
exec bash scripts/gpu/gpu_bench.sh

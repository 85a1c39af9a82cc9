#!/usr/bin/env bash
# Run HERE (the Debian 12 development machine), from anywhere in the repo: copies into the
# gitignored folder .gpu_deps/ what the GPU machine needs to configure and build oft's CUDA tests
# and benchmarks, which it cannot download (it has nvcc, CMake, ninja and PyTorch, but no Eigen,
# GoogleTest or Google Benchmark, and no network). scripts/gpu/gpu_bench.sh uses it there; the device
# tool carries it with `carry: [".gpu_deps"]` (64 MiB limit for the whole working tree).
#
#   .gpu_deps/prefix/include/eigen3, share/eigen3/cmake   Eigen 3.4 headers + Eigen3Config.cmake
#                                                         (relocatable: paths are relative to it)
#   .gpu_deps/prefix/include/benchmark, lib/x86_64-linux-gnu/{libbenchmark.so*,
#     libbenchmark_main.a, cmake/benchmark}               Google Benchmark (Debian's build)
#   .gpu_deps/googletest                                  GoogleTest sources (built there, ~15 s)
#   .gpu_deps/MANIFEST.txt                                versions and notes
#
# Debian 12 ships Google Benchmark as a shared library only (no libbenchmark.a): the carried
# libbenchmark.so.1.7.1 needs glibc >= 2.32 and libstdc++ >= GCC 12 (GLIBCXX_3.4.30) on the GPU
# machine; bench_cuda finds it through its build RPATH.
set -euo pipefail
cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"

D=.gpu_deps
ARCH_LIB=lib/x86_64-linux-gnu
EIGEN_INC=/usr/include/eigen3
EIGEN_CMAKE=/usr/share/eigen3/cmake
GTEST_SRC=/usr/src/googletest
BENCH_INC=/usr/include/benchmark
BENCH_LIB=/usr/$ARCH_LIB
BENCH_CMAKE=/usr/$ARCH_LIB/cmake/benchmark

missing=()
[[ -f $EIGEN_INC/Eigen/Core && -f $EIGEN_CMAKE/Eigen3Config.cmake ]] || missing+=(libeigen3-dev)
[[ -f $GTEST_SRC/CMakeLists.txt ]] || missing+=(googletest)
[[ -f $BENCH_INC/benchmark.h && -f $BENCH_CMAKE/benchmarkConfig.cmake ]] || missing+=(libbenchmark-dev)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "gpu_bundle.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

rm -rf "$D"
mkdir -p "$D/prefix/include" "$D/prefix/share/eigen3" "$D/prefix/$ARCH_LIB/cmake"

# Eigen: headers + its own relocatable package files (Eigen3Targets computes the prefix from its
# location: share/eigen3/cmake -> ../../..).
cp -r "$EIGEN_INC" "$D/prefix/include/eigen3"
cp -r "$EIGEN_CMAKE" "$D/prefix/share/eigen3/cmake"

# GoogleTest: sources (gpu_bench.sh builds and installs them on the GPU machine with its compiler).
cp -r "$GTEST_SRC" "$D/googletest"

# Google Benchmark: headers, the shared library (real files, no symlinks), the package files
# (relocatable: lib/x86_64-linux-gnu/cmake/benchmark -> ../../../..).
cp -r "$BENCH_INC" "$D/prefix/include/benchmark"
real_so=$(readlink -f "$BENCH_LIB/libbenchmark.so")
soname=$(objdump -p "$real_so" 2>/dev/null | awk '/SONAME/ {print $2}')
cp "$real_so" "$D/prefix/$ARCH_LIB/$(basename "$real_so")"
[[ -n $soname ]] && cp "$real_so" "$D/prefix/$ARCH_LIB/$soname"
cp "$real_so" "$D/prefix/$ARCH_LIB/libbenchmark.so"
static_note="no static libbenchmark.a in Debian's libbenchmark-dev: carrying the shared library"
if [[ -f $BENCH_LIB/libbenchmark.a ]]; then
  cp "$BENCH_LIB/libbenchmark.a" "$D/prefix/$ARCH_LIB/"
  static_note="static libbenchmark.a carried too"
fi
[[ -f $BENCH_LIB/libbenchmark_main.a ]] && cp "$BENCH_LIB/libbenchmark_main.a" "$D/prefix/$ARCH_LIB/"
cp -r "$BENCH_CMAKE" "$D/prefix/$ARCH_LIB/cmake/benchmark"

pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
{
  echo "oft GPU build dependencies, bundled $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/gpu/gpu_bundle.sh"
  echo "eigen3:     libeigen3-dev $(pkgver libeigen3-dev)  -> prefix/include/eigen3, prefix/share/eigen3/cmake"
  echo "googletest: googletest $(pkgver googletest) sources -> googletest/ (built on the GPU machine)"
  echo "benchmark:  libbenchmark-dev $(pkgver libbenchmark-dev) -> prefix/include/benchmark, prefix/$ARCH_LIB"
  echo "            $static_note ($(basename "$real_so"), soname ${soname:-?})"
  echo "            needs glibc >= $(objdump -T "$real_so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)," \
       "libstdc++ $(objdump -T "$real_so" | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1) on the GPU machine"
  echo "use:        cmake -DEigen3_DIR=\$PWD/$D/prefix/share/eigen3/cmake" \
       "-Dbenchmark_DIR=\$PWD/$D/prefix/$ARCH_LIB/cmake/benchmark (scripts/gpu/gpu_bench.sh does)"
} > "$D/MANIFEST.txt"
cat "$D/MANIFEST.txt"

# .gpu_deps/ must stay out of git (it travels only as a carried path).
if ! git check-ignore -q "$D/MANIFEST.txt"; then
  echo "gpu_bundle.sh: WARNING: $D/ is not gitignored; add '.gpu_deps/' to .gitignore" >&2
fi

size_kib=$(du -sk "$D" | cut -f1)
echo "gpu_bundle.sh: $D is $((size_kib / 1024)) MiB ($size_kib KiB; the device tool carries at most 64 MiB in all)"
tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "gpu_bundle.sh: working tree that travels besides it: $((tree_kib / 1024)) MiB;" \
     "total $(((tree_kib + size_kib) / 1024)) MiB"
if (( tree_kib + size_kib > 60 * 1024 )); then
  echo "gpu_bundle.sh: ERROR: over 60 MiB together, too close to the 64 MiB limit" >&2
  exit 1
fi

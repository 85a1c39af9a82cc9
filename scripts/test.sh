#!/usr/bin/env bash
# Configure, build and run the full oft test suite.
#
#   scripts/test.sh             -> build/      (Release, -Werror, -march=native, tests+examples+bench,
#                                               ctest; with nvcc also the CUDA tests, which skip
#                                               without a GPU)
#   scripts/test.sh --sanitize  -> build-asan/ (ASan+UBSan, -O1 -g1 (-O0 for most programs: see
#                                               cmake/OftDevFlags.cmake) with asserts, no bench, no
#                                               examples, ctest; built with clang++, so that CI
#                                               compiles oft with both GCC and clang;
#                                               OFT_SANITIZE_CXX=g++ picks GCC)
#   scripts/test.sh --march=ISA -> build-ISA/  (Release, -Werror, -march=ISA, tests+examples, no
#                                               bench, CUDA or io; e.g. x86-64-v3 = AVX2,
#                                               x86-64-v4 = AVX-512)
#   --sanitize --march=ISA      -> build-asan-ISA/ (the ASan+UBSan build for that ISA: on an
#                                               AVX-512 CPU, x86-64-v3 runs the AVX2 code paths
#                                               under the sanitizers; .ci/run does this)
#   --build-only                   configure and build, run nothing (an ISA this CPU lacks)
#   --only=T1,T2,...               with --sanitize or --build-only: build only these test
#                                  programs (CMake target names, e.g. test_bf16, quant_test_bnb4)
#                                  and, unless --build-only, run each; .ci/run uses it for the
#                                  AVX-512 kernels (under the sanitizers on an AVX-512 CPU,
#                                  compiled only on an AVX2 one)
#
# The default build then runs the live check against the real PEFT on a real model
# (scripts/peft_check.sh: a Python virtual environment from PyPI, ~5.5 GB once, made by
# scripts/peft_venv.sh in the background while the C++ suite compiles); set
# OFT_SKIP_PEFT_CHECK=1 to skip it (it says so), and then builds the Python package's binary
# wheel once (all instruction-set levels), installs it into a fresh venv with no compiler on PATH,
# runs its pytest suite once per level this CPU runs, and installs the same wheel into that
# environment (scripts/python_check.sh, scripts/wheel_check.sh; skipped with the PEFT check).
# The default build then checks the Conan recipe and the vcpkg port (scripts/conan_check.sh,
# scripts/vcpkg_port_check.sh). The strict-warning compiles (OFT_BUILD_HYGIENE) are part of the
# default build only.
#
# Env: OFT_JOBS (default 2) controls build and ctest parallelism.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SANITIZE=0
MARCH=""
BUILD_ONLY=0
ONLY=""
for arg in "$@"; do
  case "$arg" in
    --sanitize) SANITIZE=1 ;;
    --march=?*) MARCH="${arg#--march=}" ;;
    --build-only) BUILD_ONLY=1 ;;
    --only=?*) ONLY="${arg#--only=}" ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ -n $ONLY && $SANITIZE -eq 0 && $BUILD_ONLY -eq 0 ]]; then
  echo "test.sh: --only is for the sanitizer builds and --build-only" >&2
  exit 2
fi

JOBS="${OFT_JOBS:-2}"
# ctest runs test programs side by side: OpenMP threads that spin while waiting would stall each
# other's barriers (several times slower), so they wait passively unless the user chose.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
unset OPENBLAS_CORETYPE

SETUP_EXTRA=()
if [[ $SANITIZE -eq 1 ]]; then
  # clang compiles the Eigen-heavy tests about a third faster than GCC under ASan (104 s vs 151 s
  # for tests/cpu/test_block_orthogonal.cpp), and the Release build is GCC's: CI sees both compilers.
  SANITIZE_CXX="${OFT_SANITIZE_CXX:-clang++}"
  if [[ "$SANITIZE_CXX" == clang++* ]]; then
    SETUP_EXTRA=(clang libclang-rt-14-dev libomp-14-dev)
  fi
fi
bash "$ROOT/scripts/setup.sh" "${SETUP_EXTRA[@]}"

if [[ $SANITIZE -eq 0 && -n "$MARCH" ]]; then
  BUILD_DIR="build-$MARCH"
  CONFIG_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DOFT_SANITIZE=OFF
    "-DOFT_MARCH=$MARCH"
    # The other instruction set's build checks the CPU code: the benchmarks and the CUDA backend
    # (whose kernels do not depend on -march) are built by the native build.
    -DOFT_BUILD_BENCH=OFF
    -DOFT_ENABLE_CUDA=OFF
    -DOFT_BUILD_HYGIENE=OFF
  )
  # File I/O has no SIMD code either; its tests run in the other two builds. With --only it stays
  # on: some selected kernel tests read their fixtures through it (quant_test_bnb4).
  if [[ -z $ONLY ]]; then
    CONFIG_ARGS+=(-DOFT_USE_IO=OFF)
  fi
elif [[ $SANITIZE -eq 1 ]]; then
  BUILD_DIR=build-asan${MARCH:+-$MARCH}
  # RelWithDebInfo but without -DNDEBUG so eigen_assert/assert stay active. -g1 (line tables
  # only) keeps file:line in sanitizer reports and compiles a third faster than -g (133 s vs
  # 198 s for tests/cpu/test_block_orthogonal.cpp), which is most of this stage's time.
  CONFIG_ARGS=(
    "-DCMAKE_CXX_COMPILER=$SANITIZE_CXX"
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
    -DOFT_SANITIZE=ON
    -DOFT_BUILD_BENCH=OFF
    # ASan and the CUDA runtime do not mix (shadow memory vs. the driver's mappings); the CUDA
    # backend is compile-checked and run by the Release stage.
    -DOFT_ENABLE_CUDA=OFF
    -DOFT_BUILD_HYGIENE=OFF
    "-DOFT_MARCH=${MARCH:-native}"
  )
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
else
  BUILD_DIR=build
  CONFIG_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DOFT_SANITIZE=OFF
    -DOFT_BUILD_BENCH=ON
  )
fi

# The PEFT check's Python environment downloads ~5.5 GB from PyPI: start it now, in the
# background, so that the download overlaps the compile; the checks below wait for it.
VENV_PID=""
if [[ $SANITIZE -eq 0 && -z "$MARCH" && $BUILD_ONLY -eq 0 && "${OFT_SKIP_PEFT_CHECK:-0}" != "1" ]]; then
  mkdir -p "$BUILD_DIR"
  VENV_LOG="$BUILD_DIR/peft-venv.log"
  bash "$ROOT/scripts/peft_venv.sh" "${OFT_PEFT_VENV:-$ROOT/$BUILD_DIR/peft-venv}" > "$VENV_LOG" 2>&1 &
  VENV_PID=$!
  # On an early exit (a failed build or test) stop the download: pip, then its script.
  stop_venv() {
    [[ -n $VENV_PID ]] || return 0
    pkill -P "$VENV_PID" 2>/dev/null || true
    kill "$VENV_PID" 2>/dev/null || true
  }
  trap stop_venv EXIT
  echo "== oft: Python environment for the PEFT check started in the background (log: $VENV_LOG)"
fi

# --only: the one target that builds just those programs, in parallel (tests/CMakeLists.txt).
only_targets=()
if [[ -n $ONLY ]]; then
  IFS=, read -r -a only_targets <<< "$ONLY"
fi
only_list="$(IFS=';'; echo "${only_targets[*]}")"

# The examples run in the Release build only: they call the public API whose code paths the test
# programs run under the sanitizers, and would add six ASan compiles (~2.5 min here).
EXAMPLES=ON
if [[ $SANITIZE -eq 1 ]]; then
  EXAMPLES=OFF
fi

echo "== oft: configure $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" \
  -DOFT_WARNINGS_AS_ERRORS=ON \
  -DOFT_BUILD_TESTS=ON \
  "-DOFT_BUILD_EXAMPLES=$EXAMPLES" \
  "-DOFT_SELECTED_TESTS=$only_list" \
  "${CONFIG_ARGS[@]}"

if [[ -n $ONLY ]]; then
  echo "== oft: build ${only_targets[*]} in $BUILD_DIR (-j$JOBS)"
  cmake --build "$BUILD_DIR" -j "$JOBS" --target oft_selected_tests
  if [[ $BUILD_ONLY -eq 1 ]]; then
    exit 0
  fi
  for target in "${only_targets[@]}"; do
    program="$(find "$BUILD_DIR/tests" -type f -name "$target" -perm -u+x | head -n 1)"
    if [[ -z $program ]]; then
      echo "test.sh: no test program $target in $BUILD_DIR/tests" >&2
      exit 1
    fi
    echo "== oft: $program"
    "$program" --gtest_brief=1
  done
  echo "== oft: ${#only_targets[@]} test programs passed in $BUILD_DIR"
  exit 0
fi

echo "== oft: build $BUILD_DIR (-j$JOBS)"
cmake --build "$BUILD_DIR" -j "$JOBS"

if [[ $BUILD_ONLY -eq 1 ]]; then
  echo "== oft: $BUILD_DIR built (--build-only: tests not run)"
  exit 0
fi

echo "== oft: ctest $BUILD_DIR (-j$JOBS)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"

if [[ $SANITIZE -eq 0 && -z "$MARCH" ]]; then
  if [[ "${OFT_SKIP_PEFT_CHECK:-0}" == "1" ]]; then
    echo "== oft: SKIPPED the live check against the real PEFT (OFT_SKIP_PEFT_CHECK=1)"
  else
    if [[ -n $VENV_PID ]]; then
      venv_status=0
      wait "$VENV_PID" || venv_status=$?
      VENV_PID=""
      cat "$VENV_LOG"
      if [[ $venv_status -ne 0 ]]; then
        echo "test.sh: creating the Python environment failed (exit $venv_status)" >&2
        exit 1
      fi
    fi
    bash "$ROOT/scripts/peft_check.sh" "$BUILD_DIR"
    bash "$ROOT/scripts/python_check.sh" "$BUILD_DIR"
  fi
  # The C++ package managers: conan create of conan/ offline against this source (about 20 s),
  # and ports/oft checked as far as possible without vcpkg (about 5 s).
  bash "$ROOT/scripts/conan_check.sh"
  bash "$ROOT/scripts/vcpkg_port_check.sh"
fi

#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the repo root, after scripts/gpu/gpu_bundle.sh ran HERE and
# .gpu_deps/ was carried. One command, about 9 minutes at most (OFT_GPU_BUDGET_S, default 540):
#
#   deps      environment report (GPU, driver, toolchain, torch, peft) into build.log
#   build     GoogleTest from the carried sources into /tmp/oft-gtest (unless there), configure
#             (Ninja if present, CUDA arch from nvidia-smi, carried Eigen and Google Benchmark),
#             build bench_cuda and every test_cuda* target
#   test      ctest -L cuda (or the test_cuda* binaries directly when no test has that label)
#   bench     bench_cuda, 5 repetitions, JSON into $OUT/bench_cuda.json
#   compare   bench/compare_peft.py --out $OUT/compare_peft.json (runs bench_cuda itself)
#   sanitize  compute-sanitizer memcheck, then racecheck, on each test_cuda* binary, with what is
#             left of the budget (gtest filters OFT_SANITIZER_FILTER for memcheck and
#             OFT_RACECHECK_FILTER for racecheck; defaults and reasons below)
#
# Each step has a time limit and the later steps get what is left, so the results that matter
# most (tests, timings) come back first. Files in $OUT (the device tool returns at most 8):
# build.log tests.log bench_cuda.json bench_cuda.log compare_peft.json compare_peft.log
# sanitizer.log summary.txt. The summary is printed last.
#
# Environment: OUT (set by the device tool; default /tmp/oft-gpu-out), OFT_GPU_PHASES (comma list of
# the steps above, default all), OFT_GPU_BUILD_DIR (build-gpu), OFT_CUDA_ARCH (from nvidia-smi,
# else 90), OFT_GPU_BUDGET_S (540), OFT_BENCH_REPS (5), OFT_BENCH_MIN_TIME (0.1),
# OFT_SANITIZER_FILTER, OFT_RACECHECK_FILTER, OFT_SANITIZE_BINS (an extended regex: only the
# test_cuda* binaries whose name matches get the sanitizers; default all), OFT_BENCH_FILTER
# (bench_cuda's --benchmark_filter; default all), OFT_GPU_BUILD_CAP_S (300), PYTHON (python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD
OUT=${OUT:-/tmp/oft-gpu-out}
mkdir -p "$OUT"
PHASES=",${OFT_GPU_PHASES:-deps,build,test,bench,compare,sanitize},"
BUILD=${OFT_GPU_BUILD_DIR:-build-gpu}
BUDGET=${OFT_GPU_BUDGET_S:-540}
PY=${PYTHON:-python3}
JOBS=$(nproc 2>/dev/null || echo 8)
DEPS=$ROOT/.gpu_deps
GTEST_PREFIX=/tmp/oft-gtest
BENCH_BIN=$BUILD/bench/cuda/bench_cuda
LOG_BUILD=$OUT/build.log LOG_TEST=$OUT/tests.log LOG_SAN=$OUT/sanitizer.log
LOG_BENCH=$OUT/bench_cuda.log LOG_CMP=$OUT/compare_peft.log SUMMARY=$OUT/summary.txt
export PYTHONUNBUFFERED=1

T0=$SECONDS
STATUS=()
left() { echo $((BUDGET - (SECONDS - T0))); }
say() { echo "[gpu_bench +$((SECONDS - T0))s] $*"; }
want() { [[ $PHASES == *",$1,"* ]]; }
record() { STATUS+=("$1"); say "$1"; }

# run_step NAME CAP LOG CMD...: runs CMD with output appended to LOG, limited to min(CAP, what is
# left of the budget - 5 s); records ok / FAILED / TIMED OUT / SKIPPED.
run_step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local limit=$(($(left) - 5))
  ((limit > cap)) && limit=$cap
  if ((limit < 10)); then
    record "$name: SKIPPED (budget of ${BUDGET}s spent)"
    return 99
  fi
  echo "=== $name (limit ${limit}s): $*" >>"$log"
  say "$name (limit ${limit}s)"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local took=$((SECONDS - start))
  case $rc in
    0) record "$name: ok (${took}s)" ;;
    124 | 137) record "$name: TIMED OUT after ${took}s (limit ${limit}s), see $(basename "$log")" ;;
    *) record "$name: FAILED rc=$rc (${took}s), see $(basename "$log")" ;;
  esac
  return $rc
}

cuda_tests() {  # the built test_cuda* executables
  find "$BUILD" -type f -perm -u+x -name 'test_cuda*' ! -name '*.*' 2>/dev/null | sort
}
sanitized_tests() {  # those of them that OFT_SANITIZE_BINS selects
  cuda_tests | grep -E "/(${OFT_SANITIZE_BINS:-test_cuda.*})\$"
}

# ---------------------------------------------------------------------------------------------
if [[ ! -f $DEPS/MANIFEST.txt ]]; then
  say "ERROR: $DEPS missing: run scripts/gpu/gpu_bundle.sh on the development machine and carry .gpu_deps"
  exit 2
fi

if want deps; then
  {
    echo "=== environment"
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,compute_cap \
      --format=csv 2>&1 || echo "nvidia-smi failed"
    nvcc --version 2>&1 | tail -2 || /usr/local/cuda/bin/nvcc --version 2>&1 | tail -2
    cmake --version | head -1
    (ninja --version 2>/dev/null | sed 's/^/ninja /') || echo "no ninja"
    c++ --version 2>&1 | head -1
    grep -m1 PRETTY_NAME /etc/os-release 2>/dev/null
    echo "nproc $JOBS"
    $PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>&1
    $PY -c 'import peft; print("peft", peft.__version__)' 2>&1
    (command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer) 2>&1
    cat "$DEPS/MANIFEST.txt"
  } >>"$LOG_BUILD" 2>&1
fi

if want build; then
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  if [[ ! -d $GTEST_PREFIX ]]; then
    run_step "googletest (build + install to $GTEST_PREFIX)" 120 "$LOG_BUILD" bash -c "
      cmake -S '$DEPS/googletest' -B /tmp/oft-gtest-build ${GEN[*]} -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX=$GTEST_PREFIX -DBUILD_GMOCK=ON -DINSTALL_GTEST=ON &&
      cmake --build /tmp/oft-gtest-build -j$JOBS && cmake --install /tmp/oft-gtest-build"
  fi
  ARCH=${OFT_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
    head -1 | tr -d ' .')}
  [[ $ARCH =~ ^[0-9]+$ ]] || ARCH=90
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  run_step "configure (sm_$ARCH)" 120 "$LOG_BUILD" cmake -S . -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DOFT_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DOFT_BUILD_TESTS=ON -DOFT_BUILD_BENCH=ON \
    -DOFT_BUILD_EXAMPLES=OFF -DOFT_USE_BLAS=OFF -DOFT_WARNINGS_AS_ERRORS=OFF \
    -DEigen3_DIR="$DEPS/prefix/share/eigen3/cmake" \
    -Dbenchmark_DIR="$DEPS/prefix/lib/x86_64-linux-gnu/cmake/benchmark" \
    -DCMAKE_PREFIX_PATH="$GTEST_PREFIX"
  TESTS=$(cmake --build "$BUILD" --target help 2>/dev/null | grep -oE '\btest_cuda[A-Za-z0-9_]*' |
    sort -u | tr '\n' ' ')
  echo "CUDA test targets: ${TESTS:-(none)}" >>"$LOG_BUILD"
  # shellcheck disable=SC2086
  run_step "build bench_cuda ${TESTS:-(no test_cuda* targets)}" "${OFT_GPU_BUILD_CAP_S:-300}" "$LOG_BUILD" \
    cmake --build "$BUILD" -j"$JOBS" --target bench_cuda $TESTS
fi

if want test; then
  if grep -q 'Total Tests: [1-9]' <<<"$(ctest --test-dir "$BUILD" -N -L cuda 2>/dev/null)"; then
    run_step "ctest -L cuda" 150 "$LOG_TEST" ctest --test-dir "$BUILD" -L cuda \
      --output-on-failure --timeout 120 -j 4
  else
    echo "no ctest test labelled 'cuda': running the test_cuda* binaries directly" >>"$LOG_TEST"
    for bin in $(cuda_tests); do
      run_step "$(basename "$bin")" 150 "$LOG_TEST" "$bin" --gtest_brief=1
    done
    [[ -n $(cuda_tests) ]] || record "tests: no test_cuda* binary was built"
  fi
fi

if want bench; then
  if [[ -x $BENCH_BIN ]]; then
    run_step "bench_cuda" 170 "$LOG_BENCH" "$BENCH_BIN" \
      --benchmark_repetitions="${OFT_BENCH_REPS:-5}" --benchmark_report_aggregates_only=true \
      --benchmark_min_time="${OFT_BENCH_MIN_TIME:-0.1}" --benchmark_filter="${OFT_BENCH_FILTER:-.}" \
      --benchmark_out="$OUT/bench_cuda.json" --benchmark_out_format=json
    grep -q 'no CUDA device' "$LOG_BENCH" && record "bench_cuda: found NO CUDA DEVICE"
  else
    record "bench_cuda: NOT BUILT ($BENCH_BIN missing)"
  fi
fi

if want compare; then
  run_step "compare_peft.py" 200 "$LOG_CMP" "$PY" bench/compare_peft.py --binary "$BENCH_BIN" \
    --out "$OUT/compare_peft.json" --bench-repetitions 3
fi

# memcheck: every test but the > 65,535-tile ones (1.5 GB passes would use up the sanitizer's time)
# and the one that provokes a failed cudaMalloc on purpose (memcheck counts the API error).
MEMCHECK_FILTER=${OFT_SANITIZER_FILTER:--CudaTokenGrid.MoreRowTiles*:CudaErrors.FailedCudaCallThrowsCudaError}
# racecheck slows shared-memory kernels ~50x (RotationBlocksMatchCpu: 1.8 s -> 89 s on an H200):
# it gets a subset that still runs every kernel family once (apply and backward on CUDA cores and
# tensor cores, the generator kernels with both branches, the layer, unmerge's inversion).
# Measured on an H200: CudaStreams.* 63 s, ManyTilesPerThreadBlock* 90 s, the test_cuda_linear part
# 39 s; the double FD checks took > 90 s and are left out (same kernels as float, in double).
# The families' shared-memory kernels (the Givens rows kernel, Householder's one-block set-up
# kernel) by their small device-versus-host tests; the backward kernels are not in it yet, and
# none of them has been timed under racecheck.
RACECHECK_FILTER=${OFT_RACECHECK_FILTER:-CudaQoftLinear.BackwardMatchesCpuOverTheDequantizedWeight:CudaQuant.FusedProducts*:CudaStreams.*:CudaTokenGrid.ManyTilesPerThreadBlock*:CudaActiveBlocks.DeviceMaskOverload:CudaUnmerge.*:CudaOftLinear.BackwardMatchesCpuFloat:CudaOftLinearHalf.BackwardMatchesCpuBfloat16:CudaGivens.DeviceAnglesMatchHostAngles:CudaHouseholder.DeviceVectorsMatchHostVectors}
if want sanitize; then
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  BINS=$(sanitized_tests)
  if [[ ! -x $SAN ]]; then
    record "sanitizers: compute-sanitizer not found"
  elif [[ -z $BINS ]]; then
    record "sanitizers: no test_cuda* binary"
  else
    runs=$((2 * $(echo "$BINS" | wc -l)))
    for tool in memcheck racecheck; do
      if [[ $tool == memcheck ]]; then filter=$MEMCHECK_FILTER; else filter=$RACECHECK_FILTER; fi
      for bin in $BINS; do
        # Split what is left of the budget evenly between the runs still to come.
        share=$((($(left) - 5) / runs))
        runs=$((runs - 1))
        ((share < 20)) && share=20
        run_step "$tool $(basename "$bin")" "$share" "$LOG_SAN" "$SAN" --tool "$tool" \
          --error-exitcode 97 "$bin" --gtest_filter="$filter" --gtest_brief=1
      done
    done
  fi
fi

# ---------------------------------------------------------------------------------------------
{
  echo "=== oft GPU run: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "phases:${PHASES//,/ } budget ${BUDGET}s, used $((SECONDS - T0))s"
  printf '  %s\n' "${STATUS[@]}"
  if [[ -f $LOG_TEST ]]; then
    echo "--- tests"
    grep -E 'tests passed|tests failed|Total Test time|\((Failed|Timeout|Exception|SEGFAULT)\)|\[  (PASSED|FAILED)  ?\]' \
      "$LOG_TEST" | tail -25
    grep -c '(Skipped)' "$LOG_TEST" | sed 's/^/skipped tests: /'
  fi
  if [[ -f $LOG_SAN ]]; then
    echo "--- compute-sanitizer"
    grep -E '^=== |ERROR SUMMARY|RACECHECK SUMMARY' "$LOG_SAN" | tail -30
  fi
  if [[ -f $LOG_BENCH ]]; then
    echo "--- bench_cuda"
    grep -E 'CHECK FAILED|ERROR OCCURRED|error|no CUDA device' "$LOG_BENCH" | head -10
    grep -cE '_median' "$LOG_BENCH" | sed 's/^/median rows: /'
  fi
  if [[ -f $LOG_CMP ]]; then
    echo "--- compare_peft.py"
    if grep -q '^Layer step' "$LOG_CMP"; then
      sed -n '/^Layer step/,$p' "$LOG_CMP"
      grep -E 'PEFT failed|oft side failed|WARNING|Traceback|Error' "$LOG_CMP" | head -10
    else
      tail -15 "$LOG_CMP"
    fi
  fi
} >"$SUMMARY" 2>&1
cat "$SUMMARY"

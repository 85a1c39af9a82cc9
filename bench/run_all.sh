#!/usr/bin/env bash
# One command for every oft benchmark figure:
#
#   bench/run_all.sh            build (Release, -O3 -march=native), run every benchmark with
#                               5 repetitions (medians), compare with PyTorch, run the accuracy
#                               sweep, print the summary. JSON/CSV in bench/results/latest/
#                               (gitignored; the kept baselines are bench/results/<machine>/),
#                               the plot in docs/accuracy_vs_speed.png, the summary in
#                               bench/results/latest/summary.txt. Against a baseline:
#                               python3 bench/compare.py bench/results/zen4 bench/results/latest
#   bench/run_all.sh --smoke    the same with short timings (proves the pipeline; numbers noisy),
#                               everything under bench/results/smoke/
#   options: --no-build, --only "bench_rotation bench_layer ..." (subset of the C++ benchmarks),
#            --skip-torch, --skip-sweep
#   environment: OFT_BENCH_THREADS (default: nproc), OFT_BENCH_BUILD_DIR (default: build-bench)
#
# The figures need a quiet machine: other processes on the same cores stall OpenMP barriers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0 BUILD=1 TORCH=1 SWEEP=1 ONLY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --no-build) BUILD=0 ;;
    --skip-torch) TORCH=0 ;;
    --skip-sweep) SWEEP=0 ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# OPENBLAS_CORETYPE=Haswell is preset in this environment and halves OpenBLAS on this CPU.
if [[ -n "${OPENBLAS_CORETYPE+x}" ]]; then
  echo "[run_all] unsetting OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE} (it slows OpenBLAS here)"
  unset OPENBLAS_CORETYPE
else
  echo "[run_all] OPENBLAS_CORETYPE is unset (OpenBLAS picks its kernels itself)"
fi
THREADS="${OFT_BENCH_THREADS:-$(nproc)}"
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" OFT_BENCH_THREADS="$THREADS"
PY=/usr/bin/python3
BUILD_DIR="${OFT_BENCH_BUILD_DIR:-build-bench}"

if [[ $SMOKE == 1 ]]; then
  OUT=bench/results/smoke
  REPS=2 MIN_TIME=0.05 PYFLAG=--smoke
  echo "[run_all] SMOKE settings: repetitions=$REPS, min_time=${MIN_TIME}s; numbers are noisy"
else
  OUT=bench/results/latest
  REPS=5 MIN_TIME=0.5 PYFLAG=
fi
mkdir -p "$OUT"
read -r LOAD1 _ < /proc/loadavg 2>/dev/null || LOAD1=0
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "[run_all] WARNING: load average $LOAD1 > 0.5: other work shares these cores, and a" \
       "descheduled OpenMP thread stalls every barrier; the 2-thread figures will be noisy"
fi
echo "[run_all] threads=$THREADS (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, torch), results in $OUT"

if [[ $BUILD == 1 ]]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DOFT_BUILD_BENCH=ON \
    -DOFT_BUILD_TESTS=OFF -DOFT_BUILD_EXAMPLES=OFF -DOFT_MARCH=native >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)"
fi

BENCHES="${ONLY:-bench_roofline bench_rotation bench_expressions bench_layer bench_layer_eigen}"
for name in $BENCHES; do
  exe="$BUILD_DIR/bench/$name"
  [[ -x "$exe" ]] || { echo "[run_all] missing $exe (build first)" >&2; exit 1; }
  echo "[run_all] $name"
  "$exe" --benchmark_repetitions="$REPS" --benchmark_report_aggregates_only=true \
    --benchmark_min_time="$MIN_TIME" \
    --benchmark_out="$OUT/$name.json" --benchmark_out_format=json
done

if [[ $TORCH == 1 ]]; then
  echo "[run_all] compare_torch.py"
  $PY bench/compare_torch.py $PYFLAG --threads "$THREADS" \
    --binary "$BUILD_DIR/bench/bench_rotation"
fi
if [[ $SWEEP == 1 ]]; then
  echo "[run_all] sweep.py"
  $PY bench/sweep.py $PYFLAG --threads "$THREADS" --binary "$BUILD_DIR/bench/bench_sweep"
fi

echo
$PY bench/summarize.py --dir "$OUT" $PYFLAG | tee "$OUT/summary.txt"
